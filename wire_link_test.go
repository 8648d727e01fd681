package kappa

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// linkSession is a session whose peer announced a writer w of 3,000
// entries, of which this side holds [0, 100) at length 100; nothing is in
// flight. The test plays the storers.
func linkSession(t *testing.T) (s *session, pf *peerFeed, w, r *Feed) {
	t.Helper()
	kp := mustKeyPair(t)
	w, err := OpenFeed(NewMemStorage(), "w/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	appendN(t, w, 100, "a")
	c := newCore(t, &Options{NoSync: true})
	fs, err := c.AddFeeds(kp.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	r = fs[0]
	mustPut(t, r, w, 0, 100)
	appendN(t, w, 2900, "a")
	s = &session{core: c, mineID: map[*Feed]uint64{}, sentHave: map[*Feed]haveState{}}
	startStores(s)
	pf = &peerFeed{id: 0, key: kp.PublicKey, local: r, length: 3000, have: []span{{0, 3000}}}
	s.peers = []*peerFeed{pf}
	s.peersOf = map[*Feed][]*peerFeed{r: {pf}}
	s.trimWants(pf)
	return s, pf, w, r
}

// stored hands the session the result of storing w's answer for [start,
// end) on its local feed, as a storer would.
func linkStore(t *testing.T, s *session, pf *peerFeed, w *Feed, start, end uint64) error {
	t.Helper()
	req := request{pf: pf, start: start, end: end}
	s.storing = append(s.storing, req)
	before := pf.local.Len()
	err := pf.local.Put(mustProof(t, w, start, end))
	if err := s.storedAnswer(storeResult{r: req, err: err, lenBefore: before}); err != nil {
		t.Fatalf("the session ended on the answer for [%d, %d): %v", start, end, err)
	}
	return err
}

func wants(pf *peerFeed, x span) bool {
	for _, w := range pf.want {
		if w.start < x.end && x.start < w.end {
			return true
		}
	}
	return false
}

// An answer refused as unlinked while the local length stays is not asked
// for again (the session would spin); once the length changed (the first
// chunk was stored) it is wanted again.
func TestReplicateWantsAnUnlinkedAnswerAgainOnceTheLengthGrew(t *testing.T) {
	s, pf, w, r := linkSession(t)
	later := span{1124, 2148}
	if err := linkStore(t, s, pf, w, later.start, later.end); !errors.Is(err, errNoLink) {
		t.Fatalf("the later chunk first: %v, want errNoLink", err)
	}
	if wants(pf, later) {
		t.Fatalf("wants %v again at the same length: %v", later, pf.want)
	}
	if !wants(pf, span{100, 1124}) {
		t.Fatalf("no longer wants the first chunk: %v", pf.want)
	}
	s.trimWants(pf) // anything that works the wants out again keeps it aside
	if err := s.fetch(); err != nil {
		t.Fatal(err)
	}
	for _, q := range s.outstanding {
		if q.start < later.end && later.start < q.end {
			t.Fatalf("asked for [%d, %d) again at the same length", q.start, q.end)
		}
	}
	s.outstanding = nil
	if err := linkStore(t, s, pf, w, 100, 1124); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 3000 || !wants(pf, later) {
		t.Fatalf("length %d, wants %v", r.Len(), pf.want)
	}
}

// The other order: the first chunk was stored while the later one was
// being refused (at the old length); the later one is wanted again at
// once.
func TestReplicateWantsAnUnlinkedAnswerAgainIfTheLengthGrewMeanwhile(t *testing.T) {
	s, pf, w, r := linkSession(t)
	later := span{1124, 2148}
	p := mustProof(t, w, later.start, later.end)
	err := r.Put(p)
	if !errors.Is(err, errNoLink) {
		t.Fatalf("the later chunk: %v, want errNoLink", err)
	}
	if err := linkStore(t, s, pf, w, 100, 1124); err != nil {
		t.Fatal(err)
	}
	req := request{pf: pf, start: later.start, end: later.end}
	s.storing = append(s.storing, req)
	if err := s.storedAnswer(storeResult{r: req, err: err, lenBefore: 100}); err != nil {
		t.Fatal(err)
	}
	if !wants(pf, later) {
		t.Fatalf("wants %v", pf.want)
	}
}

// A replica at length 100 replicates a writer of 3,000 entries: three
// requests in flight, stored by two storers in whatever order. A later
// chunk stored first is refused as unlinked and asked again once the first
// raised the length; the session ends with every entry.
func TestReplicateRaisesAReplicasLengthWhateverOrderTheAnswersAreStored(t *testing.T) {
	for i := range 12 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			a, b := sharedPair(t, &Options{NoSync: true})
			w := mustWriter(t, a, "w")
			appendN(t, w, 100, "a")
			mustReplicate(t, "pipe", a, b)
			appendN(t, w, 2900, "a")
			mustReplicate(t, connKinds[i%2], a, b)
			sameFeed(t, w, b)
		})
	}
}

