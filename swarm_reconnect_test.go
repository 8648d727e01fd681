package kappa

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of reconnection: a peer killed and restarted, and a partition
// that heals.

// swarmChild is a node in a child process (TestSwarmKilledPeerChild).
type swarmChild struct {
	cmd   *exec.Cmd
	stdin io.Closer
	feed  string // its writer's key, hex
}

// startSwarmChild runs a node on the database in dir, listening on addr,
// after appending n entries to its writer "child". It returns nil if addr
// was taken.
func startSwarmChild(t *testing.T, ctx context.Context, dir, addr string, key []byte, n int) *swarmChild {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSwarmKilledPeerChild$")
	cmd.Env = childEnv("KAPPA_SWARM_CHILD="+dir, "KAPPA_SWARM_ADDR="+addr,
		"KAPPA_SWARM_KEY="+hex.EncodeToString(key), "KAPPA_SWARM_APPEND="+strconv.Itoa(n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "up "); ok {
			go io.Copy(io.Discard, out)
			return &swarmChild{cmd: cmd, stdin: in, feed: rest}
		}
		if strings.HasPrefix(line, "listen-error ") {
			cmd.Wait()
			return nil
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Fatalf("the child ended before it was up: %s", stderr.Bytes())
	return nil
}

// kill kills the child with SIGKILL and waits for it.
func (c *swarmChild) kill() {
	c.cmd.Process.Kill()
	c.cmd.Wait()
	c.stdin.Close()
}

// TestSwarmKilledPeerChild is the child of
// TestSwarmReconnectsToAPeerKilledAndRestarted: it appends, listens,
// prints "up KEY" (its writer's key) and runs until its stdin ends or it
// is killed.
func TestSwarmKilledPeerChild(t *testing.T) {
	dir := os.Getenv("KAPPA_SWARM_CHILD")
	if dir == "" {
		t.Skip("run by TestSwarmReconnectsToAPeerKilledAndRestarted")
	}
	key, err := hex.DecodeString(os.Getenv("KAPPA_SWARM_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(os.Getenv("KAPPA_SWARM_APPEND"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, &Options{SharedKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Writer("child")
	if err != nil {
		t.Fatal(err)
	}
	swarmAppend(t, w, "child", n)
	sw, err := c.Swarm(&SwarmOptions{Listen: os.Getenv("KAPPA_SWARM_ADDR")})
	if err != nil {
		fmt.Println("listen-error", err)
		return
	}
	defer sw.Close()
	fmt.Println("up", hex.EncodeToString(w.Key()))
	io.Copy(io.Discard, os.Stdin)
}

// startSwarmChildOn starts a child as startSwarmChild does, on addr or, if
// that is taken meanwhile, on another free address (ten tries), and returns
// it with the address it listens on.
func startSwarmChildOn(t *testing.T, ctx context.Context, dir, addr string, key []byte, n int) (*swarmChild, string) {
	t.Helper()
	for range 10 {
		if c := startSwarmChild(t, ctx, dir, addr, key, n); c != nil {
			return c, addr
		}
		addr = freeAddr(t) // taken meanwhile: another
	}
	t.Fatal("no free port for the child in 10 tries")
	return nil, ""
}

// dialGate holds dials back while it is shut: its route waits until the
// channel stored in it is closed (or the dial's context ends).
type dialGate struct {
	hold atomic.Pointer[chan struct{}]
}

// route is a dialCounter route that waits while g is shut.
func (g *dialGate) route(ctx context.Context, to string) (string, error) {
	if c := g.hold.Load(); c != nil {
		select {
		case <-*c:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return to, nil
}

// peerEvents records what a Swarm's OnPeer is told, without a lock.
type peerEvents struct {
	evs atomic.Pointer[[]PeerStatus]
}

// newPeerEvents returns an empty record.
func newPeerEvents() *peerEvents {
	e := new(peerEvents)
	e.evs.Store(&[]PeerStatus{})
	return e
}

// onPeer is an OnPeer that records p.
func (e *peerEvents) onPeer(p PeerStatus) {
	for {
		old := e.evs.Load()
		evs := append(append([]PeerStatus(nil), *old...), p)
		if e.evs.CompareAndSwap(old, &evs) {
			return
		}
	}
}

// last returns the newest event recorded.
func (e *peerEvents) last() PeerStatus {
	evs := *e.evs.Load()
	return evs[len(evs)-1]
}

// targetBackoff returns the backoff sw holds for its target addr.
func targetBackoff(sw *Swarm, addr string) time.Duration {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.targets[addr].backoff
}

// inSessionWith reports whether sw is in a session with the peer at addr.
func inSessionWith(sw *Swarm, addr string) bool {
	p, _ := peerAt(sw, addr)
	return p.State == PeerSyncing || p.State == PeerSynced
}

// sessionWasLive reports whether sw's latest session with its target addr
// finished its first exchange (both sides said done).
func sessionWasLive(sw *Swarm, addr string) bool {
	sw.mu.Lock()
	ss := sw.targets[addr].last
	sw.mu.Unlock()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.wasLive
}

// requireChildHolds opens the (killed) child's database in dir and fails
// the test unless it holds n entries of w.
func requireChildHolds(t *testing.T, dir string, key []byte, w *Feed, n uint64) {
	t.Helper()
	c, err := Open(dir, &Options{SharedKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if !holds(c, w, n) {
		c.Close()
		t.Fatal("the child lacks a's entries appended while it was down")
	}
	c.Close()
}

func TestSwarmReconnectsToAPeerKilledAndRestarted(t *testing.T) {
	ctx := swarmCtx(t)
	dir := filepath.Join(t.TempDir(), "db")
	a := newCore(t, nil)
	wa, _ := a.Writer("a")
	swarmAppend(t, wa, "a", 5)
	child, addr := startSwarmChildOn(t, ctx, dir, freeAddr(t), a.SharedKey(), 5)
	defer func() { child.kill() }()
	d := newDialCounter()
	// Dials of addr wait while the gate is shut (see the backoff reset
	// below).
	var gate dialGate
	d.route = gate.route
	const minB, maxB = 50 * time.Millisecond, 10 * time.Second
	events := newPeerEvents()
	sa, err := a.Swarm(&SwarmOptions{Peers: []string{addr}, dialer: d.dial, minBackoff: minB, maxBackoff: maxB, OnPeer: events.onPeer})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	swarmWait(t, ctx, sa, "a session with the child", func() bool { return inSessionWith(sa, addr) })
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	cf := a.FeedHex(child.feed)
	if cf == nil || !holds(a, cf, 5) {
		t.Fatal("a lacks the child's entries")
	}

	// kill -9: Peers shows the failure, and the dials back off.
	child.kill()
	dials, _ := d.count(addr)
	var p PeerStatus
	swarmWait(t, ctx, sa, "the child's address dialled in vain 3 times", func() bool {
		n, _ := d.count(addr)
		p, _ = peerAt(sa, addr)
		return n >= dials+3 && p.State != PeerConnecting
	})
	if p.State != PeerBackingOff || p.Err == nil || p.Retry.IsZero() {
		t.Fatalf("a's status of the killed child: %v, want backing off with an error", p)
	}
	if b := targetBackoff(sa, addr); b < 4*minB || b > maxB {
		t.Fatalf("backoff %v after 3 failed dials, want between %v and %v", b, 4*minB, maxB)
	}
	t.Log(p)
	// OnPeer was told the session ended: the connection went without a
	// goodbye.
	if e := events.last(); e.State != PeerBackingOff || !errors.Is(e.Err, ErrPeerClosed) || e.EntriesIn != 5 {
		t.Fatalf("OnPeer's last event %v, want backing off with ErrPeerClosed after 5 entries in", e)
	}
	swarmAppend(t, wa, "a", 5)

	// Restarted on the same address (or another if it was taken; then a
	// dials that one), the child appends 3 more; both get everything.
	again, addr2 := startSwarmChildOn(t, ctx, dir, addr, a.SharedKey(), 3)
	child = again
	if addr2 != addr {
		t.Logf("address %s taken meanwhile: the child listens on %s", addr, addr2)
		if err := sa.AddPeer(addr2); err != nil {
			t.Fatal(err)
		}
		addr = addr2
	}
	up, _ := d.count(addr)
	bound := targetBackoff(sa, addr)
	swarmWait(t, ctx, sa, "a session with the restarted child", func() bool { return inSessionWith(sa, addr) })
	if n, _ := d.count(addr); n > up+1 {
		t.Fatalf("%d dials after the child was up, want at most one (the backoff was %v)", n-up, bound)
	}
	if bound > maxB {
		t.Fatalf("backoff %v past the bound %v", bound, maxB)
	}
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if !holds(a, cf, 8) {
		t.Fatal("a lacks the child's entries appended after its restart")
	}
	// The first exchange is over (both sides said done): the session ran
	// cleanly.
	swarmWait(t, ctx, sa, "the session with the restarted child live", func() bool { return sessionWasLive(sa, addr) })
	// Dials wait from now on (see the backoff reset below).
	shut := make(chan struct{})
	gate.hold.Store(&shut)
	defer close(shut)
	dials, _ = d.count(addr)
	// a's entries reached the child: its database holds them once killed.
	child.kill()
	requireChildHolds(t, dir, a.SharedKey(), wa, 10)

	// The session ran cleanly: the backoff starts again from the least.
	swarmWait(t, ctx, sa, "a dials the killed child again", func() bool {
		n, _ := d.count(addr)
		return n > dials
	})
	if b := targetBackoff(sa, addr); b != minB {
		t.Fatalf("backoff %v after a clean session, want %v", b, minB)
	}
}

// feedsIdentical reports whether each of cores holds the writers' feeds and
// no other, each whole at its writer's length with its writer's signature.
func feedsIdentical(cores []*Core, writers []*Feed) bool {
	for _, c := range cores {
		if len(c.Feeds()) != len(writers) {
			return false
		}
		for _, w := range writers {
			wl, wsig := w.Signature()
			f := c.Feed(w.Key())
			if f == nil || !f.HasRange(0, wl) {
				return false
			}
			if l, sig := f.Signature(); l != wl || !bytes.Equal(sig, wsig) {
				return false
			}
		}
	}
	return true
}

func TestSwarmRingConvergesAfterAPartitionHeals(t *testing.T) {
	const n = 8
	ctx := swarmCtx(t)
	key := newCore(t, nil).SharedKey()
	var cores [n]*Core
	var writers [n]*Feed
	var sws [n]*Swarm
	var cut [n]atomic.Bool // the link from node i to i+1 is cut
	var dialers [n]*dialCounter
	for i := range n {
		cores[i] = newCore(t, &Options{SharedKey: key})
		writers[i], _ = cores[i].Writer("w")
		swarmAppend(t, writers[i], fmt.Sprint(i), 1)
		d := newDialCounter()
		d.route = func(ctx context.Context, addr string) (string, error) {
			if cut[i].Load() {
				return "", errors.New("the link is cut")
			}
			return addr, nil
		}
		dialers[i] = d
		sw, err := cores[i].Swarm(&SwarmOptions{Listen: "127.0.0.1:0", dialer: d.dial,
			minBackoff: 10 * time.Millisecond, maxBackoff: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		sws[i] = sw
		defer sw.Close()
	}
	for i := range n {
		if err := sws[i].AddPeer(sws[(i+1)%n].Addr().String()); err != nil {
			t.Fatal(err)
		}
	}
	// has reports whether node i holds writer w's feed as it is, or at
	// least m entries of it.
	has := func(i, w int, m uint64) bool {
		f := cores[i].Feed(writers[w].Key())
		if f == nil || f.Len() < m || !f.HasRange(0, m) {
			return false
		}
		return true
	}
	identical := func() bool { return feedsIdentical(cores[:], writers[:]) }
	swarmWait(t, ctx, nil, "the ring converged", identical)

	// Cut 1→2 and 5→6: {2,3,4,5} and {6,7,0,1} are apart.
	for _, i := range []int{1, 5} {
		cut[i].Store(true)
		dialers[i].closeAll()
	}
	swarmWait(t, ctx, nil, "the cut sessions ended", func() bool {
		for _, i := range []int{1, 2, 5, 6} {
			if _, running := sessionCounts(sws[i]); running != 1 {
				return false
			}
		}
		return true
	})
	sideA, sideB := []int{2, 3, 4, 5}, []int{6, 7, 0, 1}
	swarmAppend(t, writers[3], "3", 3)
	swarmAppend(t, writers[7], "7", 3)
	swarmWait(t, ctx, nil, "each side holds its side's entries", func() bool {
		for _, i := range sideA {
			if !has(i, 3, 4) {
				return false
			}
		}
		for _, i := range sideB {
			if !has(i, 7, 4) {
				return false
			}
		}
		return true
	})
	for _, i := range sideA {
		if has(i, 7, 2) {
			t.Fatalf("node %d holds entries of the other side of the cut", i)
		}
	}
	for _, i := range sideB {
		if has(i, 3, 2) {
			t.Fatalf("node %d holds entries of the other side of the cut", i)
		}
	}
	if p, _ := peerAt(sws[1], sws[2].Addr().String()); p.State != PeerBackingOff || p.Err == nil {
		t.Fatalf("node 1's status of node 2 across the cut: %v, want backing off with an error", p)
	}

	// Heal: all eight converge to identical feeds.
	for _, i := range []int{1, 5} {
		cut[i].Store(false)
	}
	swarmWait(t, ctx, nil, "the ring converged after healing", identical)
}
