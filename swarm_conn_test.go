package kappa

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of the swarm's connections: status, Synced, Close, and the bounds
// on peers and handshakes. Helpers for the other swarm_*_test.go files too.

// swarmWait waits until cond holds: it looks again at every change of sw
// (nil: none) and every few milliseconds, and fails the test with what
// when ctx ends first. It only polls for progress: no deadline but ctx's.
func swarmWait(t testing.TB, ctx context.Context, sw *Swarm, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		var ch <-chan struct{}
		if sw != nil {
			ch = sw.changes()
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}

// dialCounter is a SwarmOptions.dialer that counts dials by address and
// the connections it made that are still open. route, if set, maps the
// address dialled to the one to connect to, or fails the dial.
type dialCounter struct {
	route func(ctx context.Context, addr string) (string, error)

	mu      sync.Mutex
	dials   map[string]int
	pending int // dials not returned yet
	open    int
	conns   []*countedConn
}

func newDialCounter() *dialCounter { return &dialCounter{dials: map[string]int{}} }

func (d *dialCounter) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials[addr]++
	d.pending++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.pending--
		d.mu.Unlock()
	}()
	to := addr
	if d.route != nil {
		var err error
		if to, err = d.route(ctx, addr); err != nil {
			return nil, err
		}
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	cc := &countedConn{Conn: c, d: d, closed: make(chan struct{})}
	d.mu.Lock()
	d.open++
	d.conns = append(d.conns, cc)
	d.mu.Unlock()
	return cc, nil
}

// count returns the dials of addr ("": of every address) and the
// connections open.
func (d *dialCounter) count(addr string) (dials, open int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if addr == "" {
		for _, n := range d.dials {
			dials += n
		}
	} else {
		dials = d.dials[addr]
	}
	return dials, d.open
}

// inFlight returns how many dials have not returned yet.
func (d *dialCounter) inFlight() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pending
}

// closeAll closes every connection the dialer made (a cut link).
func (d *dialCounter) closeAll() {
	d.mu.Lock()
	conns := d.conns
	d.conns = nil
	d.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// countedConn is a connection of a dialCounter; writes wait while its
// writeGate is set and open, until it is closed.
type countedConn struct {
	net.Conn
	d         *dialCounter
	once      sync.Once
	closed    chan struct{}
	writeGate atomic.Pointer[chan struct{}]
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		c.d.open--
		c.d.mu.Unlock()
		close(c.closed)
	})
	return c.Conn.Close()
}

func (c *countedConn) Write(p []byte) (int, error) {
	if g := c.writeGate.Load(); g != nil {
		select {
		case <-*g:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(p)
}

// sessionCounts returns how many sessions sw holds, and how many of them
// run (their hellos went through and they were kept).
func sessionCounts(sw *Swarm) (sessions, running int) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return len(sw.sessions), len(sw.byNode)
}

// peerAt returns sw's status of the peer at addr, and whether it has one.
func peerAt(sw *Swarm, addr string) (PeerStatus, bool) {
	for _, p := range sw.Peers() {
		if p.Addr == addr {
			return p, true
		}
	}
	return PeerStatus{}, false
}

// goroutinesSettle waits until no more goroutines run than before, and
// fails with every goroutine's stack if they do not within 30 s.
func goroutinesSettle(t testing.TB, before int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:n])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // (a poll, not a synchronisation)
	}
}

