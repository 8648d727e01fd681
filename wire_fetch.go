package kappa

import (
	"errors"
	"fmt"
	"slices"
)

// Fetching: what to want of the peer's feeds, the requests, and the
// answers received, verified and stored.

// storers is how many goroutines of a session verify and store answers:
// two, so that one verifies while the other writes.
const storers = 2

type storeJob struct {
	r request // the part of the request the answer holds
	p *Proof
}

type storeResult struct {
	r          request
	err        error
	unsignedAt uint64 // the length of the answer's proof if it had no signature, else 0
	lenBefore  uint64 // the local feed's length before the answer was stored
}

// unsignedAt returns p's length if p has no signature, else 0.
func unsignedAt(p *Proof) uint64 {
	if p.Signature != nil {
		return 0
	}
	return p.Length
}

type addResult struct {
	fs  []*Feed
	err error
}

type request struct {
	pf         *peerFeed
	start, end uint64
	bytes      uint64 // expected (in flight) or actual (storing) size
	known      uint64 // the length the request said this side holds
}

// trimWantsOf works out again, in a sparse database, what this side wants
// of the peer's feeds that are f: calls may have started waiting for
// entries of f. It does so in any database for a peer feed with answers
// set aside as unlinked: f may have grown.
func (s *session) trimWantsOf(f *Feed) {
	sparse := s.core.opts.Sparse || f.hasDamage()
	for _, pf := range s.peersOf[f] {
		if sparse || len(pf.unlinked) > 0 {
			s.trimWants(pf)
		}
	}
}

// trimWants works out what to request of pf: what the peer holds, less
// what this side holds, what the peer refused and what is in flight; in a
// sparse database, only what a local call waits for.
func (s *session) trimWants(pf *peerFeed) {
	pf.want = pf.want[:0]
	if pf.local == nil || pf.local.Writable() || pf.isolated() {
		return // declined, written here, or forked: nothing to fetch
	}
	want := pf.have
	if s.core.opts.Sparse {
		// Entries found damaged are wanted too: a copy heals them.
		want = intersectSpans(want, mergeSpans(pf.local.wantedRanges(), pf.local.damagedSpans()))
	}
	// A store running beside the loop may make entries present between
	// the two look-ups: a run that came out empty is skipped, so that no
	// request asks for nothing.
	for _, w := range want {
		for a := pf.local.NextMissing(w.start); a < w.end; {
			b := w.end
			if a < pf.local.Len() {
				b = min(pf.local.NextPresent(a), w.end)
			}
			if b > a {
				pf.want = append(pf.want, span{a, b})
			}
			if b >= w.end {
				break
			}
			a = pf.local.NextMissing(max(b, a+1))
		}
	}
	for _, r := range pf.refused {
		pf.want = subtractSpan(pf.want, r)
	}
	s.linkWants(pf)
	for _, r := range s.outstanding {
		if r.pf == pf {
			pf.want = subtractSpan(pf.want, span{r.start, r.end})
		}
	}
	for _, r := range s.storing {
		if r.pf == pf {
			pf.want = subtractSpan(pf.want, span{r.start, r.end})
		}
	}
	if (len(pf.want) > 0 || pf.link != nil) && !pf.queued {
		pf.queued = true
		s.wants = append(s.wants, pf)
	}
}

// addPending starts adding the feeds the peer offered that this side
// lacks, off the loop and a chunk at a time: the first chunk is small, so
// that fetching starts early, and each next one as large as all added so
// far, so that the manifest writes stay few.
func (s *session) addPending() error {
	if len(s.adding) > 0 || len(s.pendingNew) == 0 {
		return nil
	}
	n := min(len(s.pendingNew), max(8, s.progress.Feeds))
	s.adding = slices.Clone(s.pendingNew[:n])
	s.pendingNew = slices.Delete(s.pendingNew, 0, n)
	keys := make([][]byte, len(s.adding))
	for i, p := range s.adding {
		keys[i] = p.pf.key
	}
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		fs, err := s.core.AddFeeds(keys...)
		s.added <- addResult{fs, storageErr(err)}
	}()
	return nil
}

// addedFeeds takes the feeds added for the chunk in progress, and starts
// the next.
func (s *session) addedFeeds(res addResult) error {
	chunk := s.adding
	s.adding = nil
	if res.err != nil {
		return res.err
	}
	for i, p := range chunk {
		p.pf.local = res.fs[i]
		if s.peersOf == nil {
			s.peersOf = map[*Feed][]*peerFeed{}
		}
		s.peersOf[p.pf.local] = append(s.peersOf[p.pf.local], p.pf)
		s.progress.Feeds++
		s.trimWants(p.pf)
	}
	s.report()
	return s.addPending()
}

