package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The swarm's sessions: accepted or dialled, one per pair of nodes.

// errDuplicate ends a session that another session with the same peer
// node replaces (see keepFirst); errSelf one whose peer is this node.
var (
	errDuplicate = errors.New("another session with the same peer node is kept")
	errSelf      = errors.New("the peer is this node")
	errTooMany   = errors.New("too many peers")
	errEvicted   = fmt.Errorf("ended to let a newer connection in: the swarm was full, and this handshake had run %v", handshakeGrace)
)

// handshakeGrace is how long a handshake runs before the swarm may end it
// for a newer connection, when it holds MaxPeers sessions or every
// handshake turn is taken: an honest peer's handshake takes a few round
// trips, a connection that never completes one (a stranger's, without the
// shared key) would otherwise keep honest peers out until it timed out.
const handshakeGrace = 2 * time.Second

// swarmSession is one session of the swarm, dialled or accepted.
type swarmSession struct {
	sw      *Swarm
	addr    string  // the address dialled, or the peer's remote address
	inbound bool    // accepted, not dialled
	t       *target // the target dialled, nil for an accepted session
	s       *session
	cancel  context.CancelFunc
	done    chan struct{} // closed when the session ended

	mu       sync.Mutex
	state    PeerState // PeerHandshaking, then PeerSyncing (Peers refines it)
	since    time.Time
	running  time.Time // when the hellos went through; zero before
	node     nodeID
	progress ReplicateProgress
	wasLive  bool  // reached the live phase: the first exchange was over
	err      error // why it ended
	ended    time.Time
	reported bool      // OnPeer was told it started, and will be told it ended
	held     bool      // it holds a handshake token now (see tokenConn)
	tokenAt  time.Time // when it took its handshake token; zero while it holds none

	evicted bool // ended for a newer connection (see handshakeGrace); under sw.mu

	// released: its handshake is over, and it takes no token again. Set
	// under mu, with held; read without it by every read of tokenConn.
	released atomic.Bool
}

// acceptLoop accepts peers until the swarm closes. A connection past
// MaxPeers is closed at once, unless a session still handshakes after
// handshakeGrace: that one ends instead (see admit). The others wait for a
// handshake token.
func (sw *Swarm) acceptLoop() {
	for delay := time.Duration(0); ; {
		conn, err := sw.ln.Accept()
		if err != nil {
			if sw.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or the like: pause and retry,
			// as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-sw.ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		if sw.opts.acceptedBeforeHandshake != nil {
			sw.opts.acceptedBeforeHandshake(conn)
		}
		ss := &swarmSession{sw: sw, addr: conn.RemoteAddr().String(), inbound: true}
		if !sw.admit(ss) {
			conn.Close()
			continue
		}
		sw.wg.Add(1)
		go func() {
			defer sw.wg.Done()
			ss.run(conn)
		}()
	}
}

// admit counts ss among the swarm's sessions, unless the swarm is closed
// or holds MaxPeers sessions already, all of them running or handshaking
// for less than handshakeGrace: past MaxPeers, the session that has
// handshaked longest (past the grace) is ended to make room.
func (sw *Swarm) admit(ss *swarmSession) bool {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return false
	}
	var victim *swarmSession
	if sw.activeLocked() >= sw.opts.MaxPeers {
		if victim = sw.staleHandshakeLocked(false); victim == nil {
			sw.mu.Unlock()
			return false
		}
	}
	ss.done = make(chan struct{})
	ss.state, ss.since = PeerHandshaking, time.Now()
	sw.sessions[ss] = true
	sw.mu.Unlock()
	if victim != nil {
		victim.stop(errEvicted)
	}
	return true
}

// activeLocked counts the sessions not ended for a newer connection.
func (sw *Swarm) activeLocked() int {
	n := 0
	for ss := range sw.sessions {
		if !ss.evicted {
			n++
		}
	}
	return n
}

// staleHandshakeLocked picks the session that has handshaked longest,
// past handshakeGrace, among those holding a handshake token (holding),
// or all, and marks it evicted; nil if there is none. The caller stops it.
func (sw *Swarm) staleHandshakeLocked(holding bool) *swarmSession {
	var oldest *swarmSession
	var oldestAt time.Time
	now := time.Now()
	for ss := range sw.sessions {
		if ss.evicted {
			continue
		}
		ss.mu.Lock()
		at, state := ss.since, ss.state
		if holding {
			at = ss.tokenAt
		}
		ss.mu.Unlock()
		if state != PeerHandshaking || at.IsZero() || now.Sub(at) < handshakeGrace {
			continue
		}
		if oldest == nil || at.Before(oldestAt) {
			oldest, oldestAt = ss, at
		}
	}
	if oldest != nil {
		oldest.evicted = true
	}
	return oldest
}