// newMemCore opens a database in memory that the test closes itself.
func newMemCore(t testing.TB, key []byte) *Core {
	t.Helper()
	c, err := New(NewMemStorage(), &Options{SharedKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// swarmAppend appends n entries named after who to w.
func swarmAppend(t testing.TB, w *Feed, who string, n int) {
	t.Helper()
	for i := range n {
		if _, err := w.Append([]byte(fmt.Sprintf("%s-%d-%d", who, w.Len(), i))); err != nil {
			t.Fatal(err)
		}
	}
}

// holds reports whether c holds the first n entries of w's feed.
func holds(c *Core, w *Feed, n uint64) bool {
	f := c.Feed(w.Key())
	return f != nil && f.Len() >= n && f.HasRange(0, n)
}

// freeAddr returns a 127.0.0.1 address nobody listens on, now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestSwarmPeersShowsBackingOffForAnAddressNobodyListensOn(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	addr := freeAddr(t)
	sw, err := a.Swarm(&SwarmOptions{Peers: []string{addr}, minBackoff: time.Hour, maxBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	var p PeerStatus
	swarmWait(t, ctx, sw, "backing off", func() bool {
		p, _ = peerAt(sw, addr)
		return p.State == PeerBackingOff
	})
	if p.Err == nil || p.Retry.IsZero() || p.Source != "static" || p.Node != "" {
		t.Fatalf("want a static peer backing off with an error and a retry time, got %v", p)
	}
	// The first backoff is minBackoff, jittered to [min/2, min].
	if d := p.Retry.Sub(p.Since); d < 30*time.Minute || d > time.Hour {
		t.Fatalf("retry %v after the failure, want within [30m, 1h]", d)
	}
	t.Log(p)
}

func TestSwarmPeersShowsBehindAndAheadWhileAPeerLags(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	wb, _ := b.Writer("b")
	swarmAppend(t, wb, "b", 1)
	sb, err := b.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	d := newDialCounter()
	addr := sb.Addr().String()
	sa, err := a.Swarm(&SwarmOptions{Peers: []string{addr}, dialer: d.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	swarmWait(t, ctx, sa, "a and b synced", func() bool {
		p, _ := peerAt(sa, addr)
		ps := connected(sb)
		return p.State == PeerSynced && holds(a, wb, 1) && len(ps) == 1 && ps[0].State == PeerSynced
	})
	// A's writes to b wait: b's haves reach a, a's requests and haves do
	// not reach b.
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	defer open()
	d.mu.Lock()
	for _, c := range d.conns {
		c.writeGate.Store(&gate)
	}
	d.mu.Unlock()
	swarmAppend(t, wb, "b", 100)
	var pa PeerStatus
	swarmWait(t, ctx, sa, "a behind b by 100", func() bool {
		pa, _ = peerAt(sa, addr)
		return pa.Behind == 100
	})
	if pa.State != PeerSyncing || pa.Ahead != 0 {
		t.Fatalf("a's view of b: %v, want syncing, behind 100, ahead 0", pa)
	}
	var pb PeerStatus
	swarmWait(t, ctx, sb, "b ahead of a by 100", func() bool {
		ps := connected(sb)
		if len(ps) != 1 {
			return false
		}
		pb = ps[0]
		return pb.Ahead == 100
	})
	if pb.State != PeerSyncing || pb.Behind != 0 || !pb.Inbound || pb.Source != "inbound" {
		t.Fatalf("b's view of a: %v, want inbound, syncing, behind 0, ahead 100", pb)
	}
	// Synced, called now, waits for the 100 entries a knows b holds.
	synced := make(chan error, 1)
	go func() { synced <- sa.Synced(ctx) }()
	open()
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if !holds(a, wb, 101) {
		t.Fatal("a lacks b's entries after Synced")
	}
	swarmWait(t, ctx, sa, "both sides synced", func() bool {
		pa, _ = peerAt(sa, addr)
		ps := connected(sb)
		// (The counts catch up once the session's loop took what its
		// storers stored.)
		return pa.State == PeerSynced && pa.Behind == 0 && pa.Ahead == 0 && pa.EntriesIn >= 101 &&
			len(ps) == 1 && ps[0].State == PeerSynced && ps[0].Behind == 0 && ps[0].Ahead == 0
	})
	if pa.EntriesIn < 101 || pa.BytesIn == 0 || pa.BytesOut == 0 {
		t.Fatalf("a's counts of b: %v", pa)
	}
}

func TestSwarmSyncedWaitsOnlyForWhatWasKnownWhenCalled(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	// No session: nil at once.
	if err := sa.Synced(ctx); err != nil {
		t.Fatalf("Synced with no session: %v", err)
	}
	wa, _ := a.Writer("a")
	wb, _ := b.Writer("b")
	swarmAppend(t, wa, "a", 10)
	swarmAppend(t, wb, "b", 10)
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	swarmWait(t, ctx, sb, "a session", func() bool { return len(connected(sb)) == 1 && len(connected(sa)) == 1 })
	// Both sides append without pause while each calls Synced: the calls
	// return all the same, each with what its side knew when it was made.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range []*Feed{wa, wb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				vals := make([][]byte, 50)
				for i := range vals {
					vals[i] = []byte("more")
				}
				if _, err := w.Append(vals...); err != nil {
					return
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	for _, c := range []struct {
		sw     *Swarm
		core   *Core
		mine   *Feed
		theirs *Feed
	}{{sa, a, wa, wb}, {sb, b, wb, wa}} {
		// What this side held at the call, the peer holds after.
		held := c.mine.Len()
		if err := c.sw.Synced(ctx); err != nil {
			t.Fatal(err)
		}
		if c.theirs.Len() < 10 || !holds(c.core, c.theirs, 10) {
			t.Fatal("Synced returned before this side held the peer's first entries")
		}
		peer := b
		if c.core == b {
			peer = a
		}
		if !holds(peer, c.mine, held) {
			t.Fatalf("Synced returned before the peer held the %d entries this side held at the call", held)
		}
	}
	sa.Close()
	if err := sa.Synced(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Synced after Close: %v, want ErrClosed", err)
	}
}

func TestSwarmCloseLeavesNoGoroutine(t *testing.T) {
	ctx := swarmCtx(t)
	before := runtime.NumGoroutine()
	a := newMemCore(t, nil)
	b := newMemCore(t, a.SharedKey())
	c := newMemCore(t, a.SharedKey())
	wb, _ := b.Writer("b")
	swarmAppend(t, wb, "b", 5)
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", Peers: []string{freeAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	swarmWait(t, ctx, sa, "two sessions", func() bool { return len(connected(sa)) == 2 })
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	// b closes its swarm; c's is closed by Core.Close; a's too.
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sc.AddPeer("127.0.0.1:1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("AddPeer on a swarm whose Core closed: %v, want ErrClosed", err)
	}
	if _, err := c.Swarm(&SwarmOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Swarm on a closed Core: %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sa.Synced(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Synced on a swarm whose Core closed: %v, want ErrClosed", err)
	}
	b.Close()
	goroutinesSettle(t, before)
}

func TestSwarmOnAReadOnlyCoreFails(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ro, err := Open(dir, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Swarm on a read-only Core: %v, want ErrReadOnly", err)
	}
}

// With MaxPeers sessions running, a new connection is closed at once: a
// running session is never ended to make room.
func TestSwarmClosesAConnectionPastMaxPeersAtOnce(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", MaxPeers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	addr := sa.Addr().String()
	for i := range 2 {
		b := newCore(t, &Options{SharedKey: a.SharedKey()})
		sb, err := b.Swarm(&SwarmOptions{Peers: []string{addr}})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		swarmWait(t, ctx, sa, fmt.Sprintf("%d sessions running", i+1), func() bool { _, n := sessionCounts(sa); return n == i+1 })
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, net.ErrClosed) && !isConnErr(err) {
		t.Fatalf("the third connection: read %d bytes, %v; want it closed", n, err)
	}
	if n, running := sessionCounts(sa); n != 2 || running != 2 {
		t.Fatalf("%d sessions, %d running; want 2 and 2", n, running)
	}
}

// Connections that never start a handshake (a stranger's, without the
// shared key) cannot keep an honest peer out: past MaxPeers, the session
// that has handshaked longest past handshakeGrace is ended to make room;
// and they hold no handshake turn, so with as many of them as there are
// turns the honest peer gets in with none of them ended. The handshakes
// never time out here: only that frees the room.
func TestSwarmEndsStaleHandshakesForAnHonestPeer(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		maxPeers, maxHandshakes int
		idle                    int
		evicts                  bool // the honest peer needs a place freed
	}{
		{"every place taken", 2, DefaultMaxHandshakes, 2, true},
		{"as many as turns", DefaultMaxPeers, 2, 2, false},
		{"both", 4, 2, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := swarmCtx(t)
			a := newCore(t, nil)
			var mu sync.Mutex
			var evicted int
			sa, err := a.Swarm(&SwarmOptions{
				Listen:        "127.0.0.1:0",
				MaxPeers:      tc.maxPeers,
				MaxHandshakes: tc.maxHandshakes,
				Replicate:     &ReplicateOptions{Timeout: time.Hour},
				onSessionEnd: func(addr string, err error) {
					mu.Lock()
					defer mu.Unlock()
					if errors.Is(err, errEvicted) {
						evicted++
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sa.Close()
			addr := sa.Addr().String()
			for range tc.idle {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			swarmWait(t, ctx, sa, "the idle connections handshaking", func() bool { n, _ := sessionCounts(sa); return n == tc.idle })
			b := newCore(t, &Options{SharedKey: a.SharedKey()})
			wb, _ := b.Writer("b")
			swarmAppend(t, wb, "b", 3)
			sb, err := b.Swarm(&SwarmOptions{Peers: []string{addr}, minBackoff: 10 * time.Millisecond, maxBackoff: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close()
			swarmWait(t, ctx, sa, "a holds b's entries", func() bool { return holds(a, wb, 3) })
			mu.Lock()
			defer mu.Unlock()
			if tc.evicts && evicted == 0 {
				t.Fatal("no stale handshake was ended, yet the honest peer got in")
			}
			if !tc.evicts && evicted != 0 {
				t.Fatalf("%d idle connections were ended for the honest peer, which needed no turn of theirs", evicted)
			}
			if n, _ := sessionCounts(sa); n > tc.maxPeers {
				t.Fatalf("%d sessions, MaxPeers is %d", n, tc.maxPeers)
			}
		})
	}
}

// A handshake turn (MaxHandshakes) is held only while this side works on a
// handshake, never while it waits for the peer: five connections that
// stall, silent ones and ones that sent a ClientHello and wait with the
// ServerHello read, hold none of the two turns, and an honest peer gets
// through with none of them ended. (Before, each held its turn until
// ended 2 s later, and a slow stream of them kept honest peers waiting.)
func TestSwarmStalledHandshakesHoldNoTurn(t *testing.T) {
	for _, stall := range []string{"silent", "after the ClientHello"} {
		t.Run(stall, func(t *testing.T) {
			ctx := swarmCtx(t)
			a := newCore(t, nil)
			var ends sessionEnds
			sa, err := a.Swarm(&SwarmOptions{
				Listen:        "127.0.0.1:0",
				MaxHandshakes: 2,
				Replicate:     &ReplicateOptions{Timeout: time.Hour}, // no handshake times out here
				onSessionEnd:  ends.record,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sa.Close()
			addr := sa.Addr().String()
			var hello []byte
			if stall != "silent" {
				hello = tlsClientHello(t)
			}
			var stalled []net.Conn
			for range 5 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if hello != nil {
					// Sent, and answered: the server waits for the rest.
					if _, err := c.Write(hello); err != nil {
						t.Fatal(err)
					}
					if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
						t.Fatalf("no ServerHello: %v", err)
					}
				}
				stalled = append(stalled, c)
			}
			swarmWait(t, ctx, sa, "5 sessions waiting for their peers, holding no turn", func() bool {
				n, _ := sessionCounts(sa)
				return n == 5 && len(sa.hs) == 0
			})
			b := newCore(t, &Options{SharedKey: a.SharedKey()})
			wb, _ := b.Writer("b")
			swarmAppend(t, wb, "b", 3)
			sb, err := b.Swarm(&SwarmOptions{Peers: []string{addr}, Replicate: &ReplicateOptions{Timeout: time.Minute}})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close()
			swarmWait(t, ctx, sa, "a holds b's entries", func() bool { return holds(a, wb, 3) })
			for _, c := range stalled {
				if err, ok := ends.get(c.LocalAddr().String()); ok {
					t.Errorf("a stalled connection was ended (%v) for the honest peer, which needed no turn of its", err)
				}
			}
		})
	}
}

// sessionEnds records why each session of a swarm ended, by address (an
// onSessionEnd).
type sessionEnds struct {
	mu sync.Mutex
	m  map[string]error
}

func (e *sessionEnds) record(addr string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]error{}
	}
	e.m[addr] = err
}

// get returns why the session at addr ended, if it did.
func (e *sessionEnds) get(addr string) (error, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	err, ok := e.m[addr]
	return err, ok
}

// tlsClientHello returns the first flight of a TLS 1.3 client: its
// ClientHello record, as a stranger would send it and then stall.
func tlsClientHello(t *testing.T) []byte {
	t.Helper()
	mine, theirs := net.Pipe()
	defer mine.Close()
	go func() {
		defer theirs.Close()
		c := tls.Client(theirs, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		c.Handshake() // fails once the pipe closes
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(mine, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(mine, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func TestSwarmSyncedDoesNotWaitForAHandshakeInFlight(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	wa, _ := a.Writer("a")
	swarmAppend(t, wa, "a", 3)
	// The handshakes never time out here.
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", Replicate: &ReplicateOptions{Timeout: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	silent, err := net.Dial("tcp", sa.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	swarmWait(t, ctx, sa, "the silent connection handshaking", func() bool { n, _ := sessionCounts(sa); return n == 1 })
	// No session runs: nil at once, not once the handshake times out.
	if err := sa.Synced(ctx); err != nil {
		t.Fatalf("Synced with a handshake in flight and no session: %v", err)
	}
	// With an honest peer in session too, Synced waits for that one only.
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	swarmWait(t, ctx, sa, "b in session", func() bool { return len(connected(sa)) == 1 })
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if !holds(b, wa, 3) {
		t.Fatal("Synced returned before b held a's entries")
	}
}
