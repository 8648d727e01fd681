package kappa

import (
	"errors"
	"fmt"
)

// Serving: answers to the peer's requests.

// serve answers a request from the peer, or defers it while
// maxQueuedAnswerBytes of answers wait for the writer (see serveDeferred).
func (s *session) serve(m requestMessage) error {
	if m.id >= uint64(len(s.mine)) {
		return protoErr("request for feed %d, which was never announced", m.id)
	}
	if m.start >= m.end || m.end-m.start > maxRequestBlocks {
		return protoErr("request for [%d, %d)", m.start, m.end)
	}
	// The peer may have maxOutstanding requests in flight, and one is in
	// flight until the peer has read its answer, which it cannot do before
	// the writer has begun to write it. So while the peer keeps to that,
	// fewer than maxOutstanding requests wait here, deferred or answered
	// and queued for the writer; more is a peer asking without reading.
	if waiting := int(s.queuedAnswers.Load()) + len(s.deferred); waiting >= maxOutstanding {
		return protoErr("a request with %d answers unread: more than %d requests in flight", waiting, maxOutstanding)
	}
	if len(s.deferred) > 0 || s.queuedAnswerBytes.Load() >= maxQueuedAnswerBytes {
		s.deferred = append(s.deferred, m) // answers go in the order asked
		return nil
	}
	return s.answerRequest(m)
}

// serveDeferred answers the deferred requests, in order, while there is
// room in the writer's queue; the loop calls it when the writer took an
// answer up.
func (s *session) serveDeferred() error {
	for len(s.deferred) > 0 && s.queuedAnswerBytes.Load() < maxQueuedAnswerBytes {
		m := s.deferred[0]
		s.deferred = s.deferred[1:]
		if err := s.answerRequest(m); err != nil {
			return err
		}
	}
	if len(s.deferred) == 0 {
		s.deferred = nil
	}
	return nil
}

// answerRequest answers a request that serve checked.
func (s *session) answerRequest(m requestMessage) error {
	id, start, end, known := m.id, m.start, m.end, m.known
	f := s.mine[id]
	notAvailable := func(end uint64) error {
		s.sendAnswer(notAvailableMessage{id, start, end}.encode())
		return nil
	}
	if f.Forked() {
		return notAvailable(end) // a forked feed is no longer exchanged
	}
	// Local damage never ends the session: a damaged entry (found before
	// or by this answer's reads, which mark it) is not available, alone,
	// so that the peer asks again for the entries after it; damage to the
	// tree above the entries makes the whole request not available.
	var p *Proof
	for tries := 0; ; tries++ {
		e := min(end, f.NextMissing(start))
		if e <= start {
			if f.isDamaged(start) {
				return notAvailable(start + 1)
			}
			return notAvailable(end)
		}
		var err error
		p, err = f.Proof(start, answerEnd(f, start, e), known)
		if err == nil {
			break
		}
		if errors.Is(err, ErrNotAvailable) || errors.Is(err, ErrOutOfRange) {
			return notAvailable(end)
		}
		if !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("serve feed %x: %w", f.Key()[:4], storageErr(err))
		}
		var ed *entryDamage
		if !errors.As(err, &ed) || tries >= maxServeRetries {
			var ce *CorruptError
			if errors.As(err, &ce) {
				err = ce
			}
			f.reportDamage(Damage{Err: err})
			return notAvailable(end)
		}
		// The damaged entry is marked now: try again without it.
	}
	if k := answerPrefix(p.Blocks); k < len(p.Blocks) {
		var err error
		if p, err = f.Proof(start, start+uint64(k), known); err != nil {
			return notAvailable(end)
		}
	}
	s.sendAnswer(dataMessage{id, p}.encode())
	s.progress.BlocksSent += uint64(len(p.Blocks))
	return nil
}

// answerEnd returns the end of the answer to a request for the present
// blocks [start, end): as many blocks as fit in maxAnswerBytes (at least
// one), judged by the offsets in their leaves, so that no more is read
// than is sent. If a leaf cannot be read it returns end: Proof reports it.
func answerEnd(f *Feed, start, end uint64) uint64 {
	first, err := f.readNode(2 * start)
	if err != nil {
		return end
	}
	// fits reports whether blocks [start, e) fit in one answer.
	fits := func(e uint64) (bool, error) {
		last, err := f.readNode(2 * (e - 1))
		if err != nil {
			return false, err
		}
		return last.Offset+last.Size-first.Offset <= maxAnswerBytes, nil
	}
	if ok, err := fits(end); err != nil || ok {
		return end
	}
	lo, hi := start+1, end // [start, lo) fits or is one block; [start, hi) does not fit
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := fits(mid)
		if err != nil {
			return end
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// answerPrefix returns how many blocks fit in one answer.
func answerPrefix(blocks [][]byte) int {
	var n int
	for i, b := range blocks {
		n += len(b)
		if i > 0 && n > maxAnswerBytes {
			return i
		}
	}
	return len(blocks)
}
