package kappa

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// TestProofOrderWorkedExample: the worked example of doc/PROTOCOL.md §3,
// *Proof order*: entries [3, 5) of a feed of 11 entries whose block i is
// i+1 bytes long (format 4: the byte 0x00, no context, and i bytes of value). The walk sends nodes 1, 4, 10, 13, 17 and 20, in that
// order, with these sizes; and the order is checked.
func TestProofOrderWorkedExample(t *testing.T) {
	c, _ := sharedPair(t, nil)
	w := mustWriter(t, c, "w")
	for i := range 11 {
		if _, err := w.Append(bytes.Repeat([]byte{'a' + byte(i)}, i)); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := proofIndexes(nil, 3, 5, 11), []uint64{1, 4, 10, 13, 17, 20}; !slices.Equal(got, want) {
		t.Fatalf("proofIndexes(3, 5, 11) = %v, want %v", got, want)
	}
	if got, want := fullRoots(nil, 11), []uint64{7, 17, 20}; !slices.Equal(got, want) {
		t.Fatalf("fullRoots(11) = %v, want %v", got, want)
	}
	p, err := w.Proof(3, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	type is struct{ index, size uint64 }
	var got []is
	for _, n := range p.Nodes {
		got = append(got, is{n.Index, n.Size})
	}
	want := []is{{1, 3}, {4, 3}, {10, 6}, {13, 15}, {17, 19}, {20, 11}}
	if !slices.Equal(got, want) || p.Length != 11 || p.Start != 3 || len(p.Blocks) != 2 || p.Signature == nil {
		t.Fatalf("proof of [3, 5) at 11: start %d, %d blocks, length %d, nodes (index, size) %v; want 3, 2, 11, %v",
			p.Start, len(p.Blocks), p.Length, got, want)
	}
	// The byte offsets the walk gives the nodes it determines.
	tree, err := proofTree(p, newLeafHasher(), nil)
	if err != nil {
		t.Fatal(err)
	}
	offsets := map[uint64]uint64{1: 0, 4: 3, 6: 6, 5: 3, 3: 0, 8: 10, 10: 15, 9: 10, 13: 21, 11: 10, 7: 0, 17: 36, 20: 55}
	for _, n := range tree.nodes {
		if o, ok := offsets[n.Index]; !ok || o != n.Offset {
			t.Errorf("node %d at offset %d, want %d (known %v)", n.Index, n.Offset, o, ok)
		}
	}
	if len(tree.nodes) != len(offsets) {
		t.Errorf("the walk determined %d nodes, want %d", len(tree.nodes), len(offsets))
	}
	// The order is checked: the same nodes in another order are refused.
	q := *p
	q.Nodes = slices.Clone(p.Nodes)
	q.Nodes[0], q.Nodes[1] = q.Nodes[1], q.Nodes[0]
	if _, err := proofTree(&q, newLeafHasher(), nil); !errors.Is(err, ErrBadProof) {
		t.Fatalf("nodes 4, 1, ...: %v, want ErrBadProof", err)
	}
}

// A later minor version may append fields to its hello: they are ignored
// (PROTOCOL.md §1), up to the 64-byte limit of the hello's frame.
func TestHostileLongerHelloIsAccepted(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			raw, res := startHonest(t, kind, ff.honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			hello := helloWith(t, c, true, ff.honest.SharedKey(), protoMajor, 2)
			hello[0] = 64 // the length prefix: 40 bytes of this version, 24 more
			hello = append(hello, bytes.Repeat([]byte{0xee}, 24)...)
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
			if _, err := readFrame(br, 64); err != nil {
				t.Fatal(err)
			}
			h := &hostile{t: t, raw: raw, tls: c, br: br, honest: res}
			h.endCleanly()
		})
	}
}

// A non-live side takes the feeds the peer had when they met: a feed
// announced after the peer's synced is not added (nor fetched).
func TestNonLiveIgnoresFeedsAnnouncedAfterSynced(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			late := mustWriter(t, ff.src, "late")
			appendN(t, late, 3, "late")
			before := imageOf(t, ff.honest)
			h := meetHostile(t, kind, ff.honest, nil)
			h.until(msgSynced)
			if err := h.send(syncedMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			h.until(msgDone) // the honest side has taken the synced
			if err := h.send(feedMsg(0, late.Key()), haveMsg(0, 3, span{0, 3}), doneMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			h.drain()
			if err := <-h.drained; err != nil {
				t.Fatalf("the honest side did not end with close_notify: %v", err)
			}
			h.tls.CloseWrite()
			if err := h.result(); err != nil {
				t.Fatalf("the honest side: %v, want nil", err)
			}
			if ff.honest.Feed(late.Key()) != nil {
				t.Fatal("the feed announced after synced was added")
			}
			unchanged(t, ff.honest, before)
		})
	}
}
