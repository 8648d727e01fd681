package kappa

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"maps"
	"slices"
	"strings"
)

// Progress: storing what was mapped, and each feed's indexed spans.

// commit stores the progress of the batches mapped, then counts them, and
// ends the batches in flight. If storing fails, their feeds' progress goes
// back to what was stored, so that Retry maps them again.
func (x *Index) commit(group []*mappedBatch) error {
	if len(group) == 0 {
		x.mu.Lock()
		x.endBatchesLocked()
		x.mu.Unlock()
		return nil
	}
	var feeds []*feedProgress // each once
	seen := make(map[*feedProgress]bool, len(group))
	for _, m := range group {
		if !seen[m.p] {
			seen[m.p] = true
			feeds = append(feeds, m.p)
		}
	}
	if x.states != nil {
		x.mu.Lock()
		old := make([][]byte, len(feeds))
		for i, p := range feeds {
			old[i] = p.seg
			x.setSegLocked(p, appendFeedState(nil, p.key, p.spans))
		}
		state := x.encodeStateLocked()
		x.mu.Unlock()
		if err := x.states.StoreState(state); err != nil {
			x.mu.Lock()
			for i, p := range feeds {
				x.setSegLocked(p, old[i])
				p.spans = p.saved
			}
			if x.causal {
				x.resetWaitsLocked() // waits past the progress kept
			}
			x.endBatchesLocked()
			x.mu.Unlock()
			return fmt.Errorf("store state: %w", err)
		}
	}
	// Indexed runs, and entries left out are reported, before Ready
	// waiters see the batch, as the seed's 'indexed' event fired before
	// 'ready'.
	n, notify := x.view.(IndexedNotifier)
	for _, m := range group {
		if notify && len(m.entries) > 0 {
			n.Indexed(m.entries)
		}
		for _, err := range m.bad {
			x.host.report(err)
		}
	}
	x.mu.Lock()
	for _, m := range group {
		m.p.n += m.end - m.start
		x.indexed += m.end - m.start
	}
	for _, p := range feeds {
		p.saved = p.spans
		x.checkWaitsLocked(p)
	}
	// In the same step as the waiters are released: a Ready that
	// returned is followed by a Status without a batch in flight.
	x.endBatchesLocked()
	x.mu.Unlock()
	return nil
}

// endBatchesLocked records that no batch is in flight, and wakes a Pause
// waiting for that.
func (x *Index) endBatchesLocked() {
	x.busy = false
	if x.paused > 0 {
		x.changedLocked()
	}
}

// sortSegsLocked adds feeds to segs, the feeds in the stored state in key
// order; with nil it rebuilds segs from every feed known.
func (x *Index) sortSegsLocked(added []*feedProgress) {
	if x.states == nil {
		return
	}
	byKey := func(a, b *feedProgress) int { return strings.Compare(a.key, b.key) }
	if added == nil {
		x.segs = x.segs[:0]
		x.segCount, x.segBytes = 0, 0
		for _, ps := range [][]*feedProgress{x.feeds, slices.Collect(maps.Values(x.stored))} {
			for _, p := range ps {
				x.segs = append(x.segs, p)
				if p.seg != nil {
					x.segCount++
					x.segBytes += len(p.seg)
				}
			}
		}
		slices.SortFunc(x.segs, byKey)
		return
	}
	// Merge: feeds join one at a time as peers bring them, so keep this
	// linear in the feeds known.
	slices.SortFunc(added, byKey)
	merged := make([]*feedProgress, 0, len(x.segs)+len(added))
	i := 0
	for _, p := range added {
		for i < len(x.segs) && x.segs[i].key < p.key {
			merged = append(merged, x.segs[i])
			i++
		}
		merged = append(merged, p)
	}
	x.segs = append(merged, x.segs[i:]...)
}

// setSegLocked replaces p's encoded part of the state.
func (x *Index) setSegLocked(p *feedProgress, seg []byte) {
	if x.states == nil {
		return
	}
	if p.seg != nil {
		x.segCount--
		x.segBytes -= len(p.seg)
	}
	if seg != nil {
		x.segCount++
		x.segBytes += len(seg)
	}
	p.seg = seg
}

// encodeStateLocked encodes the view's progress as indexState.encode
// would, from the parts kept per feed.
func (x *Index) encodeStateLocked() []byte {
	b := make([]byte, 0, len(magicIndexState)+2*binary.MaxVarintLen64+x.segBytes+4)
	b = append(b, magicIndexState...)
	b = binary.AppendUvarint(b, x.version)
	b = binary.AppendUvarint(b, uint64(x.segCount))
	for _, q := range x.segs {
		b = append(b, q.seg...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// setSpans sets the progress to spans; with states it also encodes them.
func (p *feedProgress) setSpans(spans []span, states bool) {
	p.spans, p.saved, p.n, p.seg = spans, spans, 0, nil
	for _, s := range spans {
		p.n += s.end - s.start
	}
	if states && len(spans) > 0 {
		p.seg = appendFeedState(nil, p.key, spans)
	}
}

// nextRun returns the first run of entries at or after s that are present
// and not indexed, at most max long.
func (p *feedProgress) nextRun(s uint64, max int) (uint64, uint64) {
	length := p.feed.Len()
	for s < length {
		s = p.skipIndexed(s)
		if s >= length {
			break
		}
		q := p.feed.NextPresent(s)
		if q >= length {
			break
		}
		if q != s {
			s = q
			continue // q may be indexed
		}
		end := min(p.feed.NextMissing(s), length, s+uint64(max))
		if i, ok := slices.BinarySearchFunc(p.spans, s, func(a span, v uint64) int {
			return cmpU64(a.start, v)
		}); ok || i < len(p.spans) {
			end = min(end, p.spans[i].start)
		}
		return s, end
	}
	return 0, 0
}

// skipIndexed returns s, or the end of the indexed span holding s.
func (p *feedProgress) skipIndexed(s uint64) uint64 {
	i, _ := slices.BinarySearchFunc(p.spans, s, func(a span, v uint64) int {
		return cmpU64(a.end, v+1)
	})
	if i < len(p.spans) && p.spans[i].start <= s && s < p.spans[i].end {
		return p.spans[i].end
	}
	return s
}

func (p *feedProgress) covers(s span) bool {
	for _, a := range p.saved {
		if a.start <= s.start && s.end <= a.end {
			return true
		}
	}
	return false
}

// coversAll reports whether p's saved progress covers every span of spans.
func (p *feedProgress) coversAll(spans []span) bool {
	for _, s := range spans {
		if !p.covers(s) {
			return false
		}
	}
	return true
}

// with returns p's spans with s merged in, leaving p's as they are.
func (p *feedProgress) with(s span) []span {
	i, _ := slices.BinarySearchFunc(p.spans, s.start, func(a span, v uint64) int { return cmpU64(a.start, v) })
	out := make([]span, 0, len(p.spans)+1)
	out = append(out, p.spans[:i]...)
	out = append(out, s)
	out = append(out, p.spans[i:]...)
	// Merge with neighbours that touch.
	merged := out[:0]
	for _, a := range out {
		if len(merged) > 0 && merged[len(merged)-1].end >= a.start {
			merged[len(merged)-1].end = max(merged[len(merged)-1].end, a.end)
			continue
		}
		merged = append(merged, a)
	}
	return slices.Clip(merged)
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
