package kappa

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"
)

// Dialling: each address the swarm knows (a static peer, or one found on
// the LAN) is a target with a goroutine that dials it, runs the session,
// and dials again with backoff when the session ends.

// target is an address the swarm dials.
type target struct {
	addr   string
	static bool          // a static peer (else found on the LAN): never forgotten
	wake   chan struct{} // dial now (AddPeer, a fresh beacon)

	// Guarded by the swarm's mu.
	node     nodeID // the peer's node id, once known (beacon or session)
	removed  bool   // forgotten: its goroutine stops once no session runs
	state    PeerState
	since    time.Time
	lastErr  error
	retry    time.Time     // when backing off or failed: the next dial
	backoff  time.Duration // the current backoff; 0 before the first failure
	refusals int           // refusals in a row
	last     *swarmSession // the latest session dialled
}

// addTarget adds addr to the addresses dialled (source "static" or "lan";
// node: the peer's id if known), or wakes it if it is there already.
func (sw *Swarm) addTarget(addr, source string, node nodeID) {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return
	}
	t, ok := sw.targets[addr]
	if ok {
		t.static = t.static || source == "static"
		t.removed = false
		if !node.isZero() {
			t.node = node
		}
		// A beacon cuts short the wait of a peer backing off, not that
		// of a peer that refused this node, and does not wake a dial or
		// session in progress (which would cut short the wait after
		// it); AddPeer wakes any.
		wake := source == "static" || t.state == PeerBackingOff
		sw.mu.Unlock()
		if !wake {
			return
		}
		select {
		case t.wake <- struct{}{}:
		default:
		}
		return
	}
	t = &target{addr: addr, static: source == "static", wake: make(chan struct{}, 1), node: node,
		state: PeerConnecting, since: time.Now()}
	sw.targets[addr] = t
	sw.wg.Add(1)
	sw.mu.Unlock()
	go func() {
		defer sw.wg.Done()
		sw.dialLoop(t)
	}()
	sw.notify()
}

// removeTarget forgets addr if it was found by source ("lan") alone.
func (sw *Swarm) removeTarget(addr, source string) {
	sw.mu.Lock()
	t, ok := sw.targets[addr]
	if ok && source == "lan" && !t.static {
		t.removed = true
	}
	sw.mu.Unlock()
	if ok {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// dialLoop dials t until the swarm closes or t is forgotten: while a
// session with t's node runs (dialled by either side), it waits for it
// to end; then it dials, runs the session, and waits out the backoff.
func (sw *Swarm) dialLoop(t *target) {
	defer func() {
		sw.mu.Lock()
		if sw.self[t.addr] && sw.ctx.Err() == nil {
			// Kept, so that Peers shows it: never dialled again.
			t.state, t.since, t.lastErr, t.retry = PeerFailed, time.Now(), errSelf, time.Time{}
		} else if sw.targets[t.addr] == t {
			delete(sw.targets, t.addr)
		}
		sw.mu.Unlock()
		sw.notify()
	}()
	for sw.ctx.Err() == nil {
		sw.mu.Lock()
		removed, self := t.removed, sw.self[t.addr]
		running := sw.byNode[t.node]
		if t.node.isZero() {
			running = nil
		}
		sw.mu.Unlock()
		switch {
		case removed || self:
			return
		case running != nil:
			// Connected already: wait until that session ends.
			select {
			case <-running.done:
			case <-t.wake:
			case <-sw.ctx.Done():
			}
			continue
		}
		err, clean := sw.dialOnce(t)
		if errors.Is(err, errSelf) {
			return
		}
		sw.wait(t, sw.nextBackoff(t, err, clean))
	}
}

// dialOnce dials t and runs its session; it returns why the session
// ended, and whether it ran cleanly (its first exchange was over).
func (sw *Swarm) dialOnce(t *target) (err error, clean bool) {
	sw.setTarget(t, PeerConnecting, nil)
	ctx, cancel := context.WithTimeout(sw.ctx, sw.dialTimeout())
	conn, err := sw.dial(ctx, t.addr)
	cancel()
	if err != nil {
		return err, false
	}
	ss := &swarmSession{sw: sw, addr: t.addr, t: t}
	if !sw.admit(ss) {
		conn.Close()
		return errTooMany, false
	}
	sw.mu.Lock()
	t.last = ss
	sw.mu.Unlock()
	err = ss.run(conn)
	ss.mu.Lock()
	clean = ss.wasLive
	if ss.err != nil {
		err = ss.err
	}
	ss.mu.Unlock()
	return err, clean
}

func (sw *Swarm) dial(ctx context.Context, addr string) (net.Conn, error) {
	if sw.opts.dialer != nil {
		return sw.opts.dialer(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// dialTimeout bounds a dial: the sessions' timeout.
func (sw *Swarm) dialTimeout() time.Duration {
	if sw.rep.Timeout > 0 {
		return sw.rep.Timeout
	}
	return 30 * time.Second
}

// refused reports whether err means the peer is not one to talk to: it
// failed the shared-key proof, speaks another version, or broke the
// protocol (a port that speaks no kappa included).
func refused(err error) bool {
	return errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrVersion) ||
		errors.Is(err, ErrProtocol) || errors.Is(err, ErrVerify)
}

// nextBackoff records how t's last try ended (err; clean: the session ran
// cleanly) and returns how long to wait before the next: nothing after a
// session replaced by another with the same peer (the loop waits for that
// one), the minimum after a clean session, a doubling backoff after a
// failure, and a long one after a refusal.
func (sw *Swarm) nextBackoff(t *target, err error, clean bool) time.Duration {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	o := &sw.opts
	var d time.Duration
	state := PeerBackingOff
	switch {
	case sw.ctx.Err() != nil:
		return 0
	case errors.Is(err, errDuplicate):
		t.backoff, t.refusals = 0, 0
		return 0
	case refused(err):
		t.refusals++
		d = o.refusedMin << min(t.refusals-1, 20)
		d = min(d, o.refusedMax)
		t.backoff = 0
		state = PeerFailed
	case clean:
		t.backoff, t.refusals = o.minBackoff, 0
		d = t.backoff
	default:
		t.backoff = min(max(2*t.backoff, o.minBackoff), o.maxBackoff)
		d = t.backoff
	}
	d = jitter(d)
	t.state, t.since, t.lastErr, t.retry = state, time.Now(), sessionErr(err), time.Now().Add(d)
	return d
}

// jitter returns a duration in [d/2, d], so that peers that failed
// together do not all come back at once.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// wait waits d, or less if t is woken (AddPeer, a fresh beacon) or the
// swarm closes.
func (sw *Swarm) wait(t *target, d time.Duration) {
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.wake:
	case <-sw.ctx.Done():
	}
}

// setTarget sets t's state (and its last error, if err is not nil).
func (sw *Swarm) setTarget(t *target, state PeerState, err error) {
	sw.mu.Lock()
	t.state, t.since = state, time.Now()
	if err != nil {
		t.lastErr = err
	}
	sw.mu.Unlock()
	sw.notify()
}
