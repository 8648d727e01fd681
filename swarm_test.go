package kappa

import (
	"context"
	"testing"
	"time"
)

// swarmCtx is a context for swarm tests: generous, only there to turn a
// hang into a failure.
func swarmCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSwarmStaticPeersSync(t *testing.T) {
	ctx := swarmCtx(t)
	a := newCore(t, nil)
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	wa, _ := a.Writer("a")
	wb, _ := b.Writer("b")
	wa.Append([]byte("from a"))
	wb.Append([]byte("from b"))
	sa, err := a.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := b.Swarm(&SwarmOptions{Peers: []string{sa.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	for len(connected(sb)) == 0 {
		select {
		case <-sb.changes():
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	if err := sb.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if f := b.Feed(wa.Key()); f == nil || f.Len() != 1 {
		t.Fatalf("b lacks a's entry")
	}
	if err := sa.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	if f := a.Feed(wb.Key()); f == nil || f.Len() != 1 {
		t.Fatalf("a lacks b's entry")
	}
	t.Log(sb.Peers())
	t.Log(sa.Peers())
}

// connected returns the peers of sw in session.
func connected(sw *Swarm) []PeerStatus {
	var out []PeerStatus
	for _, p := range sw.Peers() {
		if p.State == PeerSyncing || p.State == PeerSynced {
			out = append(out, p)
		}
	}
	return out
}
