package kappa

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// The swarm: a database as a node that keeps itself connected and synced
// with every peer it knows or finds. This file: the options, starting and
// closing. By concern:
//
//	swarm_dial.go     dialling a peer's address, again with backoff
//	swarm_session.go  running sessions, one per pair of nodes
//	swarm_status.go   Peers and Synced
//	swarm_lan.go      LAN discovery: beacons, over swarm_lan_udp.go (UDP multicast)

// SwarmOptions configure a swarm. Nil options mean: do not listen, no
// static peers, LAN discovery on.
type SwarmOptions struct {
	// Listen is the TCP address to accept peers on, host:port (":7654":
	// every interface; port 0 picks a free one, see Swarm.Addr). Empty:
	// the swarm does not listen, and only dials.
	Listen string

	// Peers are addresses (host:port) to dial; each is dialled again,
	// with backoff, whenever its session ends. AddPeer adds more.
	Peers []string

	// LAN finds peers of this database on the local network, and makes
	// this node found when it listens: UDP multicast beacons that only a
	// member can read (doc/PROTOCOL.md, "Discovery").
	LAN bool

	// Replicate configures every session: Accept, Progress, KeepAlive,
	// Timeout and MaxNewFeeds pass through; sessions are always live.
	Replicate *ReplicateOptions

	// MaxPeers bounds the sessions, dialled and accepted, handshaking or
	// running (zero or less: the default, 64). A connection past it is closed at once, unless
	// a session has been handshaking for 2 s or more: the oldest of those
	// is ended to let the new one in (see doc/PROTOCOL.md, §4, Time-outs).
	MaxPeers int

	// MaxHandshakes bounds the handshakes this side works on at once
	// (zero or less: the default, 16). A handshake holds its turn only
	// while it works, from when the peer's bytes arrive (or it starts)
	// until it waits for the peer's next ones, not while the peer is
	// silent: an accepted connection or a dial waits for a turn only
	// while others work; while it waits, a handshake that has held its
	// turn 2 s or more is ended for it.
	MaxHandshakes int

	// OnPeer, if set, is told when a session with a peer starts (State
	// PeerSyncing, once the handshake went through) and when it ends
	// (State PeerBackingOff, or PeerFailed for a peer not dialled again
	// for a while, with Err saying why; nil when the peer said goodbye),
	// each with that session's Addr and counts: every start it heard is
	// followed by one end. A session that a newer one with the same peer
	// node replaces (one session per pair of nodes: doc/PROTOCOL.md §1.4)
	// ends with State PeerBackingOff and an Err that says so, while the
	// peer stays connected through the newer one (and is not dialled). A connection that ends
	// before its handshake went through, or whose session loses to one
	// already running with that node, is no news. It is called from the
	// swarm's goroutines and must not block.
	OnPeer func(PeerStatus)

	// Tests only: beacons go through lanTransport instead of multicast,
	// and the backoff bounds and LAN timings are theirs.
	lanTransport             beaconTransport
	lanInterval, lanExpiry   time.Duration
	minBackoff, maxBackoff   time.Duration
	refusedMin, refusedMax   time.Duration
	onSessionEnd             func(addr string, err error)
	dialer                   func(ctx context.Context, addr string) (net.Conn, error)
	acceptedBeforeHandshake  func(net.Conn)
	lanFoundHook, lanLostHok func(nodeID)
}

// Defaults of SwarmOptions and of the swarm's timing.
const (
	DefaultMaxPeers      = 64
	DefaultMaxHandshakes = 16

	// A dial that fails, or a session that ends before it ran cleanly,
	// is retried after a backoff that doubles from minBackoff to
	// maxBackoff, with jitter; a session that ran cleanly resets it.
	defaultMinBackoff = 100 * time.Millisecond
	defaultMaxBackoff = 30 * time.Second
	// A peer that failed the shared-key proof, spoke another version or
	// broke the protocol is not dialled again for refusedMin, doubling
	// up to refusedMax while it goes on failing.
	defaultRefusedMin = time.Minute
	defaultRefusedMax = 30 * time.Minute
)

