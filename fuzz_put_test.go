package kappa

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzFeedState is what a rejected Put must leave unchanged.
type fuzzFeedState struct {
	length uint64
	files  map[string][]byte
}

func fuzzSnapshot(f *Feed, s *MemStorage) fuzzFeedState {
	st := fuzzFeedState{length: f.Len(), files: map[string][]byte{}}
	for _, name := range s.names() {
		st.files[name], _ = s.fileBytes(name)
	}
	return st
}

// FuzzPut feeds a replica proofs built from fuzz input: a start, a length,
// blocks, nodes and a signature, seeded with real proofs of a real writer
// (and pre selecting a genuine proof the replica already took, so that
// unsigned proofs have something to meet). Only the writer signs, so:
//   - Put never panics;
//   - a Put that succeeds stored authentic data: every block it carried is
//     the writer's, is present and reads back by Get and GetBatch, and
//     every node the replica now stores is the writer's node;
//   - a Put that fails wraps ErrVerify or ErrBlockTooLarge and changes no
//     file and not the length, or finds a fork (ErrForked, with evidence)
//     only in a proof the writer's key signed;
//   - either way the replica still accepts the writer's full proof and then
//     holds the writer's feed.
func FuzzPut(f *testing.F) {
	w := getFuzzWriter(f)
	lengths := w.signed
	for li, length := range lengths {
		for pi, p := range w.proofs[length] {
			pre := uint8(0)
			if pi%3 == 1 {
				pre = uint8(1 + (li+pi)%7)
			}
			f.Add(p.Start, p.Length, fuzzEncodeBlocks(p.Blocks), fuzzEncodeNodes(p.Nodes), p.Signature, true, pre, uint64(0), uint8(0), uint8(0))
		}
	}
	// Unsigned proofs against a length the replica holds.
	for pre := uint8(1); pre <= 7; pre++ {
		pp := w.preProof(pre)
		for _, rg := range [][2]uint64{{0, 1}, {0, pp.Length}, {pp.Length - 1, pp.Length}, {1, 1}} {
			if rg[0] > rg[1] || rg[1] > pp.Length {
				continue
			}
			p, err := w.feed.Proof(rg[0], rg[1], pp.Length)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(p.Start, p.Length, fuzzEncodeBlocks(p.Blocks), fuzzEncodeNodes(p.Nodes), p.Signature, p.Signature != nil, pre, uint64(0), uint8(0), uint8(0))
		}
	}
	f.Fuzz(func(t *testing.T, start, length uint64, blocks, nodes, sig []byte, signed bool, pre uint8, shift uint64, from, to uint8) {
		p := fuzzedProof(start, length, blocks, nodes, sig, signed, shift, from, to)
		s := NewMemStorage()
		r, err := OpenFeed(s, "r/", &FeedOptions{Key: w.feed.Key(), NoSync: pre%2 == 1})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if pp := w.preProof(pre % 8); pp != nil {
			if err := r.Put(pp); err != nil {
				t.Fatalf("genuine proof: %v", err)
			}
		}
		before := fuzzSnapshot(r, s)
		putErr := r.Put(p)
		switch {
		case putErr == nil:
			checkAcceptedPut(t, w, r, p, before)
		case errors.Is(putErr, ErrForked):
			checkForkedPut(t, w, r, p, putErr)
			return // a forked feed is no longer replicated
		default:
			checkRejectedPut(t, r, s, p, before, putErr)
		}
		checkReplicaNodes(t, w, r, s, "after fuzzed put")
		checkReplicaBlocks(t, w, r, "after fuzzed put")

		// Nothing a peer sends may keep the replica from the true feed.
		full := w.proofs[w.len()][len(w.proofs[w.len()])-1]
		if err := r.Put(full); err != nil {
			t.Fatalf("genuine full proof after fuzzed put (which returned %v): %v", putErr, err)
		}
		if r.Len() != w.len() || r.Downloaded() != w.len() {
			t.Fatalf("after the full proof: length %d downloaded %d", r.Len(), r.Downloaded())
		}
		checkReplicaBlocks(t, w, r, "after full proof")
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// fuzzedProof builds FuzzPut's proof from its fuzz input: shift moves that
// many bytes from the size of node from to that of node to, and a signed
// proof carries sig (empty, not nil, if sig is nil).
func fuzzedProof(start, length uint64, blocks, nodes, sig []byte, signed bool, shift uint64, from, to uint8) *Proof {
	p := &Proof{Start: start, Length: length, Blocks: fuzzDecodeBlocks(blocks), Nodes: fuzzDecodeNodes(nodes)}
	// Hashes commit to the sum of sizes under a parent: try moving
	// bytes from one node's size to another's.
	if n := len(p.Nodes); n > 0 && shift != 0 {
		p.Nodes[int(from)%n].Size -= shift
		p.Nodes[int(to)%n].Size += shift
	}
	if signed {
		p.Signature = sig
		if p.Signature == nil {
			p.Signature = []byte{}
		}
	}
	return p
}

// checkAcceptedPut checks a fuzzed proof the replica took: every block it
// carried is the writer's and is now present, a signed proof raised the
// length to its own (if longer), and an unsigned one left it unchanged.
func checkAcceptedPut(t *testing.T, w *fuzzWriter, r *Feed, p *Proof, before fuzzFeedState) {
	t.Helper()
	for k, b := range p.Blocks {
		seq := p.Start + uint64(k)
		if seq >= w.len() || !bytes.Equal(b, w.blocks[seq]) {
			t.Fatalf("put accepted block %d %q, the writer's is %q", seq, b, w.blocks[min(seq, w.len()-1)])
		}
		if !r.Has(seq) {
			t.Fatalf("put accepted block %d but the replica lacks it", seq)
		}
	}
	if want := max(before.length, p.Length); p.Signature != nil && r.Len() != want {
		t.Fatalf("signed put of length %d: replica length %d -> %d", p.Length, before.length, r.Len())
	}
	if p.Signature == nil && r.Len() != before.length {
		t.Fatalf("unsigned put changed the length %d -> %d", before.length, r.Len())
	}
}

// checkForkedPut checks a fuzzed proof that found a fork: the replica is
// forked, the proof was signed, and the error carries evidence that
// verifies under the writer's key.
func checkForkedPut(t *testing.T, w *fuzzWriter, r *Feed, p *Proof, putErr error) {
	t.Helper()
	// Only the writer's key can sign a history: a fork needs a
	// signature of it over another history. The fuzzer finds some
	// in the seed corpus, where this deterministic key signed the
	// same values as format 3 blocks (without format 4's prefix).
	var fe *ForkError
	if !errors.As(putErr, &fe) || fe.Evidence == nil || !r.Forked() || p.Signature == nil {
		t.Fatalf("put failed with %v: a fork without a signed proof or evidence", putErr)
	}
	if err := fe.Evidence.Verify(); err != nil || !bytes.Equal(fe.Evidence.Key, w.feed.Key()) {
		t.Fatalf("put found a fork the evidence does not prove: %v (%v)", putErr, err)
	}
}

// checkRejectedPut checks a fuzzed proof the replica refused: the error
// wraps ErrVerify or ErrBlockTooLarge (or errNoLink, for a signed proof past
// a non-zero length), and neither the length nor any file changed.
func checkRejectedPut(t *testing.T, r *Feed, s *MemStorage, p *Proof, before fuzzFeedState, putErr error) {
	t.Helper()
	noLink := errors.Is(putErr, errNoLink) && p.Signature != nil && p.Length > before.length && before.length > 0
	if !errors.Is(putErr, ErrVerify) && !errors.Is(putErr, ErrBlockTooLarge) && !noLink {
		t.Fatalf("put failed with %v, want ErrVerify or ErrBlockTooLarge, or errNoLink for a signed proof past the length", putErr)
	}
	after := fuzzSnapshot(r, s)
	if after.length != before.length {
		t.Fatalf("rejected put changed the length %d -> %d", before.length, after.length)
	}
	for name, b := range before.files {
		if !bytes.Equal(after.files[name], b) {
			t.Fatalf("rejected put changed %s", name)
		}
	}
	if len(after.files) != len(before.files) {
		t.Fatalf("rejected put created files")
	}
}
