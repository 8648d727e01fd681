package kappa

import (
	"errors"
	"maps"
	"testing"
)

// linkFeeds returns a writer with n entries, and a replica of it at length
// at (at < n) that holds entries [0, at): the replica got them before the
// writer appended the rest.
func linkFeeds(t *testing.T, kp KeyPair, at, n int) (w, r *Feed, rs *MemStorage) {
	t.Helper()
	w, err := OpenFeed(NewMemStorage(), "w/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	appendN(t, w, at, "a")
	rs = NewMemStorage()
	r = newFeed(t, rs, &FeedOptions{Key: kp.PublicKey})
	mustPut(t, r, w, 0, uint64(at))
	appendN(t, w, n-at, "a")
	return w, r, rs
}

func mustProof(t *testing.T, f *Feed, start, end uint64) *Proof {
	t.Helper()
	p, err := f.Proof(start, end, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustPut(t *testing.T, r, w *Feed, start, end uint64) {
	t.Helper()
	if err := r.Put(mustProof(t, w, start, end)); err != nil {
		t.Fatalf("put [%d, %d): %v", start, end, err)
	}
}

// checkNoLink checks that r refuses p as a proof that does not reach its
// roots, and stores nothing of it.
func checkNoLink(t *testing.T, r *Feed, rs *MemStorage, p *Proof) {
	t.Helper()
	before := fuzzSnapshot(r, rs)
	err := r.Put(p)
	if !errors.Is(err, errNoLink) || errors.Is(err, ErrVerify) || errors.Is(err, ErrForked) {
		t.Fatalf("put of [%d, %d) at %d on a replica at %d: %v, want errNoLink alone", p.Start, p.Start+uint64(len(p.Blocks)), p.Length, before.length, err)
	}
	after := fuzzSnapshot(r, rs)
	if after.length != before.length || !maps.EqualFunc(after.files, before.files, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Fatalf("a refused put changed the replica (length %d -> %d)", before.length, after.length)
	}
	if r.Forked() {
		t.Fatal("a proof that reaches none of the replica's nodes marked it forked")
	}
}

// A signed proof of a later range (its left nodes straddle the replica's
// length) determines none of the replica's roots: it is refused, with
// nothing stored, until the proof of the first entries past the length
// raised it; then it is accepted.
func TestPutRefusesASignedProofThatDoesNotReachTheRootsHeld(t *testing.T) {
	w, r, rs := linkFeeds(t, mustKeyPair(t), 100, 3000)
	later := mustProof(t, w, 1124, 2148)
	checkNoLink(t, r, rs, later)
	if r.Len() != 100 || r.HasRange(1124, 2148) {
		t.Fatalf("length %d", r.Len())
	}
	mustPut(t, r, w, 100, 1124) // its left nodes are the roots of 100
	if r.Len() != 3000 {
		t.Fatalf("length %d after the first chunk", r.Len())
	}
	if err := r.Put(later); err != nil {
		t.Fatalf("the later chunk once the length was raised: %v", err)
	}
	mustPut(t, r, w, 2148, 3000)
	for _, i := range []uint64{0, 99, 100, 1123, 1124, 2147, 2999} {
		want, _ := w.Get(ctxT(t), i)
		got, err := r.Get(ctxT(t), i)
		if err != nil || string(got) != string(want) {
			t.Fatalf("entry %d: %q, %v; want %q", i, got, err, want)
		}
	}
}

// A proof that determines every root of the replica's length raises it,
// wherever its blocks are: the proof of an entry in the last root of the
// length computes that root and takes the others as its left nodes.
func TestPutAcceptsASignedProofThatReachesTheRootsHeld(t *testing.T) {
	w, r, _ := linkFeeds(t, mustKeyPair(t), 100, 3000)
	mustPut(t, r, w, 97, 98) // 100 = 64 + 32 + 4: the last root is [96, 100)
	if r.Len() != 3000 {
		t.Fatalf("length %d", r.Len())
	}
}

// A fork (the same key, other entries past the replica's length): the
// proof of a later range reaches none of the replica's nodes, so it is
// refused as unlinked, stores nothing and shows no fork; the proof of the
// first entries past the length determines the replica's roots, which it
// contradicts: a fork, with evidence, and the replica stays at its length.
func TestPutOfAForksLaterRangeNeverMixesTheHistories(t *testing.T) {
	kp := mustKeyPair(t)
	a, r, rs := linkFeeds(t, kp, 100, 100)
	b := newFeed(t, NewMemStorage(), &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
	appendN(t, b, 3000, "b")
	checkNoLink(t, r, rs, mustProof(t, b, 1124, 2148))
	checkNoLink(t, r, rs, mustProof(t, b, 2148, 3000))
	if err := r.Put(mustProof(t, b, 100, 1124)); !errors.Is(err, ErrForked) {
		t.Fatalf("the first chunk of the fork: %v, want ErrForked", err)
	}
	if !r.Forked() || r.Len() != 100 {
		t.Fatalf("forked %v, length %d", r.Forked(), r.Len())
	}
	if err := r.Fork().Verify(); err != nil {
		t.Fatal(err)
	}
	// What the replica proves is still a's history.
	fresh := newFeed(t, NewMemStorage(), &FeedOptions{Key: kp.PublicKey})
	if err := fresh.Put(mustProof(t, r, 0, 100)); err != nil {
		t.Fatal(err)
	}
	for _, i := range []uint64{0, 99} {
		want, _ := a.Get(ctxT(t), i)
		got, err := fresh.Get(ctxT(t), i)
		if err != nil || string(got) != string(want) {
			t.Fatalf("entry %d: %q, %v; want %q", i, got, err, want)
		}
	}
}