// Swarm is a database's node: it listens, dials its peers and those it
// finds on the LAN, runs one live replication session per peer, redials
// the ones that drop, and says who is synced. Core.Swarm starts one. It
// is safe for concurrent use.
type Swarm struct {
	core *Core
	opts SwarmOptions
	rep  ReplicateOptions // every session's, Live set
	ln   net.Listener
	lan  *lan

	ctx    context.Context // ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	hs     chan struct{} // a token per handshake in flight

	mu       sync.Mutex
	closed   bool
	targets  map[string]*target       // addresses dialled, by address
	sessions map[*swarmSession]bool   // every session, handshaking or running
	byNode   map[nodeID]*swarmSession // the one running session per peer node
	lanNodes map[nodeID]string        // peers found on the LAN: their address
	self     map[string]bool          // addresses that turned out to be this node
	changed  chan struct{}            // closed and replaced when anything changed
	lanErr   error                    // why LAN discovery does not work, if it does not
}

// Swarm starts a swarm for the database with opts (nil: no listening, no
// static peers, LAN discovery on). It fails if the database is closed or
// read-only, an address does not parse, or the listener cannot be opened.
// Close stops it; Core.Close closes it too.
func (c *Core) Swarm(opts *SwarmOptions) (*Swarm, error) {
	sw := &Swarm{
		core:     c,
		targets:  map[string]*target{},
		sessions: map[*swarmSession]bool{},
		byNode:   map[nodeID]*swarmSession{},
		lanNodes: map[nodeID]string{},
		self:     map[string]bool{},
		changed:  make(chan struct{}),
	}
	if opts == nil {
		opts = &SwarmOptions{LAN: true}
	}
	sw.opts = *opts
	sw.setDefaults()
	if c.opts.ReadOnly {
		return nil, fmt.Errorf("swarm: %w", ErrReadOnly)
	}
	for _, a := range sw.opts.Peers {
		if err := checkPeerAddr(a); err != nil {
			return nil, fmt.Errorf("swarm: %w", err)
		}
	}
	c.swarmMu.Lock()
	defer c.swarmMu.Unlock()
	if c.swarmsClosed || c.isClosed() {
		return nil, fmt.Errorf("swarm: %w", ErrClosed)
	}
	sw.ctx, sw.cancel = context.WithCancel(context.Background())
	if sw.opts.Listen != "" {
		var lc net.ListenConfig
		ln, err := lc.Listen(sw.ctx, "tcp", sw.opts.Listen)
		if err != nil {
			sw.cancel()
			return nil, fmt.Errorf("swarm: %w", err)
		}
		sw.ln = ln
		sw.wg.Add(1)
		go func() { defer sw.wg.Done(); sw.acceptLoop() }()
	}
	for _, a := range sw.opts.Peers {
		sw.addTarget(a, "static", nodeID{})
	}
	if sw.opts.LAN {
		sw.startLAN()
	}
	if c.swarms == nil {
		c.swarms = map[*Swarm]bool{}
	}
	c.swarms[sw] = true
	return sw, nil
}

func (sw *Swarm) setDefaults() {
	o := &sw.opts
	if o.MaxPeers <= 0 {
		o.MaxPeers = DefaultMaxPeers
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = DefaultMaxHandshakes
	}
	if o.minBackoff <= 0 {
		o.minBackoff = defaultMinBackoff
	}
	if o.maxBackoff <= 0 {
		o.maxBackoff = defaultMaxBackoff
	}
	if o.refusedMin <= 0 {
		o.refusedMin = defaultRefusedMin
	}
	if o.refusedMax <= 0 {
		o.refusedMax = defaultRefusedMax
	}
	if o.Replicate != nil {
		sw.rep = *o.Replicate
	}
	sw.rep.Live = true
	sw.hs = make(chan struct{}, o.MaxHandshakes)
}

// startLAN starts discovery; where it cannot work, the swarm says so once
// (Options.OnError, and Peers' LAN status) and goes on without it.
func (sw *Swarm) startLAN() {
	port := 0
	if sw.ln != nil {
		if ta, ok := sw.ln.Addr().(*net.TCPAddr); ok {
			port = ta.Port
		}
	}
	l, err := startLAN(lanConfig{
		key: sw.core.key, node: sw.core.node, port: port, tr: sw.opts.lanTransport,
		found: sw.lanFound, lost: sw.lanLost, onErr: sw.lanFailed,
		interval: sw.opts.lanInterval, expiry: sw.opts.lanExpiry,
	})
	if err != nil {
		sw.lanFailed(err)
		return
	}
	sw.lan = l
}

