package kappa

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var localhost = net.IPv4(127, 0, 0, 1)

// anyChange returns a channel closed at the next change of any of sws.
func anyChange(ctx context.Context, sws []*Swarm) <-chan struct{} {
	out := make(chan struct{})
	var once sync.Once
	for _, sw := range sws {
		ch := sw.changes()
		go func() {
			select {
			case <-ch:
				once.Do(func() { close(out) })
			case <-out:
			case <-ctx.Done():
			}
		}()
	}
	return out
}

// waitSwarms waits, on the swarms' changes, until cond holds.
func waitSwarms(t testing.TB, ctx context.Context, sws []*Swarm, what string, cond func() bool) {
	t.Helper()
	for {
		ch := anyChange(ctx, sws)
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting until %s: %v", what, ctx.Err())
		}
	}
}

// sessionsOf returns how many peer nodes sw runs a session with.
func sessionsOf(sw *Swarm) int {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return len(sw.byNode)
}

// lanNode is a database with a writer that appended, in a swarm.
type lanNode struct {
	core *Core
	w    *Feed
	sw   *Swarm
}

// startLANNodes opens n databases with the shared key key (nil: a new
// one), each with a writer that appended entries, and starts their
// swarms with opts(i).
func startLANNodes(t *testing.T, n, entries int, key []byte, opts func(i int) *SwarmOptions) []*lanNode {
	t.Helper()
	var nodes []*lanNode
	for i := range n {
		c := newCore(t, &Options{SharedKey: key})
		key = c.SharedKey()
		w, err := c.Writer("w")
		if err != nil {
			t.Fatal(err)
		}
		for j := range entries {
			if _, err := w.Append([]byte(fmt.Sprintf("node %d entry %d", i, j))); err != nil {
				t.Fatal(err)
			}
		}
		sw, err := c.Swarm(opts(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sw.Close() })
		nodes = append(nodes, &lanNode{core: c, w: w, sw: sw})
	}
	return nodes
}

// converge waits until every node runs a session with every other, then
// until every database holds every writer's entries.
func converge(t *testing.T, ctx context.Context, nodes []*lanNode, entries int) {
	t.Helper()
	var sws []*Swarm
	for _, n := range nodes {
		sws = append(sws, n.sw)
	}
	waitSwarms(t, ctx, sws, "every node is in session with every other", func() bool {
		for _, sw := range sws {
			if sessionsOf(sw) != len(sws)-1 {
				return false
			}
		}
		return true
	})
	holdAll := func() bool {
		for _, a := range nodes {
			for _, b := range nodes {
				f := a.core.Feed(b.w.Key())
				if f == nil || f.Len() != uint64(entries) || !f.HasRange(0, uint64(entries)) {
					return false
				}
			}
		}
		return true
	}
	for !holdAll() {
		for _, sw := range sws {
			if err := sw.Synced(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ctx.Err() != nil {
			t.Fatal("the databases do not converge")
		}
	}
}

func TestLANFiveNodesFindEachOtherAndConverge(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	nodes := startLANNodes(t, 5, 3, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost)}
	})
	converge(t, ctx, nodes, 3)
	for _, n := range nodes {
		for _, p := range n.sw.Peers() {
			if p.Source == "static" {
				t.Errorf("a static peer: %v", p)
			}
		}
	}
}

// multicastWorks reports whether a datagram sent to the discovery group
// comes back to this host, waiting generously.
func multicastWorks(t testing.TB) (bool, string) {
	tr, err := openUDPTransport()
	if err != nil {
		return false, err.Error()
	}
	defer tr.close()
	var mark [16]byte
	rand.Read(mark[:])
	if err := tr.send(mark[:]); err != nil {
		return false, fmt.Sprintf("sending to the group: %v", err)
	}
	got := make(chan bool, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := tr.recv(buf)
			if err != nil {
				got <- false
				return
			}
			if bytes.Equal(buf[:n], mark[:]) {
				got <- true
				return
			}
		}
	}()
	select {
	case ok := <-got:
		return ok, "the transport closed"
	case <-time.After(10 * time.Second):
		return false, "a datagram sent to the group did not come back within 10 s"
	}
}