// A replica at length 100 of writer a meets b, which holds a fork of the
// same feed with 3,000 entries. Whatever order the answers are stored
// in, the session ends, the feed is marked forked with evidence, and the
// replica keeps a's history at length 100, which it still proves to a
// fresh replica.
func TestReplicateAForkPastTheReplicasLengthNeverMixesTheHistories(t *testing.T) {
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			kp := mustKeyPair(t)
			a := newCore(t, &Options{NoSync: true})
			honest := newCore(t, &Options{NoSync: true, SharedKey: a.SharedKey()})
			b := newCore(t, &Options{NoSync: true, SharedKey: a.SharedKey()})
			wa, err := a.WriterWithKeyPair("w", kp)
			if err != nil {
				t.Fatal(err)
			}
			wb, err := b.WriterWithKeyPair("w", kp)
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, wa, 100, "a")
			appendN(t, wb, 3000, "b")
			mustReplicate(t, "pipe", a, honest)
			mustReplicate(t, connKinds[i%2], honest, b)
			r := honest.Feed(kp.PublicKey)
			if !r.Forked() || r.Len() != 100 || r.Downloaded() != 100 {
				t.Fatalf("forked %v, length %d, held %d", r.Forked(), r.Len(), r.Downloaded())
			}
			if err := r.Fork().Verify(); err != nil {
				t.Fatal(err)
			}
			fresh := newCore(t, nil)
			f, err := fresh.AddFeed(kp.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Put(mustProof(t, r, 0, 100)); err != nil {
				t.Fatalf("the replica's proof at its length: %v", err)
			}
			sameFeed(t, wa, fresh)
		})
	}
}

// A sparse replica at length 100 downloads an entry of a writer that grew
// to 3,000: the proof of that entry alone does not reach the replica's
// roots, so the session asks for one entry that does (in the last root
// of 100, with known = 0), which raises the length, and then for the
// entry again.
func TestReplicateSparseReplicaReachesAnEntryPastItsLength(t *testing.T) {
	a, b := sharedPair(t, &Options{Sparse: true, NoSync: true})
	w := mustWriter(t, a, "w")
	appendN(t, w, 100, "v")
	r, err := b.AddFeed(w.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, w, 0, 1)
	appendN(t, w, 2900, "v")
	ca, cb := connPair(t, "pipe")
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errs := make(chan error, 2)
	live := &ReplicateOptions{Live: true}
	go func() { errs <- a.Replicate(ctx, ca, true, live) }()
	go func() { errs <- b.Replicate(ctx, cb, false, live) }()
	dl, stop := context.WithTimeout(ctx, 30*time.Second) // only to turn a hang into a failure
	defer stop()
	if err := r.Download(dl, 2500, 2501); err != nil {
		t.Fatalf("download of entry 2500: %v", err)
	}
	cancel()
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("live session ended with %v", err)
		}
	}
	got, err := r.Get(context.Background(), 2500)
	if err != nil || string(got) != "v2400" || r.Len() != 3000 {
		t.Fatalf("Get(2500) = %q, %v; length %d", got, err, r.Len())
	}
}

// A replica at length 100 meets a partial replica that holds only [1500,
// 3000) of the writer's 3,000 entries: none of its answers reaches the
// roots of 100, and it holds no entry that would, so they are set aside
// and the non-live session still ends, both sides with nil; the replica
// stays at 100 and the peer got [0, 100).
func TestReplicateEndsWhenNoAnswerReachesTheRootsHeld(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			b, c := sharedPair(t, &Options{NoSync: true})
			w := newFeed(t, NewMemStorage(), nil)
			appendN(t, w, 100, "v")
			rb, err := b.AddFeed(w.Key())
			if err != nil {
				t.Fatal(err)
			}
			mustPut(t, rb, w, 0, 100)
			appendN(t, w, 2900, "v")
			rc, err := c.AddFeed(w.Key())
			if err != nil {
				t.Fatal(err)
			}
			mustPut(t, rc, w, 1500, 2524)
			mustPut(t, rc, w, 2524, 3000)
			mustReplicate(t, kind, b, c)
			if rb.Len() != 100 || rb.Downloaded() != 100 {
				t.Fatalf("replica: length %d, held %d", rb.Len(), rb.Downloaded())
			}
			if rc.Len() != 3000 || !rc.HasRange(0, 100) || !rc.HasRange(1500, 3000) {
				t.Fatalf("partial replica: length %d, held %d", rc.Len(), rc.Downloaded())
			}
		})
	}
}

// With an answer set aside and no request in flight that would raise the
// length, the session asks for a link: one entry in the last root of the
// length (one it holds: no block for a sparse replica), signed. It asks
// once per length: an answer that does not raise the length is not
// followed by another link.
func TestReplicateAsksForOneLinkPerLength(t *testing.T) {
	s, pf, w, _ := linkSession(t)
	pf.have = []span{{90, 3000}}
	s.trimWants(pf)
	if err := linkStore(t, s, pf, w, 1124, 2148); !errors.Is(err, errNoLink) {
		t.Fatalf("the later chunk: %v, want errNoLink", err)
	}
	pf.want = nil // only the link is asked for
	if err := s.fetch(); err != nil {
		t.Fatal(err)
	}
	if len(s.outstanding) != 1 || s.outstanding[0].start != 96 || s.outstanding[0].end != 97 || s.outstanding[0].known != 0 {
		t.Fatalf("requests %+v, want one for [96, 97) with known 0", s.outstanding)
	}
	// Its answer, stored, did not raise the length (an older one).
	link := s.outstanding[0]
	s.outstanding = nil
	if err := s.storedAnswer(storeResult{r: link, lenBefore: 100}); err != nil {
		t.Fatal(err)
	}
	pf.want = nil
	if err := s.fetch(); err != nil {
		t.Fatal(err)
	}
	if len(s.outstanding) != 0 || pf.link != nil {
		t.Fatalf("asked %+v again at the same length", s.outstanding)
	}
}
