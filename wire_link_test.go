package kappa

import (
	"errors"
	"fmt"
	"testing"
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