func TestLANFiveNodesConvergeOverMulticast(t *testing.T) {
	if testing.Short() {
		t.Skip("real multicast: not in -short")
	}
	if ok, why := multicastWorks(t); !ok {
		t.Skipf("multicast does not work on this machine: %s", why)
	}
	ctx := swarmCtx(t)
	nodes := startLANNodes(t, 5, 3, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: ":0"}
	})
	converge(t, ctx, nodes, 3)
	for _, n := range nodes {
		if _, ok := n.sw.lan.tr.(*udpTransport); !ok {
			t.Fatalf("discovery over %T", n.sw.lan.tr)
		}
	}
	t.Log(nodes[0].sw.Peers())
}

// testBeacon returns a sealed beacon under key.
func testBeacon(key []byte, kind byte, port uint16, node nodeID) []byte {
	b := beacon{kind: kind, port: port, node: node}
	rand.Read(b.nonce[:])
	var buf [beaconLen]byte
	newBeaconCodec(key).encode(&buf, b)
	return buf[:]
}

func randomNode() nodeID {
	var n nodeID
	rand.Read(n[:])
	return n
}

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func TestBeaconCodecOpensOnlyWhatItSealed(t *testing.T) {
	key := randomKey()
	c := newBeaconCodec(key)
	node := randomNode()
	for _, kind := range []byte{beaconKind, probeKind} {
		p := testBeacon(key, kind, 7654, node)
		b, err := c.decode(p)
		if err != nil || b.kind != kind || b.port != 7654 || b.node != node || !bytes.Equal(b.nonce[:], p[beaconNonceOff:beaconSealOff]) {
			t.Fatalf("round trip: %+v %v", b, err)
		}
		var again [beaconLen]byte
		c.encode(&again, b)
		if !bytes.Equal(again[:], p) {
			t.Fatal("re-encoding differs")
		}
		for n := range len(p) {
			if _, err := c.decode(p[:n]); err == nil {
				t.Fatalf("truncated to %d bytes: opened", n)
			}
		}
		if _, err := c.decode(append(bytes.Clone(p), 0)); err == nil {
			t.Fatal("oversized: opened")
		}
		for i := range p {
			for _, flip := range []byte{1, 0x80, 0xff} {
				q := bytes.Clone(p)
				q[i] ^= flip
				if _, err := c.decode(q); err == nil {
					t.Fatalf("byte %d flipped by %#x: opened", i, flip)
				}
			}
		}
		if _, err := newBeaconCodec(randomKey()).decode(p); !errors.Is(err, errBeaconMAC) {
			t.Fatalf("another key: %v", err)
		}
	}
}

func TestBeaconsTellAnOutsiderNothing(t *testing.T) {
	key := randomKey()
	node := randomNode()
	a, b := testBeacon(key, beaconKind, 7654, node), testBeacon(key, beaconKind, 7654, node)
	// Past the fixed header (magic, version, kind), no 16-byte window of
	// one beacon appears anywhere in the other.
	for i := 6; i+16 <= beaconLen; i++ {
		if bytes.Contains(b, a[i:i+16]) {
			t.Fatalf("bytes %d..%d of one beacon appear in the other", i, i+16)
		}
	}
	if bytes.Contains(a, node[:]) {
		t.Fatal("the node id is in the clear")
	}
	// The same node, port and nonce under two keys: nothing shared but
	// the header and the nonce.
	var x, y [beaconLen]byte
	bc := beacon{kind: beaconKind, port: 7654, node: node}
	newBeaconCodec(key).encode(&x, bc)
	newBeaconCodec(randomKey()).encode(&y, bc)
	if bytes.Equal(x[beaconSealOff:], y[beaconSealOff:]) || bytes.Equal(x[beaconSealOff:beaconMACOff], y[beaconSealOff:beaconMACOff]) {
		t.Fatal("two databases seal alike")
	}
}

// dialLog is a SwarmOptions.dialer that records every address dialled and
// dials only 127.0.0.1.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialLog) dial(ctx context.Context, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		return nil, errors.New("test: not dialled")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

func (d *dialLog) dialled(prefix string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, a := range d.addrs {
		if strings.HasPrefix(a, prefix) {
			out = append(out, a)
		}
	}
	return out
}

// lanMarker injects a member beacon of a fresh node from ip (never
// dialled for real by dialLog) and waits until sw's discovery found it:
// every datagram injected before it was handled by then.
func lanMarker(t *testing.T, ctx context.Context, hub *beaconHub, key []byte, ip net.IP, found <-chan nodeID) {
	t.Helper()
	m := randomNode()
	hub.inject(testBeacon(key, beaconKind, 9, m), ip)
	waitFound(t, ctx, found, m)
}

