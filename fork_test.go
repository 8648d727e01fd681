package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// forks returns the reported errors that match ErrForked.
func (l *errorLog) forks() []error {
	var out []error
	for _, err := range l.all() {
		if errors.Is(err, ErrForked) {
			out = append(out, err)
		}
	}
	return out
}

// forkWorld is two writers A and B that use one key pair for feed "x",
// each with an unrelated feed of its own, and replicas C (of A) and D (of
// B). C lives in a MemStorage so that it can be opened again.
type forkWorld struct {
	kp         KeyPair
	a, b, c, d *Core
	cStore     *MemStorage
	cOpts      Options
	cLog       *errorLog
	xa, xb     *Feed // the two histories of x
	ua, ub     *Feed // the unrelated feeds
}

func newForkWorld(t *testing.T, na, nb int) *forkWorld {
	t.Helper()
	w := &forkWorld{kp: mustKeyPair(t), cStore: NewMemStorage(), cLog: &errorLog{}}
	w.a = newCore(t, nil)
	key := w.a.SharedKey()
	w.b = newCore(t, &Options{SharedKey: key})
	w.d = newCore(t, &Options{SharedKey: key})
	w.cOpts = Options{SharedKey: key, OnError: w.cLog.add}
	w.c = w.openC(t)
	var err error
	if w.xa, err = w.a.WriterWithKeyPair("x", w.kp); err != nil {
		t.Fatal(err)
	}
	if w.xb, err = w.b.WriterWithKeyPair("x", w.kp); err != nil {
		t.Fatal(err)
	}
	appendN(t, w.xa, na, "a")
	appendN(t, w.xb, nb, "b")
	w.ua, w.ub = mustWriter(t, w.a, "ua"), mustWriter(t, w.b, "ub")
	appendN(t, w.ua, 4, "ua")
	appendN(t, w.ub, 2, "ub")
	return w
}

// openC opens C from its storage.
func (w *forkWorld) openC(t *testing.T) *Core {
	t.Helper()
	c, err := New(w.cStore, &w.cOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkForked checks that c's feed key is forked, with evidence that
// verifies, listed by Damaged, and that it still reads its own history.
func checkForked(t *testing.T, c *Core, history *Feed) {
	t.Helper()
	f := c.Feed(history.Key())
	if f == nil || !f.Forked() {
		t.Fatalf("feed %x is not marked forked", history.Key()[:4])
	}
	ev := f.Fork()
	if err := ev.Verify(); err != nil {
		t.Fatalf("the evidence does not verify: %v", err)
	}
	if !bytes.Equal(ev.Key, history.Key()) {
		t.Fatalf("evidence for key %x", ev.Key[:4])
	}
	if len(ev.Local.Blocks) != 1 || len(ev.Peer.Blocks) != 1 {
		t.Fatalf("evidence of %d and %d blocks, want one each", len(ev.Local.Blocks), len(ev.Peer.Blocks))
	}
	var listed []Damage
	for _, d := range c.Damaged() {
		if errors.Is(d.Err, ErrForked) {
			listed = append(listed, d)
		}
	}
	if len(listed) != 1 || !bytes.Equal(listed[0].Key, history.Key()) {
		t.Fatalf("Damaged lists %v, want the fork of %x", c.Damaged(), history.Key()[:4])
	}
	var fe *ForkError
	if !errors.As(listed[0].Err, &fe) || fe.Evidence == nil {
		t.Fatalf("damage %v carries no evidence", listed[0])
	}
	if f.Len() != history.Len() {
		t.Fatalf("forked feed has length %d, want %d", f.Len(), history.Len())
	}
	got, err := f.GetBatch(context.Background(), 0, f.Len())
	if err != nil {
		t.Fatal(err)
	}
	want, err := history.GetBatch(context.Background(), 0, history.Len())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("forked feed reads %q, want its own history %q", got, want)
	}
}

// offered replicates c with d and returns the keys c offered to d, and how
// many of d's feeds c took.
func offered(t *testing.T, kind string, c, d *Core) (keys [][]byte, took int) {
	t.Helper()
	accept := func(key []byte) bool {
		keys = append(keys, bytes.Clone(key))
		return true
	}
	progress := func(p ReplicateProgress) { took = p.Feeds }
	ec, ed := replicatePair(t, kind, c, d, &ReplicateOptions{Progress: progress}, &ReplicateOptions{Accept: accept})
	if ec != nil || ed != nil {
		t.Fatalf("replicate: %v / %v", ec, ed)
	}
	return keys, took
}

func hasKey(keys [][]byte, key []byte) bool {
	return slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) })
}

