package kappa

import (
	"crypto/rand"
	"errors"
	"net"
	"testing"
	"time"
)

// Tests of the swarm against peers that misbehave: it goes on serving
// honest peers, and never dials a refusing one in a tight loop.

func TestSwarmServesHonestPeersWhileAnAuthenticatedPeerStalls(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	wa, _ := a.Writer("a")
	swarmAppend(t, wa, "a", 5)
	var ends sessionEnds
	// Every node pings often enough for the short timeout.
	rep := &ReplicateOptions{Timeout: 5 * time.Second, KeepAlive: 500 * time.Millisecond}
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", Replicate: rep, onSessionEnd: ends.record})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	addr := sa.Addr().String()

	// The staller: TLS and a valid hello with a node id, then nothing;
	// it never reads either.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c, _ := tlsOnly(t, raw, true)
	cs := c.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	var node nodeID
	rand.Read(node[:])
	if _, err := c.Write(frames(helloMsg(helloMAC(a.SharedKey(), ekm, true), node))); err != nil {
		t.Fatal(err)
	}
	stallAddr := raw.LocalAddr().String()
	swarmWait(t, ctx, sa, "the staller in session", func() bool {
		p, ok := peerAt(sa, stallAddr)
		return ok && p.Node == node.String()
	})

	// An honest peer syncs both ways meanwhile.
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	wb, _ := b.Writer("b")
	swarmAppend(t, wb, "b", 5)
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{addr}, Replicate: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	swarmWait(t, ctx, sb, "b in session", func() bool { return len(connected(sb)) == 1 })
	if err := sb.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	swarmWait(t, ctx, sa, "a holds b's entries", func() bool { return holds(a, wb, 5) })
	if !holds(b, wa, 5) {
		t.Fatal("b lacks a's entries")
	}
	_, stallEnded := ends.get(stallAddr)
	if stallEnded {
		t.Fatal("the staller's session ended before the honest peer synced: the test proves nothing (a very slow machine?)")
	}
	// The staller's session ends by the timeout; b's goes on.
	var stallErr error
	swarmWait(t, ctx, sa, "the staller's session ended", func() bool {
		var ok bool
		stallErr, ok = ends.get(stallAddr)
		return ok
	})
	if !errors.Is(stallErr, ErrTimeout) {
		t.Fatalf("the staller's session ended with %v, want ErrTimeout", stallErr)
	}
	swarmAppend(t, wa, "a", 1)
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if !holds(b, wa, 6) {
		t.Fatal("b lacks a's last entry")
	}
}

func TestSwarmDoesNotRedialAPeerWithAnotherKeyInATightLoop(t *testing.T) {
	ctx := swarmCtx(t)
	// a and b share a key; c and e another. c has a as a static peer.
	a := newCore(t, nil)
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	c := newCore(t, nil)
	e := newCore(t, &Options{SharedKey: c.SharedKey()})
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	se, err := e.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer se.Close()
	aAddr := sa.Addr().String()
	d := newDialCounter()
	// Backoffs of a millisecond: only the refusal's keeps c from a
	// tight loop.
	sc, err := c.Swarm(&SwarmOptions{Peers: []string{aAddr, se.Addr().String()}, dialer: d.dial,
		minBackoff: time.Millisecond, maxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{aAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	var p PeerStatus
	swarmWait(t, ctx, sc, "a failed for c", func() bool {
		p, _ = peerAt(sc, aAddr)
		return p.State == PeerFailed
	})
	if !errors.Is(p.Err, ErrUnauthorized) {
		t.Fatalf("c's status of a: %v, want ErrUnauthorized", p)
	}
	if d := p.Retry.Sub(p.Since); d < defaultRefusedMin/2 {
		t.Fatalf("c dials a again after %v, want at least %v", d, defaultRefusedMin/2)
	}
	// Honest sessions on both sides make progress, entry by entry; c
	// does not dial a again meanwhile.
	we, _ := e.Writer("e")
	wb, _ := b.Writer("b")
	swarmWait(t, ctx, sb, "b in session", func() bool { return len(connected(sb)) == 1 })
	for i := range 20 {
		swarmAppend(t, we, "e", 1)
		swarmAppend(t, wb, "b", 1)
		swarmWait(t, ctx, sc, "c holds e's entry", func() bool { return holds(c, we, uint64(i+1)) })
		swarmWait(t, ctx, sa, "a holds b's entry", func() bool { return holds(a, wb, uint64(i+1)) })
	}
	if n, _ := d.count(aAddr); n != 1 {
		t.Fatalf("c dialled a %d times, want once", n)
	}
	if c.Feed(wb.Key()) != nil || a.Feed(we.Key()) != nil {
		t.Fatal("a feed crossed between databases of different keys")
	}
	// AddPeer cuts the wait short: a is dialled again, and refused again,
	// for twice as long.
	if err := sc.AddPeer(aAddr); err != nil {
		t.Fatal(err)
	}
	swarmWait(t, ctx, sc, "a refused c again", func() bool {
		n, _ := d.count(aAddr)
		p, _ = peerAt(sc, aAddr)
		return n == 2 && p.State == PeerFailed && p.Retry.Sub(p.Since) >= defaultRefusedMin
	})
}