// foundBefore reads found until marker, and reports whether node was
// found before it.
func foundBefore(t *testing.T, ctx context.Context, found <-chan nodeID, node, marker nodeID) bool {
	t.Helper()
	seen := false
	for {
		select {
		case n := <-found:
			seen = seen || n == node
			if n == marker {
				return seen
			}
		case <-ctx.Done():
			t.Fatal("the marker was not found")
		}
	}
}

// waitFound waits until node is found.
func waitFound(t *testing.T, ctx context.Context, found <-chan nodeID, node nodeID) {
	t.Helper()
	for {
		select {
		case n := <-found:
			if n == node {
				return
			}
		case <-ctx.Done():
			t.Fatal("the node was not found")
		}
	}
}

// foundChan returns a lanFoundHook sending to a buffered channel.
func foundChan() (func(nodeID), chan nodeID) {
	ch := make(chan nodeID, 1024)
	return func(n nodeID) {
		select {
		case ch <- n:
		default:
		}
	}, ch
}

func TestLANNodeOfAnotherDatabaseIsNeverDialled(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	var dl dialLog
	hook, found := foundChan()
	a := startLANNodes(t, 1, 1, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost),
			dialer: dl.dial, lanFoundHook: hook}
	})[0]
	// Another database's node on the same LAN, beaconing from 10.0.0.9.
	other := startLANNodes(t, 1, 1, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(net.IPv4(10, 0, 0, 9))}
	})[0]
	ot := other.sw.lan
	waitFor(t, ctx, "the other database's probes", func() bool { return ot.stats.sent.Load() >= 3 })
	lanMarker(t, ctx, hub, a.core.SharedKey(), net.IPv4(10, 7, 7, 7), found)
	if d := dl.dialled("10.0.0.9"); len(d) != 0 {
		t.Fatalf("dialled the other database's node: %v", d)
	}
	if a.sw.lan.stats.dropped.Load() < 3 {
		t.Fatalf("dropped %d", a.sw.lan.stats.dropped.Load())
	}
}

// waitFor waits until cond holds, checking it at the pace of a short
// ticker; ctx only turns a hang into a failure.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("waiting until %s: %v", what, ctx.Err())
		}
	}
}

func TestLANFloodOfForgedBeaconsCostsNothing(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	var dl dialLog
	var founds []chan nodeID
	nodes := startLANNodes(t, 2, 2, nil, func(int) *SwarmOptions {
		hook, found := foundChan()
		founds = append(founds, found)
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost),
			dialer: dl.dial, lanFoundHook: hook, lanInterval: 100 * time.Millisecond}
	})
	key := nodes[0].core.SharedKey()
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		valid := testBeacon(randomKey(), beaconKind, 7654, randomNode()) // another database's
		forged := bytes.Clone(testBeacon(key, beaconKind, 7654, randomNode()))
		forged[beaconMACOff] ^= 1 // a member's beacon with its MAC broken
		for i := range 100000 {
			var p []byte
			switch i % 5 {
			case 0:
				p = valid
			case 1:
				p = forged
			case 2:
				p = []byte("GET / HTTP/1.1\r\n")
			case 3:
				p = make([]byte, 1+i%2000)
				rand.Read(p)
			case 4:
				p = bytes.Clone(valid)
				rand.Read(p[beaconNonceOff:])
			}
			hub.inject(p, net.IPv4(10, 1, byte(i>>8), byte(i)))
		}
	}()
	converge(t, ctx, nodes, 2)
	<-flooded
	m := randomNode()
	hub.inject(testBeacon(key, beaconKind, 9, m), net.IPv4(10, 7, 7, 7))
	for _, found := range founds {
		waitFound(t, ctx, found, m)
	}
	if d := dl.dialled("10.1."); len(d) != 0 {
		t.Fatalf("dialled %d addresses named by forged beacons, e.g. %v", len(d), d[0])
	}
	for _, n := range nodes {
		st := &n.sw.lan.stats
		if st.dropped.Load() < 100000 {
			t.Errorf("dropped %d of 100000", st.dropped.Load())
		}
		// Only member beacons reach the nonce cache.
		if a := st.accepted.Load() + st.own.Load(); a > 200 {
			t.Errorf("%d beacons accepted", a)
		}
	}
	// Each forged datagram costs one HMAC and no allocation.
	forged := testBeacon(randomKey(), beaconKind, 7654, randomNode())
	from := netip.MustParseAddr("10.2.0.1")
	l2 := &lan{rx: newBeaconCodec(key)}
	l2.handle(forged, from) // the HMAC states' first Reset
	if a := testing.AllocsPerRun(1000, func() { l2.handle(forged, from) }); a != 0 {
		t.Fatalf("a forged beacon allocates %v times", a)
	}
}