// Two databases wrote different entries with one key pair; C holds one
// history, D the other. Their sessions end without error, the unrelated
// feeds go both ways in every session, C (which asked D for entries past
// its own length) finds the fork, keeps its evidence across a reopen,
// reports it once, and no longer exchanges the feed.
func TestForkIsolatesOneFeedAndTheSessionGoesOn(t *testing.T) {
	w := newForkWorld(t, 3, 5)
	mustReplicate(t, "pipe", w.a, w.c)
	mustReplicate(t, "pipe", w.b, w.d)

	for i, kind := range []string{"pipe", "tcp", "pipe"} {
		if i == 2 {
			// Reopened, C still knows the fork from its evidence file.
			if err := w.c.Close(); err != nil {
				t.Fatal(err)
			}
			w.cLog = &errorLog{}
			w.cOpts.OnError = w.cLog.add
			w.c = w.openC(t)
			checkForked(t, w.c, w.xa)
			if n := len(w.cLog.forks()); n != 1 {
				t.Fatalf("reopened: %d forks reported, want 1", n)
			}
		}
		keys, took := offered(t, kind, w.c, w.d)
		for _, dst := range []*Core{w.c, w.d} {
			sameFeed(t, w.ua, dst)
			sameFeed(t, w.ub, dst)
		}
		sameFeed(t, w.xb, w.d) // D's own history of x is untouched
		checkForked(t, w.c, w.xa)
		if d := w.d.Feed(w.kp.PublicKey); d.Forked() || d.Len() != 5 {
			t.Fatalf("D's x: forked %v, length %d", d.Forked(), d.Len())
		}
		if i == 0 {
			if n := len(w.cLog.forks()); n != 1 {
				t.Fatalf("%d forks reported to OnError, want 1", n)
			}
		} else {
			if hasKey(keys, w.kp.PublicKey) {
				t.Fatalf("session %d: C offered its forked feed", i)
			}
			if took != 2 {
				t.Fatalf("session %d: C took %d of D's feeds, want 2 (declining x)", i, took)
			}
		}
		// The unrelated feeds grow between sessions.
		appendN(t, w.ua, 2, fmt.Sprintf("ua%d-", i))
		appendN(t, w.ub, 3, fmt.Sprintf("ub%d-", i))
		mustReplicate(t, "pipe", w.a, w.c)
		mustReplicate(t, "pipe", w.b, w.d)
	}
	if n := len(w.cLog.forks()); n != 1 {
		t.Fatalf("%d forks reported after more sessions, want 1", n)
	}
}

// sameFeed checks that dst holds every entry of src.
func sameFeed(t *testing.T, src *Feed, dst *Core) {
	t.Helper()
	g := dst.Feed(src.Key())
	if g == nil {
		t.Fatalf("feed %x missing", src.Key()[:4])
	}
	if g.Len() != src.Len() || g.Downloaded() != src.Len() {
		t.Fatalf("feed %x: length %d, held %d; want %d", src.Key()[:4], g.Len(), g.Downloaded(), src.Len())
	}
	want, err := src.GetBatch(context.Background(), 0, src.Len())
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.GetBatch(context.Background(), 0, g.Len())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("feed %x reads %q, want %q", src.Key()[:4], got, want)
	}
}

// C holds entry 0 of A's x and A's signature at length 4; D holds B's x of
// length 4. C asks D for [1, 4) saying it holds length 4, so D answers
// with a proof without signature, which cannot meet C's tree. C asks again
// with known = 0, gets a signed proof, and keeps it as evidence: the
// session ends without error.
func TestForkFoundThroughAnUnsignedProof(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			w := newForkWorld(t, 4, 4)
			mustReplicate(t, "pipe", w.b, w.d)
			x, err := w.c.AddFeed(w.kp.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			p, err := w.xa.Proof(0, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := x.Put(p); err != nil {
				t.Fatal(err)
			}
			if x.Len() != 4 || x.Downloaded() != 1 {
				t.Fatalf("C's x: length %d, held %d", x.Len(), x.Downloaded())
			}
			// The answer D gives to what C will ask is unsigned.
			if q, err := w.d.Feed(w.kp.PublicKey).Proof(1, 4, 4); err != nil || q.Signature != nil {
				t.Fatalf("D's proof of [1, 4) knowing 4: %v, signed %v", err, q != nil && q.Signature != nil)
			}
			mustReplicate(t, kind, w.c, w.d)
			if !x.Forked() {
				t.Fatal("C's x is not marked forked")
			}
			if err := x.Fork().Verify(); err != nil {
				t.Fatal(err)
			}
			if x.Len() != 4 || x.Downloaded() != 1 {
				t.Fatalf("C's x changed: length %d, held %d", x.Len(), x.Downloaded())
			}
			sameFeed(t, w.ub, w.c)
			if n := len(w.cLog.forks()); n != 1 {
				t.Fatalf("%d forks reported, want 1", n)
			}
		})
	}
}