// takeToken waits for a handshake token for ss. While every token is
// taken, the holder that has handshaked longest past handshakeGrace is
// ended, at once and then every half of it, to free one. It reports
// false if ctx ended first.
func (ss *swarmSession) takeToken(ctx context.Context) bool {
	sw := ss.sw
	tick := time.NewTicker(handshakeGrace / 2)
	defer tick.Stop()
	for {
		if len(sw.hs) == cap(sw.hs) {
			sw.mu.Lock()
			victim := sw.staleHandshakeLocked(true)
			sw.mu.Unlock()
			if victim != nil {
				victim.stop(errEvicted)
			}
		}
		select {
		case sw.hs <- struct{}{}:
			ss.mu.Lock()
			if ss.released.Load() { // (ended meanwhile: see release)
				ss.mu.Unlock()
				<-sw.hs
				return true
			}
			ss.held, ss.tokenAt = true, time.Now()
			ss.mu.Unlock()
			return true
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// run runs the admitted session ss over conn until it ends: it waits for
// a handshake token, then replicates.
func (ss *swarmSession) run(conn net.Conn) error {
	sw := ss.sw
	defer close(ss.done)
	ctx, cancel := context.WithCancel(sw.ctx)
	defer cancel()
	ss.mu.Lock()
	ss.cancel = cancel
	ss.mu.Unlock()
	var err error
	if ss.takeToken(ctx) {
		opts := sw.rep
		user := opts.Progress
		opts.Progress = func(p ReplicateProgress) {
			ss.mu.Lock()
			ss.progress = p
			ss.wasLive = ss.wasLive || p.Phase == "live"
			ss.mu.Unlock()
			if user != nil {
				user(p)
			}
		}
		hooks := &sessionHooks{hello: ss.hello, changed: sw.notify}
		err = sw.core.replicateWith(ctx, &tokenConn{Conn: conn, ss: ss, ctx: ctx}, !ss.inbound, &opts, hooks, func(s *session) { ss.s = s })
		ss.release()
	} else {
		conn.Close()
		err = ctx.Err()
	}
	sw.ended(ss, err)
	return err
}

// release gives back ss's handshake token if it holds one, and ends its
// handshake's use of tokens: it takes none again.
func (ss *swarmSession) release() {
	ss.mu.Lock()
	held := ss.held
	ss.released.Store(true)
	ss.held, ss.tokenAt = false, time.Time{}
	ss.mu.Unlock()
	if held {
		<-ss.sw.hs
	}
}

// putToken gives back ss's handshake token, if it holds one, while its
// handshake waits for the peer.
func (ss *swarmSession) putToken() {
	ss.mu.Lock()
	held := ss.held
	ss.held, ss.tokenAt = false, time.Time{}
	ss.mu.Unlock()
	if held {
		<-ss.sw.hs
	}
}

// handshaking reports whether ss's handshake still takes tokens.
func (ss *swarmSession) handshaking() bool { return !ss.released.Load() }

// tokenConn is a swarm session's connection. Until the hellos went
// through, a read gives the session's handshake token back while it waits
// for the peer's bytes, and takes one again once they came: a token is held
// only while this side works on the handshake (TLS's keys and signature,
// the hellos' macs), never while the peer is silent. So connections that
// send nothing, or stall inside their handshake, hold no token and keep no
// honest peer's handshake waiting; MaxPeers and the grace of admit bound
// how many of them stay.
type tokenConn struct {
	net.Conn
	ss  *swarmSession
	ctx context.Context
}

func (c *tokenConn) Read(p []byte) (int, error) {
	if !c.ss.handshaking() {
		return c.Conn.Read(p)
	}
	c.ss.putToken()
	n, err := c.Conn.Read(p)
	if err == nil && c.ss.handshaking() {
		c.ss.takeToken(c.ctx) // (false: the session ends; the next read fails)
	}
	return n, err
}

// hello runs when both hellos of ss's session went through: the handshake
// token is given back, and the session is kept unless the peer is this
// node, or another session with the peer's node is kept instead (see
// keepFirst). A peer that sent no node id cannot be matched: its session
// is kept.
func (ss *swarmSession) hello(s *session) error {
	ss.release()
	sw := ss.sw
	node := s.peerNode
	if node == sw.core.node {
		if ss.t != nil {
			sw.mu.Lock()
			sw.self[ss.t.addr] = true
			sw.mu.Unlock()
		}
		return errSelf
	}
	sw.mu.Lock()
	ss.mu.Lock()
	ss.node, ss.state, ss.since, ss.running = node, PeerSyncing, time.Now(), time.Now()
	ss.mu.Unlock()
	if ss.t != nil && !node.isZero() {
		ss.t.node = node
	}
	var drop *swarmSession
	if !node.isZero() {
		if other := sw.byNode[node]; other != nil && other != ss {
			if keepFirst(other, ss, sw.core.node) {
				sw.mu.Unlock()
				return errDuplicate
			}
			drop = other
		}
		sw.byNode[node] = ss
	}
	sw.mu.Unlock()
	sw.notify()
	ss.mu.Lock()
	ss.reported = true
	ss.mu.Unlock()
	sw.event(ss, PeerSyncing, nil)
	if drop != nil {
		// The peer stays connected, through ss: OnPeer hears that the
		// session replaced ended, with errDuplicate.
		drop.stop(errDuplicate)
	}
	return nil
}

// event tells SwarmOptions.OnPeer that ss's session started or ended.
func (sw *Swarm) event(ss *swarmSession, state PeerState, err error) {
	if sw.opts.OnPeer == nil {
		return
	}
	p := PeerStatus{Addr: ss.addr, Source: "inbound", Inbound: ss.inbound, State: state, Since: time.Now(), Err: err}
	if ss.t != nil {
		p.Source = "lan"
		sw.mu.Lock()
		if ss.t.static {
			p.Source = "static"
		}
		sw.mu.Unlock()
	}
	ss.mu.Lock()
	pr, node := ss.progress, ss.node
	ss.mu.Unlock()
	if !node.isZero() {
		p.Node = node.String()
	}
	p.takeCounts(pr)
	sw.opts.OnPeer(p)
}

// keepFirst decides which of two sessions between this node (self) and
// the same peer node survives, the same way on both sides: the one whose
// initiator has the smaller node id; if both were dialled by the same
// side, the one whose TLS exporter value is smaller. It reports whether
// a survives.
func keepFirst(a, b *swarmSession, self nodeID) bool {
	initiator := func(ss *swarmSession) nodeID {
		if ss.inbound {
			return ss.node
		}
		return self
	}
	ia, ib := initiator(a), initiator(b)
	if c := bytes.Compare(ia[:], ib[:]); c != 0 {
		return c < 0
	}
	return bytes.Compare(a.s.ekm[:], b.s.ekm[:]) <= 0
}

// stop ends ss's session (saying goodbye) with why as its reason.
func (ss *swarmSession) stop(why error) {
	ss.mu.Lock()
	if ss.err == nil {
		ss.err = why
	}
	cancel := ss.cancel
	ss.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// ended records that ss's session ended with err.
func (sw *Swarm) ended(ss *swarmSession, err error) {
	ss.mu.Lock()
	if ss.err == nil { // (stop may have said why first)
		ss.err = err
	}
	ss.ended = time.Now()
	node, reported := ss.node, ss.reported
	why := ss.err
	ss.mu.Unlock()
	// Every session OnPeer heard start, it hears end, once, before the
	// session leaves the swarm's lists: one replaced by a newer session
	// with the same peer node too (Err errDuplicate; the peer stays
	// connected through the newer one). A session that ended before its
	// hellos went through, or lost to another at its hello, is no news.
	if reported {
		state := PeerBackingOff
		if refused(why) {
			state = PeerFailed
		}
		sw.event(ss, state, sessionErr(why))
	}
	sw.mu.Lock()
	delete(sw.sessions, ss)
	if !node.isZero() && sw.byNode[node] == ss {
		delete(sw.byNode, node)
	}
	sw.mu.Unlock()
	if sw.opts.onSessionEnd != nil {
		sw.opts.onSessionEnd(ss.addr, why)
	}
	sw.notify()
}

// sessionErr is the error a session ended with, as the swarm says it.
func sessionErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errDuplicate):
		return fmt.Errorf("replaced: %w", errDuplicate)
	}
	return err
}