func TestLANReplayedBeaconIsIgnored(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	var dl dialLog
	hook, found := foundChan()
	var got [][]byte
	var gotMu sync.Mutex
	bTr := hub.newTransport(localhost)
	bTr.received = func(p []byte) {
		gotMu.Lock()
		got = append(got, p)
		gotMu.Unlock()
	}
	a := startLANNodes(t, 1, 1, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost)}
	})[0]
	b := startLANNodes(t, 1, 1, a.core.SharedKey(), func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, lanTransport: bTr, dialer: dl.dial, lanFoundHook: hook}
	})[0]
	waitFound(t, ctx, found, a.core.node)
	// The first datagram b received is a's, and b took it before it
	// found a.
	gotMu.Lock()
	replay := got[0]
	gotMu.Unlock()
	before := b.sw.lan.stats.accepted.Load()
	hub.inject(replay, net.IPv4(10, 3, 3, 3))
	lanMarker(t, ctx, hub, a.core.SharedKey(), net.IPv4(10, 7, 7, 7), found)
	if d := dl.dialled("10.3."); len(d) != 0 {
		t.Fatalf("a replayed beacon was dialled: %v", d)
	}
	if got := b.sw.lan.stats.accepted.Load() - before; got != 1 { // the marker
		t.Fatalf("%d beacons accepted, want the marker alone", got)
	}
	if b.sw.lan.stats.replayed.Load() == 0 {
		t.Fatal("no replay counted")
	}
	b.sw.mu.Lock()
	addr := b.sw.lanNodes[a.core.node]
	b.sw.mu.Unlock()
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("a's address is now %q", addr)
	}
}

// garbageListener accepts connections and answers each, once release is
// closed, like a web server that speaks no kappa; it counts the
// connections, and tells of each on accepted.
func garbageListener(t *testing.T, release <-chan struct{}) (net.Listener, *atomic.Int64, <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	accepted := make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			accepted <- struct{}{}
			go func() {
				defer c.Close()
				<-release
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln, &n, accepted
}

func TestLANBeaconNamingANonKappaPort(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	var founds []chan nodeID
	nodes := startLANNodes(t, 2, 1, nil, func(int) *SwarmOptions {
		hook, found := foundChan()
		founds = append(founds, found)
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost), lanFoundHook: hook}
	})
	a, b := nodes[0], nodes[1]
	converge(t, ctx, nodes, 1)
	release := make(chan struct{})
	ln, accepts, accepted := garbageListener(t, release)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	key := a.core.SharedKey()
	bogus := randomNode()
	hub.inject(testBeacon(key, beaconKind, port, bogus), localhost)
	for range 2 { // a and b dial it
		select {
		case <-accepted:
		case <-ctx.Done():
			t.Fatal("the non-kappa port was not dialled")
		}
	}
	// A fresh beacon while the handshakes wait: it does not cut short
	// the wait after they fail.
	hub.inject(testBeacon(key, beaconKind, port, bogus), localhost)
	m := randomNode()
	hub.inject(testBeacon(key, beaconKind, 9, m), localhost)
	for _, found := range founds {
		waitFound(t, ctx, found, m)
	}
	close(release)
	target := ln.Addr().String()
	failed := func(sw *Swarm) (PeerStatus, bool) {
		for _, p := range sw.Peers() {
			if p.Addr == target && p.State == PeerFailed {
				return p, true
			}
		}
		return PeerStatus{}, false
	}
	waitSwarms(t, ctx, []*Swarm{a.sw, b.sw}, "the non-kappa port failed", func() bool {
		_, okA := failed(a.sw)
		_, okB := failed(b.sw)
		return okA && okB
	})
	for _, sw := range []*Swarm{a.sw, b.sw} {
		if p, _ := failed(sw); !errors.Is(p.Err, ErrProtocol) {
			t.Fatalf("the failed peer's error: %v", p.Err)
		}
	}
	// Rounds of syncing with b, with a fresh beacon naming that port in
	// each: it is not dialled again.
	for round := range 5 {
		hub.inject(testBeacon(key, beaconKind, port, bogus), localhost)
		if _, err := b.w.Append([]byte(fmt.Sprintf("round %d", round))); err != nil {
			t.Fatal(err)
		}
		want := b.w.Len()
		waitSwarms(t, ctx, []*Swarm{a.sw, b.sw}, "a holds b's new entry", func() bool {
			f := a.core.Feed(b.w.Key())
			return f != nil && f.Len() == want
		})
	}
	if n := accepts.Load(); n != 2 { // once by a, once by b
		t.Fatalf("the non-kappa port was dialled %d times", n)
	}
	if _, ok := failed(a.sw); !ok {
		t.Fatal("the non-kappa port is no longer failed")
	}
}

