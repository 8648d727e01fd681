package kappa

import "errors"

// errNoLink is returned by Put for a signed proof that would raise the
// feed's length but does not determine every full root of the length the
// feed holds: nothing would show that the tree the proof signs contains
// the feed's own, so nothing of it is stored. The peer did nothing wrong
// (a proof of a later range determines none of those roots): the same
// entries are accepted once a proof that reaches the roots raised the
// length. It matches neither ErrVerify nor ErrForked.
var errNoLink = errors.New("the proof does not reach the roots this replica holds")

// unreachedRoot returns the index of a full root of a tree of length
// entries that t does not determine, and false; or true if t determines
// all of them. A determined node is one t computed from the proof's blocks
// or took from its nodes; Put compares each with the stored node.
func (t *provenTree) unreachedRoot(length uint64) (uint64, bool) {
	var buf [64]uint64
	for _, r := range fullRoots(buf[:0], length) {
		found := false
		for i := range t.nodes {
			if t.nodes[i].Index == r {
				found = true
				break
			}
		}
		if !found {
			return r, false
		}
	}
	return 0, true
}

// unlinkedSpan is a range whose answer Put refused with errNoLink when the
// local feed's length was at.
type unlinkedSpan struct {
	span
	at uint64
}

// setAsideUnlinked takes an answer that Put refused with errNoLink when
// the local feed's length was at: the answer's range is not wanted again
// from this peer until the local length differs from at. If it already
// does (another answer raised it meanwhile), the range is wanted again at
// once. Each request that follows reads a length past at, so a range is
// refused again only at a greater length: the re-asking is bounded by the
// growth of the feed and no request loop can spin.
func (s *session) setAsideUnlinked(r request, at uint64) {
	r.pf.unlinked = append(r.pf.unlinked, unlinkedSpan{span{r.start, r.end}, at})
	s.trimWants(r.pf)
}

// linked is called when an answer for pf was stored: if the local length
// grew, what was set aside as unlinked for any peer feed of the same feed
// is wanted again.
func (s *session) linked(pf *peerFeed) {
	for _, q := range s.peersOf[pf.local] {
		if len(q.unlinked) > 0 {
			s.trimWants(q)
		}
	}
}

// linkWants takes out of pf.want the ranges set aside as unlinked at the
// local feed's current length n, and forgets those set aside at another
// length (so they are wanted again). While some are set aside, it has a
// link asked for, once per length: one entry e of the peer in [n −
// lowbit(n), n] (the last full root of n, and n), the lowest held here if
// any, else the greatest; with known = 0. The proof of
// e at the peer's length takes the other roots of n as its left nodes and
// computes the last one (an ancestor of e), so its Put raises the length if
// the histories agree, and the ranges set aside are wanted again. No link
// is asked while a request that starts there and reaches past n is in
// flight or being stored (the first chunk of a range past n): it does the
// same.
func (s *session) linkWants(pf *peerFeed) {
	if len(pf.unlinked) == 0 {
		return
	}
	n := pf.local.Len()
	kept := pf.unlinked[:0]
	for _, u := range pf.unlinked {
		if u.at == n {
			kept = append(kept, u)
			pf.want = subtractSpan(pf.want, u.span)
		}
	}
	pf.unlinked = kept
	if len(kept) == 0 {
		pf.link = nil
		return
	}
	if pf.link != nil || pf.linkAsked == n+1 || n == 0 {
		return
	}
	lo := n - n&-n
	for _, q := range [][]request{s.outstanding, s.storing} {
		for _, r := range q {
			if r.pf == pf && lo <= r.start && r.start <= n && (r.end > n || r.known == 0) {
				return
			}
		}
	}
	in := intersectSpans(pf.have, []span{{lo, n + 1}})
	for _, r := range pf.refused {
		in = subtractSpan(in, r)
	}
	if len(in) == 0 {
		return // the peer holds none: the ranges stay aside
	}
	// An entry held here adds no block to a sparse replica.
	e := in[len(in)-1].end - 1
	for _, c := range in {
		if h := pf.local.NextPresent(c.start); h < min(c.end, n) {
			e = h
			break
		}
	}
	pf.link, pf.linkAsked = &span{e, e + 1}, n+1
}

// linkRequest returns the link request linkWants set for pf, if any, and
// clears it.
func (pf *peerFeed) linkRequest() (request, bool) {
	l := pf.link
	if l == nil {
		return request{}, false
	}
	pf.link = nil
	// known = 0: the answer is signed, at the peer's length.
	return request{pf: pf, start: l.start, end: l.end, bytes: pf.blockBytes}, true
}