// A peer that writes x itself, with another history than the one C holds,
// sends C proofs of it: only x is affected. C finds the fork; the peer's
// other feed reaches C and C's reaches the peer; a second session does not
// exchange x.
func TestForkSentByItsWriterAffectsOnlyThatFeed(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			w := newForkWorld(t, 3, 7)
			mustReplicate(t, "pipe", w.a, w.c)
			mustReplicate(t, kind, w.c, w.b)
			checkForked(t, w.c, w.xa)
			sameFeed(t, w.ub, w.c)
			sameFeed(t, w.ua, w.b)
			sameFeed(t, w.xb, w.b)
			appendN(t, w.xb, 2, "more")
			appendN(t, w.ub, 2, "more")
			mustReplicate(t, kind, w.b, w.c)
			checkForked(t, w.c, w.xa)
			sameFeed(t, w.ub, w.c)
			if n := len(w.cLog.forks()); n != 1 {
				t.Fatalf("%d forks reported, want 1", n)
			}
		})
	}
}

// A Put of a signed proof that contradicts the stored tree returns a
// *ForkError with evidence, stores nothing of the proof, and every later
// Put is refused with ErrForked. A feed opened alone (no Core) works too.
func TestPutOfAForkReturnsEvidenceAndStoresNothing(t *testing.T) {
	kp := mustKeyPair(t)
	a, b := NewMemStorage(), NewMemStorage()
	wa, err := OpenFeed(a, "x/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	wb, err := OpenFeed(b, "x/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, wa, 5, "a")
	appendN(t, wb, 9, "b")
	s := NewMemStorage()
	r, err := OpenFeed(s, "r/", &FeedOptions{Key: kp.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	p, err := wa.Proof(0, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	q, err := wb.Proof(5, 9, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Put(q)
	var fe *ForkError
	if !errors.Is(err, ErrForked) || !errors.As(err, &fe) || fe.Evidence == nil {
		t.Fatalf("put of the other history: %v, want a *ForkError with evidence", err)
	}
	if errors.Is(err, ErrVerify) {
		t.Fatalf("a proven fork matches ErrVerify: %v", err)
	}
	if err := fe.Evidence.Verify(); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 5 || r.Downloaded() != 5 || !r.Forked() {
		t.Fatalf("after the fork: length %d, held %d, forked %v", r.Len(), r.Downloaded(), r.Forked())
	}
	// Even a proof of its own history is refused now.
	if err := r.Put(p); !errors.Is(err, ErrForked) {
		t.Fatalf("put after the fork: %v, want ErrForked", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = OpenFeed(s, "r/", &FeedOptions{Key: kp.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Forked() || r.Fork().Verify() != nil || r.Fork().Node != fe.Evidence.Node {
		t.Fatalf("reopened: forked %v", r.Forked())
	}
}

// A fork file that was damaged is reported (Damaged, OnError) and not
// trusted: the feed is not marked forked, and the next session that shows
// the fork writes the evidence again.
func TestDamagedForkEvidenceIsReportedNotTrusted(t *testing.T) {
	damage := []struct {
		name string
		f    func(b []byte) []byte
	}{
		{"a byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }},
		{"cut short", func(b []byte) []byte { return b[:len(b)-5] }},
		{"header of another file", func(b []byte) []byte { copy(b, magicTree[:]); return b }},
		{"evidence that does not prove a fork", func(b []byte) []byte {
			node, local, _, err := decodeForkFile(b)
			if err != nil {
				panic(err)
			}
			return encodeForkFile(node, local, local)
		}},
	}
	for _, tc := range damage {
		t.Run(tc.name, func(t *testing.T) {
			w := newForkWorld(t, 3, 5)
			mustReplicate(t, "pipe", w.a, w.c)
			mustReplicate(t, "pipe", w.b, w.d)
			mustReplicate(t, "pipe", w.c, w.d)
			checkForked(t, w.c, w.xa)
			name := feedPrefix(feedSlot(w.c.Feed(w.kp.PublicKey))) + fileFork
			if err := w.c.Close(); err != nil {
				t.Fatal(err)
			}
			file, err := w.cStore.Open(name, false)
			if err != nil {
				t.Fatal(err)
			}
			size, err := file.Size()
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, size)
			if _, err := file.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			b = tc.f(b)
			if err := file.Truncate(0); err != nil {
				t.Fatal(err)
			}
			if _, err := file.WriteAt(b, 0); err != nil {
				t.Fatal(err)
			}
			file.Close()

			w.cLog = &errorLog{}
			w.cOpts.OnError = w.cLog.add
			w.c = w.openC(t)
			x := w.c.Feed(w.kp.PublicKey)
			if x.Forked() {
				t.Fatal("a damaged fork file was trusted")
			}
			var found bool
			for _, d := range w.c.Damaged() {
				var ce *CorruptError
				if errors.As(d.Err, &ce) && ce.File == name && bytes.Equal(d.Key, w.kp.PublicKey) {
					found = true
				}
			}
			if !found {
				t.Fatalf("Damaged lists %v, want the damaged %s", w.c.Damaged(), name)
			}
			if errs := w.cLog.all(); len(errs) != 1 || !errors.Is(errs[0], ErrCorrupt) {
				t.Fatalf("OnError got %v, want the damaged fork file", errs)
			}
			mustReplicate(t, "pipe", w.c, w.d)
			checkForked(t, w.c, w.xa)
		})
	}
}

// Verify accepts the evidence a fork leaves and refuses evidence that was
// tampered with, or that shows no disagreement.
func TestForkEvidenceVerify(t *testing.T) {
	w := newForkWorld(t, 3, 5)
	mustReplicate(t, "pipe", w.a, w.c)
	mustReplicate(t, "pipe", w.b, w.d)
	mustReplicate(t, "pipe", w.c, w.d)
	good := w.c.Feed(w.kp.PublicKey).Fork()
	if err := good.Verify(); err != nil {
		t.Fatal(err)
	}
	clone := func() *ForkEvidence {
		node, local, peer, err := decodeForkFile(encodeForkFile(good.Node, good.Local, good.Peer))
		if err != nil {
			t.Fatal(err)
		}
		return &ForkEvidence{Key: good.Key, Node: node, Local: local, Peer: peer}
	}
	if err := clone().Verify(); err != nil {
		t.Fatalf("decoded evidence: %v", err)
	}
	other := mustKeyPair(t)
	bad := map[string]func(e *ForkEvidence){
		"the same proof twice":      func(e *ForkEvidence) { e.Peer = e.Local },
		"another key":               func(e *ForkEvidence) { e.Key = other.PublicKey },
		"a short key":               func(e *ForkEvidence) { e.Key = e.Key[:5] },
		"a signature flipped":       func(e *ForkEvidence) { e.Peer.Signature[3] ^= 1 },
		"a block changed":           func(e *ForkEvidence) { e.Local.Blocks[0] = []byte("forged") },
		"an unsigned proof":         func(e *ForkEvidence) { e.Local.Signature = nil },
		"a node neither determines": func(e *ForkEvidence) { e.Node = 2*e.Peer.Length + 2 },
		"a proof missing":           func(e *ForkEvidence) { e.Peer = nil },
	}
	for name, f := range bad {
		e := clone()
		f(e)
		if err := e.Verify(); !errors.Is(err, ErrVerify) {
			t.Errorf("%s: %v, want ErrVerify", name, err)
		}
	}
}

// A replica that holds entry 0 (from a proof whose signature it no longer
// keeps) and [4, 8) at length 8 proves its root over [0, 8) with entry 7,
// whose proof at 8 it holds every node of; entry 0's lacks the node over
// [2, 4). So a signed proof of another history past 8 still leaves
// evidence.
func TestForkEvidenceFromAnyHeldEntryThatProvesTheNode(t *testing.T) {
	kp := mustKeyPair(t)
	var ws [2]*Feed
	for i := range ws {
		w, err := OpenFeed(NewMemStorage(), "w/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		ws[i] = w
	}
	appendN(t, ws[0], 3, "a")
	p3, err := ws[0].Proof(0, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, ws[0], 5, "a")
	appendN(t, ws[1], 12, "b")
	s := NewMemStorage()
	r, err := OpenFeed(s, "r/", &FeedOptions{Key: kp.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p48, err := ws[0].Proof(4, 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Proof{p48, p3} {
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove("r/" + fileOlderSigs); err != nil {
		t.Fatal(err)
	}
	q, err := ws[1].Proof(8, 12, 0)
	if err != nil {
		t.Fatal(err)
	}
	var fe *ForkError
	if err := r.Put(q); !errors.As(err, &fe) || fe.Evidence == nil {
		t.Fatalf("put of the other history: %v, want a fork with evidence", err)
	}
	if ev := fe.Evidence; ev.Verify() != nil || ev.Node != 7 || ev.Local.Start != 7 || ev.Local.Length != 8 {
		t.Fatalf("evidence of node %d from entry %d at %d: %v", ev.Node, ev.Local.Start, ev.Local.Length, ev.Verify())
	}
}