func TestLANForgetsAPeerWhoseBeaconsStopped(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	lost := make(chan nodeID, 16)
	opts := func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(localhost),
			lanInterval: 50 * time.Millisecond, lanExpiry: 400 * time.Millisecond,
			lanLostHok: func(n nodeID) { lost <- n }}
	}
	nodes := startLANNodes(t, 2, 1, nil, opts)
	a, b := nodes[0], nodes[1]
	converge(t, ctx, nodes, 1)
	bAddr := b.sw.Addr().String()
	b.sw.Close()
	select {
	case n := <-lost:
		if n != b.core.node {
			t.Fatalf("lost %v, not b", n)
		}
	case <-ctx.Done():
		t.Fatal("b was never lost")
	}
	waitSwarms(t, ctx, []*Swarm{a.sw}, "b's address is gone from a's peers", func() bool {
		for _, p := range a.sw.Peers() {
			if p.Addr == bAddr {
				return false
			}
		}
		return true
	})
}

// failingTransport fails every send, and says so on a channel.
type failingTransport struct {
	*hubTransport
	sends chan struct{}
}

func (f failingTransport) send([]byte) error {
	select {
	case f.sends <- struct{}{}:
	default:
	}
	return errors.New("sendto: network is unreachable")
}

func TestLANWithoutMulticastSaysSoOnceAndStaticPeersSync(t *testing.T) {
	ctx := swarmCtx(t)
	var mu sync.Mutex
	var lanErrs []error
	onErr := func(err error) {
		if strings.Contains(err.Error(), "LAN discovery") {
			mu.Lock()
			lanErrs = append(lanErrs, err)
			mu.Unlock()
		}
	}
	a := newCore(t, &Options{OnError: onErr})
	b := newCore(t, &Options{SharedKey: a.SharedKey(), OnError: onErr})
	wa, _ := a.Writer("a")
	wa.Append([]byte("from a"))
	ft := failingTransport{newBeaconHub().newTransport(localhost), make(chan struct{}, 16)}
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", LAN: true, lanTransport: ft, lanInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	for range 6 { // three probes and three beacons, all failing
		select {
		case <-ft.sends:
		case <-ctx.Done():
			t.Fatal("no sends")
		}
	}
	waitSwarms(t, ctx, []*Swarm{sb}, "b is in session", func() bool { return sessionsOf(sb) == 1 })
	if err := sb.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.Feed(wa.Key()); f == nil || f.Len() != 1 {
		t.Fatal("b lacks a's entry")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lanErrs) != 1 || !strings.Contains(lanErrs[0].Error(), "network is unreachable") {
		t.Fatalf("LAN errors reported: %v", lanErrs)
	}
	sa.mu.Lock()
	defer sa.mu.Unlock()
	if sa.lanErr == nil {
		t.Fatal("the swarm did not record why discovery fails")
	}
}