// fetch sends requests for wanted ranges, taking turns between feeds, and
// says done when nothing is wanted or in flight.
func (s *session) fetch() error {
	if err := s.addPending(); err != nil {
		return err
	}
	for len(s.outstanding) < maxOutstanding && len(s.outstanding)+len(s.storing) < 2*maxOutstanding && len(s.wants) > 0 && s.inFlightBytes() < maxInFlightBytes {
		if s.next >= len(s.wants) {
			s.next = 0
		}
		pf := s.wants[s.next]
		if (len(pf.want) == 0 && pf.link == nil) || pf.local == nil || pf.isolated() {
			pf.queued = false
			s.wants = append(s.wants[:s.next], s.wants[s.next+1:]...)
			continue
		}
		r, ok := pf.linkRequest()
		if !ok {
			w := &pf.want[0]
			end := min(w.end, w.start+requestBlocks(pf))
			r = request{pf: pf, start: w.start, end: end, bytes: (end - w.start) * pf.blockBytes, known: pf.local.Len()}
			if pf.signedOnly {
				r.known = 0
			}
			if w.start = end; w.start >= w.end {
				pf.want = pf.want[1:]
			}
		}
		s.outstanding = append(s.outstanding, r)
		s.send(requestMessage{pf.id, r.start, r.end, r.known}.encode())
		s.next++
	}
	if !s.sentDone && s.peerSynced && len(s.pendingNew) == 0 && len(s.adding) == 0 && len(s.outstanding) == 0 && len(s.storing) == 0 && len(s.wants) == 0 {
		s.sentDone = true
		s.liveAfterDone()
		s.send(doneMessage{}.encode())
		s.report()
	}
	return nil
}

// inFlightBytes is the size of what was asked for and not stored yet.
func (s *session) inFlightBytes() uint64 {
	var n uint64
	for _, r := range s.outstanding {
		n += r.bytes
	}
	for _, r := range s.storing {
		n += r.bytes
	}
	return n
}

// requestBlocks is how many blocks to ask of pf at once: as many as fit
// in one answer by the size of the blocks it sent last, so that with large
// blocks several requests are in flight rather than one answered by parts.
func requestBlocks(pf *peerFeed) uint64 {
	if pf.blockBytes == 0 {
		return maxRequestBlocks
	}
	return min(max(maxAnswerBytes/pf.blockBytes, 1), maxRequestBlocks)
}

// answer matches an answer from the peer to the oldest request in flight.
func (s *session) answer(id, start uint64) (request, error) {
	if len(s.outstanding) == 0 {
		return request{}, protoErr("an answer for feed %d at %d that nobody requested", id, start)
	}
	r := s.outstanding[0]
	if r.pf.id != id || r.start != start {
		return request{}, protoErr("an answer for feed %d at %d; requested was feed %d at %d", id, start, r.pf.id, r.start)
	}
	s.outstanding = s.outstanding[1:]
	return r, nil
}

// receive takes an answer from the peer and hands it to the storers,
// which verify and store it.
func (s *session) receive(m dataMessage) error {
	p := m.p
	r, err := s.answer(m.id, p.Start)
	if err != nil {
		return err
	}
	n := uint64(len(p.Blocks))
	if n > r.end-r.start {
		return protoErr("data of %d blocks for a request of %d", n, r.end-r.start)
	}
	var size uint64
	for _, b := range p.Blocks {
		size += uint64(len(b))
	}
	if r.pf.isolated() {
		return nil // forked since it was asked for: dropped
	}
	r.pf.blockBytes = max(size/n, 1)
	got := request{pf: r.pf, start: r.start, end: r.start + n, bytes: size, known: r.known}
	s.storing = append(s.storing, got)
	s.storeJobs <- storeJob{r: got, p: p}
	if got.end < r.end {
		s.trimWants(r.pf) // a prefix: the rest is wanted again
	}
	return nil
}

// storeLoop verifies and stores answers until the session ends.
func (s *session) storeLoop() {
	for j := range s.storeJobs {
		var err error
		before := j.r.pf.local.Len()
		if s.stopping.Load() {
			err = ErrClosed // the session is over; nobody reads this
		} else {
			err = storageErr(j.r.pf.local.Put(j.p))
		}
		s.stored <- storeResult{r: j.r, err: err, unsignedAt: unsignedAt(j.p), lenBefore: before}
	}
}

// storedAnswer takes the result of storing an answer.
func (s *session) storedAnswer(res storeResult) error {
	r := res.r
	if k := slices.Index(s.storing, r); k >= 0 {
		s.storing = slices.Delete(s.storing, k, k+1)
	}
	switch {
	case errors.Is(res.err, ErrForked), errors.Is(res.err, ErrFull):
		// A fork, or a feed longer than this side's files can address
		// (a length past 2^56, which its writer signed): not exchanged
		// further; the session goes on with the others.
		s.isolate(r.pf, res.err)
		return nil
	case r.known > 0 && res.unsignedAt == r.known && errors.Is(res.err, ErrVerify):
		// An unsigned proof at the length this side said it holds that
		// does not meet this side's tree: the peer may hold another
		// history of the feed. Asked again with known = 0, it must send
		// signed proofs, which verify or are evidence of a fork.
		r.pf.signedOnly = true
		s.trimWants(r.pf)
		return nil
	case errors.Is(res.err, errNoLink):
		s.setAsideUnlinked(r, res.lenBefore)
		return nil
	case res.err != nil:
		return fmt.Errorf("feed %x from the peer: %w", r.pf.key[:4], res.err)
	}
	s.linked(r.pf)
	s.progress.BlocksReceived += r.end - r.start
	s.report()
	return nil
}

// isolate stops exchanging pf's feed in this session, after storing an
// answer showed a fork or a length this side cannot store (err): nothing
// more is requested of it, answers in flight are dropped, and the session
// goes on with the other feeds. A fork with evidence marked the feed, and
// its Core reported it; anything else is reported here.
func (s *session) isolate(pf *peerFeed, err error) {
	for _, q := range s.peersOf[pf.local] {
		q.cut, q.want = true, nil
	}
	pf.cut, pf.want = true, nil
	if !pf.local.Forked() {
		s.core.report(fmt.Errorf("replicate: feed %x from the peer: %w", pf.key[:4], err))
	}
	s.report()
}
