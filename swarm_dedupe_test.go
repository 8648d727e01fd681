package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Tests of one session per pair of nodes, and of never connecting a node
// to itself.

// onlySession returns sw's one session, failing if it has another count.
func onlySession(t testing.TB, sw *Swarm) *swarmSession {
	t.Helper()
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if len(sw.sessions) != 1 || len(sw.byNode) != 1 {
		t.Fatalf("%d sessions, %d running; want one", len(sw.sessions), len(sw.byNode))
	}
	for ss := range sw.sessions {
		return ss
	}
	return nil
}

// peerNews counts what OnPeer tells each of two swarms: a session started
// (PeerSyncing), or ended (any other state).
type peerNews struct {
	mu           sync.Mutex
	starts, ends [2]int
}

// onPeer returns an OnPeer for swarm i that counts its news.
func (n *peerNews) onPeer(i int) func(PeerStatus) {
	return func(p PeerStatus) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if p.State == PeerSyncing {
			n.starts[i]++
		} else {
			n.ends[i]++
		}
	}
}

// counts returns the sessions started and ended so far, by swarm.
func (n *peerNews) counts() (starts, ends [2]int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.starts, n.ends
}

// startDialingPair starts a swarm on each of a and b whose only peer is
// "peer.test:1", which each one's dialer routes to the other once both
// listen: the dials wait for both, so that they go out at once. OnPeer of
// swarm i is news.onPeer(i). It returns the swarms and their dialers.
func startDialingPair(t *testing.T, a, b *Core, news *peerNews, where string) (sws [2]*Swarm, counters [2]*dialCounter) {
	t.Helper()
	gate := make(chan struct{})
	var addrs [2]string
	counters = [2]*dialCounter{newDialCounter(), newDialCounter()}
	for i, d := range counters {
		d.route = func(ctx context.Context, addr string) (string, error) {
			select {
			case <-gate:
				return addrs[1-i], nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
	}
	var errs [2]error
	var wg sync.WaitGroup
	for i, c := range []*Core{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sws[i], errs[i] = c.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", Peers: []string{"peer.test:1"}, dialer: counters[i].dial, OnPeer: news.onPeer(i)})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
	addrs = [2]string{sws[0].Addr().String(), sws[1].Addr().String()}
	close(gate)
	return sws, counters
}

// pairSettled reports whether the pair startDialingPair started has
// settled: each side's dial returned, one session on each side, one
// connection open.
func pairSettled(sws [2]*Swarm, counters [2]*dialCounter) bool {
	na, ra := sessionCounts(sws[0])
	nb, rb := sessionCounts(sws[1])
	da, oa := counters[0].count("")
	db, ob := counters[1].count("")
	return da > 0 && db > 0 && counters[0].inFlight() == 0 && counters[1].inFlight() == 0 &&
		na == 1 && ra == 1 && nb == 1 && rb == 1 && oa+ob == 1
}

func TestSwarmBothSidesDialAtOnceKeepOneSession(t *testing.T) {
	const rounds = 50
	ctx := swarmCtx(t)
	key := newMemCore(t, nil).SharedKey()
	won := map[string]int{}
	for round := range rounds {
		before := runtime.NumGoroutine()
		where := fmt.Sprintf("round %d", round)
		a, b := newMemCore(t, key), newMemCore(t, key)
		wa, _ := a.Writer("a")
		wb, _ := b.Writer("b")
		swarmAppend(t, wa, "a", 2)
		swarmAppend(t, wb, "b", 2)
		// Each dials "peer.test:1", which is the other once both listen:
		// the dials wait for the gate, so that both go out at once.
		// OnPeer hears of sessions started and ended: one more started
		// than ended on each side while the peers are connected (a
		// session replaced by the survivor is a start and an end; one
		// that lost to a session already running is neither), as many
		// after Close.
		var news peerNews
		sws, counters := startDialingPair(t, a, b, &news, where)
		sa, sb := sws[0], sws[1]

		// Settled: each side's dial returned, one session on each side,
		// one connection open.
		settled := func() bool { return pairSettled(sws, counters) }
		swarmWait(t, ctx, sa, where+": one session on each side, one connection", settled)
		if err := sa.Synced(ctx); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if err := sb.Synced(ctx); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if !holds(a, wb, 2) || !holds(b, wa, 2) {
			t.Fatalf("%s: the entries did not cross", where)
		}
		if !settled() {
			t.Fatalf("%s: a session came back after settling", where)
		}
		// The same session on both sides: it names the other node, and
		// one side dialled it.
		ssa, ssb := onlySession(t, sa), onlySession(t, sb)
		if ssa.node != b.node || ssb.node != a.node || ssa.inbound == ssb.inbound {
			t.Fatalf("%s: a's session (node %v, inbound %v) and b's (node %v, inbound %v) are not one", where, ssa.node, ssa.inbound, ssb.node, ssb.inbound)
		}
		if len(connected(sa)) != 1 || len(connected(sb)) != 1 {
			t.Fatalf("%s: Peers shows %v and %v, want one peer in session each", where, sa.Peers(), sb.Peers())
		}
		// Each side dialled once, and both chose the same survivor at
		// once: the session dialled by the node of the smaller id.
		da, _ := counters[0].count("")
		db, _ := counters[1].count("")
		if da != 1 || db != 1 {
			t.Fatalf("%s: a dialled %d times, b %d; want once each", where, da, db)
		}
		aDialled := !ssa.inbound
		if want := bytes.Compare(a.node[:], b.node[:]) < 0; aDialled != want {
			t.Fatalf("%s: the session dialled by a survived: %v; want %v (a's node id is the smaller: %v)", where, aDialled, want, want)
		}
		if aDialled {
			won["a dialled"]++
		} else {
			won["b dialled"]++
		}
		if starts, ends := news.counts(); starts[0]-ends[0] != 1 || starts[1]-ends[1] != 1 {
			t.Fatalf("%s: OnPeer heard of %v sessions started and %v ended, want one more started than ended on each side", where, starts, ends)
		}
		sa.Close()
		sb.Close()
		if starts, ends := news.counts(); ends != starts {
			t.Fatalf("%s: after Close, OnPeer heard of %v sessions started and %v ended", where, starts, ends)
		}
		a.Close()
		b.Close()
		goroutinesSettle(t, before)
	}
	t.Logf("survivors over %d rounds: %v", rounds, won)
}

// waitTwoAddressesOneSession waits until sb dialled sa's node (node)
// under both addresses, one and two, and one session runs on each side.
func waitTwoAddressesOneSession(t *testing.T, ctx context.Context, sa, sb *Swarm, d *dialCounter, node nodeID, one, two string) {
	t.Helper()
	swarmWait(t, ctx, sb, "both addresses dialled, one session", func() bool {
		n1, _ := d.count(one)
		n2, _ := d.count(two)
		nb, rb := sessionCounts(sb)
		na, ra := sessionCounts(sa)
		// Both dials went as far as the hellos: the targets know a.
		sb.mu.Lock()
		known := sb.targets[one].node == node && sb.targets[two].node == node
		sb.mu.Unlock()
		return n1 > 0 && n2 > 0 && known && nb == 1 && rb == 1 && na == 1 && ra == 1
	})
}

func TestSwarmOnePeerUnderTwoAddressesKeepsOneSession(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	wa, _ := a.Writer("a")
	swarmAppend(t, wa, "a", 1)
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	_, port, _ := net.SplitHostPort(sa.Addr().String())
	one, two := "127.0.0.1:"+port, "localhost:"+port
	d := newDialCounter()
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{one, two}, dialer: d.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	waitTwoAddressesOneSession(t, ctx, sa, sb, d, a.node, one, two)
	// Appends cross, one at a time; neither address is dialled again
	// meanwhile.
	dials, _ := d.count("")
	for range 10 {
		swarmAppend(t, wa, "a", 1)
		if err := sa.Synced(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !holds(b, wa, 11) {
		t.Fatal("b lacks a's entries")
	}
	if n, _ := d.count(""); n != dials {
		t.Fatalf("%d dials while in session, want %d", n, dials)
	}
	onlySession(t, sb)
	onlySession(t, sa)
	ps := sb.Peers()
	if len(ps) != 2 || ps[0].Node != a.node.String() || ps[1].Node != a.node.String() {
		t.Fatalf("b's peers: %v; want both addresses, naming a", ps)
	}
}

// sessionNews records, per session address, what OnPeer told: starts and
// ends, and the ends that say the session was replaced.
type sessionNews struct {
	mu               sync.Mutex
	starts, ends     map[string]int
	replaced, events int
}

func newSessionNews() *sessionNews {
	return &sessionNews{starts: map[string]int{}, ends: map[string]int{}}
}

func (n *sessionNews) onPeer(p PeerStatus) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events++
	if p.State == PeerSyncing {
		n.starts[p.Addr]++
		return
	}
	n.ends[p.Addr]++
	if errors.Is(p.Err, errDuplicate) {
		n.replaced++
	}
}

// TestSwarmOnPeerTellsEachSessionsEnd: OnPeer's news is per session. When
// b dials a under two addresses, the second session through on each side
// either loses to the first (no news) or replaces it; either way, once
// both swarms closed, every session OnPeer heard start it heard end, under
// the same address, and a replaced one ended saying so. (The survivor is
// chosen by the TLS exporter values, so the rounds go on until one was
// replaced.)
func TestSwarmOnPeerTellsEachSessionsEnd(t *testing.T) {
	ctx := swarmCtx(t)
	replaced := 0
	for round := 0; replaced == 0; round++ {
		if round == 40 {
			t.Fatal("in 40 rounds, no session was replaced")
		}
		a := newCore(t, nil)
		b := newCore(t, &Options{SharedKey: a.SharedKey()})
		na, nb := newSessionNews(), newSessionNews()
		sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", OnPeer: na.onPeer})
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(sa.Addr().String())
		one, two := "127.0.0.1:"+port, "localhost:"+port
		d := newDialCounter()
		sb, err := b.Swarm(&SwarmOptions{Peers: []string{one, two}, dialer: d.dial, OnPeer: nb.onPeer})
		if err != nil {
			t.Fatal(err)
		}
		waitTwoAddressesOneSession(t, ctx, sa, sb, d, a.node, one, two)
		sb.Close()
		sa.Close()
		for side, n := range map[string]*sessionNews{"a": na, "b": nb} {
			n.mu.Lock()
			if !maps.Equal(n.starts, n.ends) || len(n.starts) == 0 {
				t.Errorf("round %d, %s: OnPeer heard sessions start at %v and end at %v; want each start ended, by address", round, side, n.starts, n.ends)
			}
			replaced += n.replaced
			t.Logf("round %d, %s: starts %v, ends %v, %d replaced", round, side, n.starts, n.ends, n.replaced)
			n.mu.Unlock()
		}
		a.Close()
		b.Close()
		if t.Failed() {
			return
		}
	}
}

func TestSwarmNeverConnectsToItself(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	d := newDialCounter()
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", dialer: d.dial, minBackoff: time.Millisecond, maxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	self := sa.Addr().String()
	if err := sa.AddPeer(self); err != nil {
		t.Fatal(err)
	}
	swarmWait(t, ctx, sa, "the self address dialled, and shown failed", func() bool {
		n, _ := d.count(self)
		p, listed := peerAt(sa, self)
		sessions, _ := sessionCounts(sa)
		return n > 0 && listed && p.State == PeerFailed && errors.Is(p.Err, errSelf) && sessions == 0
	})
	// An honest peer syncs, entry by entry; the self address is not
	// dialled again meanwhile, not even when added again.
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	wb, _ := b.Writer("b")
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{self}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if err := sa.AddPeer(self); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		swarmAppend(t, wb, "b", 1)
		swarmWait(t, ctx, sa, "a holds b's entry", func() bool { return holds(a, wb, uint64(i+1)) })
	}
	if n, _ := d.count(self); n != 1 {
		t.Fatalf("the self address was dialled %d times, want once", n)
	}
	ps := connected(sa)
	if len(ps) != 1 || ps[0].Node != b.node.String() {
		t.Fatalf("a's peers in session: %v, want b alone", ps)
	}
}