// startTestLAN starts a discovery alone (no swarm) on tr, recording what
// it finds; it is closed when the test ends.
func startTestLAN(t *testing.T, key []byte, node nodeID, port int, tr beaconTransport) (*lan, chan nodeID) {
	t.Helper()
	found := make(chan nodeID, 1024)
	l, err := startLAN(lanConfig{key: key, node: node, port: port, tr: tr,
		found: func(addr string, n nodeID) {
			select {
			case found <- n:
			default: // a test reads what it needs
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.close)
	return l, found
}

func TestLANIgnoresItsOwnBeacons(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	tr := hub.newTransport(localhost)
	tr.loopback = true
	key, self := randomKey(), randomNode()
	l, found := startTestLAN(t, key, self, 7654, tr)
	waitFor(t, ctx, "its three probes", func() bool { return l.stats.sent.Load() >= 3 })
	m := randomNode()
	hub.inject(testBeacon(key, beaconKind, 9, m), localhost)
	if foundBefore(t, ctx, found, self, m) {
		t.Fatal("found itself")
	}
	if l.stats.own.Load() < 3 {
		t.Fatalf("%d own beacons dropped", l.stats.own.Load())
	}
}

func TestLANAnswersProbesAtMostEvery250ms(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	key := randomKey()
	l, _ := startTestLAN(t, key, randomNode(), 7654, hub.transport(localhost))
	start := time.Now()
	// Valid probes, each fresh, as fast as the node takes them, until it
	// answered three times.
	for l.stats.answers.Load() < 3 {
		hub.inject(testBeacon(key, probeKind, 0, randomNode()), net.IPv4(10, 4, 4, 4))
		if ctx.Err() != nil {
			t.Fatal("fewer than three answers")
		}
	}
	elapsed := time.Since(start)
	if elapsed < 2*answerGap {
		t.Fatalf("three answers in %v", elapsed)
	}
	if a, most := l.stats.answers.Load(), 1+int64(time.Since(start)/answerGap); int64(a) > most {
		t.Fatalf("%d answers in %v", a, time.Since(start))
	}
	t.Logf("%d probes taken in %v", l.stats.accepted.Load(), elapsed)
}

func TestLANNonListeningNodeIsNotDialledButFindsListeners(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	key := randomKey()
	la, foundA := startTestLAN(t, key, randomNode(), 7654, hub.transport(localhost))
	b := randomNode()
	_, foundB := startTestLAN(t, key, b, 0, hub.transport(net.IPv4(127, 0, 0, 2)))
	// b's probes reach a, which answers: b finds a.
	select {
	case n := <-foundB:
		if n != la.cfg.node {
			t.Fatalf("b found %v", n)
		}
	case <-ctx.Done():
		t.Fatal("b did not find a")
	}
	m := randomNode()
	hub.inject(testBeacon(key, beaconKind, 9, m), localhost)
	if foundBefore(t, ctx, foundA, b, m) {
		t.Fatal("a found b, which does not listen")
	}
}

func TestLANSendErrorIsReportedOnce(t *testing.T) {
	ctx := swarmCtx(t)
	ft := failingTransport{newBeaconHub().newTransport(localhost), make(chan struct{}, 16)}
	var errs atomic.Int64
	l, err := startLAN(lanConfig{key: randomKey(), node: randomNode(), port: 7654, tr: ft,
		interval: 10 * time.Millisecond, onErr: func(error) { errs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	for range 6 {
		select {
		case <-ft.sends:
		case <-ctx.Done():
			t.Fatal("no sends")
		}
	}
	if n := errs.Load(); n != 1 {
		t.Fatalf("reported %d times", n)
	}
}

func TestLANPeerKeepsItsFirstAddressWhileItIsHeard(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	key := randomKey()
	type find struct {
		addr string
		node nodeID
	}
	found := make(chan find, 1024)
	l, err := startLAN(lanConfig{key: key, node: randomNode(), port: 7654, tr: hub.transport(localhost),
		interval: time.Second, found: func(addr string, n nodeID) { found <- find{addr, n} }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	peer := randomNode()
	next := func() find {
		select {
		case f := <-found:
			return f
		case <-ctx.Done():
			t.Fatal("nothing found")
		}
		return find{}
	}
	// The peer beacons from two addresses (say IPv4 and IPv6): the first
	// is kept.
	for i := range 6 {
		ip := net.ParseIP("fd00::5")
		if i%2 == 0 {
			ip = net.IPv4(10, 5, 5, 5)
		}
		hub.inject(testBeacon(key, beaconKind, 7000, peer), ip)
		if f := next(); f.node != peer || f.addr != "10.5.5.5:7000" {
			t.Fatalf("beacon %d: found %v", i, f)
		}
	}
	// Once the first is silent for two intervals, the other replaces it.
	start := time.Now()
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	for {
		<-pace.C
		hub.inject(testBeacon(key, beaconKind, 7000, peer), net.ParseIP("fd00::5"))
		f := next()
		if f.addr == "[fd00::5]:7000" {
			break
		}
		if f.addr != "10.5.5.5:7000" {
			t.Fatalf("found %v", f)
		}
	}
	if d := time.Since(start); d < 2*time.Second-100*time.Millisecond {
		t.Fatalf("replaced after %v", d)
	}
}