// lanFailed records, and reports once, why LAN discovery does not work.
func (sw *Swarm) lanFailed(err error) {
	sw.mu.Lock()
	first := sw.lanErr == nil
	if first {
		sw.lanErr = err
	}
	sw.mu.Unlock()
	if first {
		sw.core.report(fmt.Errorf("swarm: LAN discovery: %w", err))
		sw.notify()
	}
}

// lanFound takes a member's beacon: its address is dialled, unless a
// session with that node runs already.
func (sw *Swarm) lanFound(addr string, node nodeID) {
	if node == sw.core.node {
		return
	}
	sw.mu.Lock()
	old, known := sw.lanNodes[node]
	sw.lanNodes[node] = addr
	sw.mu.Unlock()
	if known && old != addr {
		sw.removeTarget(old, "lan")
	}
	sw.addTarget(addr, "lan", node)
	if sw.opts.lanFoundHook != nil {
		sw.opts.lanFoundHook(node)
	}
}

// lanLost forgets a LAN peer whose beacons stopped: it is dialled no more
// (a session that runs goes on until it ends).
func (sw *Swarm) lanLost(node nodeID) {
	sw.mu.Lock()
	addr, ok := sw.lanNodes[node]
	delete(sw.lanNodes, node)
	sw.mu.Unlock()
	if ok {
		sw.removeTarget(addr, "lan")
	}
	if sw.opts.lanLostHok != nil {
		sw.opts.lanLostHok(node)
	}
}

// Addr is the address the swarm listens on (with the port it picked for
// port 0), or nil if it does not listen.
func (sw *Swarm) Addr() net.Addr {
	if sw.ln == nil {
		return nil
	}
	return sw.ln.Addr()
}

// AddPeer adds a static peer: addr (host:port) is dialled now, and again
// with backoff whenever its session ends, until the swarm closes. Adding
// an address already dialled changes nothing but its backoff: it is
// dialled again at once if it was waiting.
func (sw *Swarm) AddPeer(addr string) error {
	if err := checkPeerAddr(addr); err != nil {
		return fmt.Errorf("swarm: %w", err)
	}
	sw.mu.Lock()
	closed := sw.closed
	sw.mu.Unlock()
	if closed {
		return fmt.Errorf("swarm: %w", ErrClosed)
	}
	sw.addTarget(addr, "static", nodeID{})
	return nil
}

// checkPeerAddr checks that addr is host:port with a port number.
func checkPeerAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: peer address %q: want host:port", ErrInvalidValue, addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n <= 0 || n > 65535 || host == "" {
		return fmt.Errorf("%w: peer address %q: want host:port with a port from 1 to 65535", ErrInvalidValue, addr)
	}
	return nil
}

// Close ends every session, saying goodbye to its peer, stops listening,
// dialling and discovery, and waits for every goroutine of the swarm.
func (sw *Swarm) Close() error {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return nil
	}
	sw.closed = true
	sw.mu.Unlock()
	sw.cancel()
	var err error
	if sw.ln != nil {
		if e := sw.ln.Close(); e != nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	}
	if sw.lan != nil {
		sw.lan.close()
	}
	sw.wg.Wait()
	sw.notify()
	sw.core.swarmMu.Lock()
	delete(sw.core.swarms, sw)
	sw.core.swarmMu.Unlock()
	return err
}

// closeSwarms closes the database's swarms: Core.Close runs it first.
func (c *Core) closeSwarms() {
	c.swarmMu.Lock()
	c.swarmsClosed = true
	var list []*Swarm
	for sw := range c.swarms {
		list = append(list, sw)
	}
	c.swarmMu.Unlock()
	for _, sw := range list {
		sw.Close()
	}
}

func (c *Core) isClosed() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.closed
}

// notify wakes whoever waits on the swarm's state (Synced, dialers).
func (sw *Swarm) notify() {
	sw.mu.Lock()
	close(sw.changed)
	sw.changed = make(chan struct{})
	sw.mu.Unlock()
}

// changes returns a channel closed at the next change.
func (sw *Swarm) changes() <-chan struct{} {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.changed
}
