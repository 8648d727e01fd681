package kappa

import (
	"container/heap"
	"runtime"
	"slices"
	"sync"
)

// The causal index: happened-before between entries of all feeds, exact, in
// memory, built as entries become available.
//
// Feeds are named by small dense ints (the Core's feed indexes), entries by
// pos{feed, seq}. The index is fed append segments: add(F, s, e, deps) says
// that F holds entries s..e-1, that entry s follows its predecessor (F, s-1)
// and the entries deps, and that each of s+1..e-1 follows only its
// predecessor. Segments may come in any order and with holes; an entry is
// indexed once every entry in its causal past is held (added), that is once
// its own feed is indexed up to it and every dep of every segment on the
// way is indexed. Until then compare says Unknown and waitingOn says why.
//
// Representation. For each pair of feeds F ≠ G the index keeps the step
// function knows[F][G]: seq of F → the number of G's entries in the causal
// past of F's entry at that seq (they are always a prefix of G, since a
// feed's entries follow each other). It is kept as its breakpoints, the
// seqs of F where it rises, with the value from there on. Then exactly:
//
//	(G, sa) happened before (F, sb)  ⇔  sa < knows[F][G](sb)      (F ≠ G)
//	(F, sa) happened before (F, sb)  ⇔  sa < sb
//
// so compare is two binary searches. Indexing F's segment at s with deps D
// sets, for every G, knows[F][G](s) = max(knows[F][G](s-1), d.seq+1 for d in
// D on G, knows[d.feed][G](d.seq) for d in D); only the G that rise get a
// breakpoint, and a dep already in F's past (knows[F][d.feed](s-1) > d.seq)
// costs nothing. A writer that talks with few others pays for those few
// (unlike a vector per entry, which costs the number of feeds on every
// entry); the entries of a segment after its first cost nothing (one
// breakpoint covers them). Breakpoints are two uint32 while every seq and
// count fits, two uint64 after that.
//
// Waiting. A feed's first segment not indexed waits on one dependency at a
// time: the first of its deps not indexed yet, found by a cursor that only
// moves forward, so a segment with n deps costs O(n) checks in all however
// its deps arrive, and one waiter record (on the feed of that dependency,
// woken when that feed's indexed length passes it). Memory per waiting
// segment is its deps and O(1). A dependency that never comes (a future
// entry, a cycle between feeds, a malformed context) leaves that feed's
// segment waiting and touches nothing else: there is no loop to run and
// nothing to deadlock.
//
// Long work. A segment with many deps (a context may legally name 100,000
// feeds), or a long cascade of segments made ready by one add, is processed
// in chunks of causalChunk units of work (a dep checked, a breakpoint read
// or written, a segment indexed); the lock is released between chunks, so
// other feeds' adds and all reads go on meanwhile; a feed whose segment is
// being indexed is marked busy so no one else touches it. The work is done
// by the goroutine whose add made it ready.
//
// Concurrency: one sync.RWMutex; add takes it for writing, every other
// method for reading.
//
// Numbers (BenchmarkCausalCompare100Writers: 100 writers × 1,000 entries in
// segments of 1–10, reduced contexts from random gossip): 6.3 breakpoints
// and about 70 heap bytes per entry, where a dense vector per segment would
// take 73 (and 40 kB per segment with 10,000 feeds whatever they talk to);
// about 140 ns per compare of random entries (memory bound; 36 ns when the
// two feeds' steps are in cache), 0.5–1.2 M entries/s to build.

// pos names an entry of the causal index: a feed index and a seq.
type pos struct {
	feed int
	seq  uint64
}

// dep is a dependency of a segment: the entry it follows.
type dep = pos

// neverDep is a dependency that never comes: the Core gives it as the only
// dep of an entry whose context is malformed, so that entry and its feed's
// later entries never index (waitingOn says waitMalformed).
var neverDep = dep{feed: -1}

const (
	// causalMaxFeed bounds feed indexes (they index a slice).
	causalMaxFeed = 1<<31 - 1
	// causalChunk is the work (deps checked, breakpoints read or written)
	// done under the lock before it is released for others.
	causalChunk = 1 << 14
)

// waitReason tells why an entry is not indexed.
type waitReason int

const (
	waitNone      waitReason = iota // indexed
	waitNotHeld                     // an entry in its causal past is not held (not added)
	waitCycle                       // its causal past loops back on itself: never indexes
	waitMalformed                   // a segment on the way has a malformed context (neverDep)
	waitIndexing                    // held and ready, being indexed now (a long context)
)

// String returns the reason in words, for Wait.Reason.
func (r waitReason) String() string {
	switch r {
	case waitNone:
		return "indexed"
	case waitNotHeld:
		return "not held"
	case waitCycle:
		return "cycle"
	case waitMalformed:
		return "malformed context"
	case waitIndexing:
		return "indexing"
	}
	return "waitReason(?)"
}

// steps is the step function knows[F][G] for one G: breakpoints (at[i],
// n[i]) with at and n strictly increasing; the value at seq is the n of the
// last breakpoint with at ≤ seq, 0 before the first. The two are kept in
// separate slices so that a search reads only at.
type steps struct {
	g            int32
	lastAt, topN uint32   // the last breakpoint, while narrow (saves a cache miss)
	at           []uint32 // while every at and n fits in 32 bits
	n            []uint32
	wide         *wideSteps // once one does not (at and n are then nil)
}

// wideSteps are breakpoints past 32 bits.
type wideSteps struct{ at, n []uint64 }

// last returns the value after the last breakpoint.
func (s *steps) last() uint64 {
	if s.wide != nil {
		return s.wide.n[len(s.wide.n)-1]
	}
	return uint64(s.topN)
}

// count returns the value at seq.
func (s *steps) count(seq uint64) uint64 {
	if s.wide != nil {
		if i := upper(s.wide.at, seq); i > 0 {
			return s.wide.n[i-1]
		}
		return 0
	}
	if seq > 1<<32-1 || uint64(s.lastAt) <= seq {
		return uint64(s.topN) // 0 if there is no breakpoint
	}
	if i := upper(s.at, uint32(seq)); i > 0 {
		return uint64(s.n[i-1])
	}
	return 0
}

// exceeds returns the first seq at which the value exceeds v, if any.
func (s *steps) exceeds(v uint64) (uint64, bool) {
	if s.wide != nil {
		if i := upper(s.wide.n, v); i < len(s.wide.n) {
			return s.wide.at[i], true
		}
		return 0, false
	}
	if v >= uint64(s.topN) {
		return 0, false
	}
	i := upper(s.n, uint32(v)) // v < topN fits
	return uint64(s.at[i]), true
}

// upper returns the number of elements of a (sorted) that are ≤ q.
func upper[T uint32 | uint64](a []T, q T) int {
	if len(a) == 0 {
		return 0
	}
	base, n := 0, len(a)
	for n > 1 {
		half := n >> 1
		if a[base+half] <= q {
			base += half
		}
		n -= half
	}
	if a[base] <= q {
		base++
	}
	return base
}

// push adds the breakpoint (at, n); at and n exceed the last ones.
func (s *steps) push(at, n uint64) {
	if s.wide == nil && (at > 1<<32-1 || n > 1<<32-1) {
		w := &wideSteps{at: make([]uint64, len(s.at), len(s.at)+1), n: make([]uint64, len(s.n), len(s.n)+1)}
		for i := range s.at {
			w.at[i], w.n[i] = uint64(s.at[i]), uint64(s.n[i])
		}
		s.wide, s.at, s.n = w, nil, nil
	}
	if s.wide != nil {
		s.wide.at = append(s.wide.at, at)
		s.wide.n = append(s.wide.n, n)
		return
	}
	if len(s.at) == cap(s.at) { // grow by a quarter, not double: less slack
		c := len(s.at) + len(s.at)/4 + 2
		s.at = append(make([]uint32, 0, c), s.at...)
		s.n = append(make([]uint32, 0, c), s.n...)
	}
	s.at = append(s.at, uint32(at))
	s.n = append(s.n, uint32(n))
	s.lastAt, s.topN = uint32(at), uint32(n)
}

// causalSegment is a held segment not indexed yet: entries start..end-1 of
// its feed, start following deps.
type causalSegment struct {
	start, end uint64
	deps       []dep
	next       int // deps[:next] are known to be indexed (or implied)
}

// causalWaiter is a feed whose first segment not indexed waits for entry
// seq of the feed whose heap holds it.
type causalWaiter struct {
	seq  uint64
	feed int
}

// waitHeap is a min-heap of waiters by seq.
type waitHeap []causalWaiter

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h waitHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waitHeap) Push(x any)        { *h = append(*h, x.(causalWaiter)) }
func (h *waitHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}

// causalFeed is the index of one feed.
type causalFeed struct {
	n       uint64                    // entries 0..n-1 are indexed
	know    []steps                   // knows[F][G] for each G this feed's entries know
	kdense  []int32                   // G → 1 + its index in know (0: none), while dense
	kpos    map[int]int32             // G → its index in know, once not dense (kdense nil)
	pending map[uint64]*causalSegment // held segments not indexed, by start
	waiters waitHeap                  // other feeds' segments waiting for an entry of this feed
	busy    bool                      // a goroutine is indexing its segment pending[n] in chunks
	waiting bool                      // pending[n] is registered in another feed's waiters
}

// steps returns knows[F][g], or nil if F knows no entry of g. The pointer is
// valid until the next push to another G (under the lock).
func (f *causalFeed) steps(g int) *steps {
	if f.kpos == nil {
		if uint(g) < uint(len(f.kdense)) {
			if i := f.kdense[g]; i > 0 {
				return &f.know[i-1]
			}
		}
		return nil
	}
	i, ok := f.kpos[g]
	if !ok {
		return nil
	}
	return &f.know[i]
}

// current returns knows[F][g] at F's last indexed entry.
func (f *causalFeed) current(g int) uint64 {
	if s := f.steps(g); s != nil {
		return s.last()
	}
	return 0
}

// push adds the breakpoint (at, n) to knows[F][g].
//
// The G → know index is a slice while that costs at most about 64 bytes per
// G known plus 512 (when the G known are mostly the low indexes), a map
// after (for good).
func (f *causalFeed) push(g int, at, n uint64) {
	if s := f.steps(g); s != nil {
		s.push(at, n)
		return
	}
	i := len(f.know)
	f.know = append(f.know, steps{g: int32(g)})
	f.know[i].push(at, n)
	if f.kpos == nil && g < 8*len(f.know)+64 {
		if g >= len(f.kdense) {
			f.kdense = append(f.kdense, make([]int32, max(g+1, 2*len(f.kdense))-len(f.kdense))...)
		}
		f.kdense[g] = int32(i + 1)
		return
	}
	if f.kpos == nil {
		f.kpos = make(map[int]int32, len(f.know))
		for h, j := range f.kdense {
			if j > 0 {
				f.kpos[h] = j - 1
			}
		}
		f.kdense = nil
	}
	f.kpos[g] = int32(i)
}

// put records the held segment start..end-1 (start following deps). A
// segment, or the part of it, that is indexed already is dropped; one that
// starts where another waits is merged with it (the larger end; deps given
// win over none, and the first deps given over later ones: an entry's deps
// are fixed by its signed block, so two descriptions of one entry differ
// only by a caller's mistake).
func (f *causalFeed) put(start, end uint64, deps []dep) {
	if start < f.n {
		if end <= f.n {
			return
		}
		start, deps = f.n, nil
	}
	if p, ok := f.pending[start]; ok {
		if end > p.end {
			p.end = end
		}
		if len(p.deps) == 0 && len(deps) > 0 && !(f.busy && start == f.n) {
			p.deps, p.next = deps, 0
		}
		return
	}
	if f.pending == nil {
		f.pending = make(map[uint64]*causalSegment)
	}
	f.pending[start] = &causalSegment{start: start, end: end, deps: deps}
}

// causalMerge accumulates the new values of knows[F][·] for one segment.
type causalMerge struct {
	cand    []uint64 // candidate value per G (valid where stamp == epoch)
	base    []uint64 // knows[F][G] before the segment
	stamp   []uint32
	epoch   uint32
	touched []int
}

func (m *causalMerge) reset() {
	m.epoch++
	if m.epoch == 0 {
		clear(m.stamp)
		m.epoch = 1
	}
	m.touched = m.touched[:0]
}

// get returns the candidate for g (F's current value if untouched).
func (m *causalMerge) get(f *causalFeed, g int) uint64 {
	if g < len(m.stamp) && m.stamp[g] == m.epoch {
		return m.cand[g]
	}
	return f.current(g)
}

// raise makes the candidate for g at least v.
func (m *causalMerge) raise(f *causalFeed, g int, v uint64) {
	if g >= len(m.stamp) {
		n := max(g+1, 2*len(m.stamp))
		m.cand = append(m.cand, make([]uint64, n-len(m.cand))...)
		m.base = append(m.base, make([]uint64, n-len(m.base))...)
		m.stamp = append(m.stamp, make([]uint32, n-len(m.stamp))...)
	}
	if m.stamp[g] != m.epoch {
		m.stamp[g] = m.epoch
		b := f.current(g)
		m.base[g], m.cand[g] = b, b
		m.touched = append(m.touched, g)
	}
	if v > m.cand[g] {
		m.cand[g] = v
	}
}

// causalIndex is the happened-before index of a database's feeds. The zero
// value is empty and ready to use.
type causalIndex struct {
	mu    sync.RWMutex
	feeds []*causalFeed
	spare *causalMerge // a merge buffer to reuse (nil while in use)
	spent int          // work done since the write lock was last let go

	// yield, if set, is called between the chunks of a long segment, with
	// the lock not held (a test hook).
	yield func()
}

// feed returns the index of feed i, or nil.
func (x *causalIndex) feed(i int) *causalFeed {
	if i < 0 || i >= len(x.feeds) {
		return nil
	}
	return x.feeds[i]
}

// feedAt returns the index of feed i, creating it.
func (x *causalIndex) feedAt(i int) *causalFeed {
	if i >= len(x.feeds) {
		x.feeds = append(x.feeds, make([]*causalFeed, i+1-len(x.feeds))...)
	}
	f := x.feeds[i]
	if f == nil {
		f = new(causalFeed)
		x.feeds[i] = f
	}
	return f
}

// indexed tells whether entry p is indexed (x.mu held).
func (x *causalIndex) indexed(p pos) bool {
	f := x.feed(p.feed)
	return f != nil && p.seq < f.n
}

// add records that feed holds entries start..end-1, entry start following
// its predecessor and deps, each later one only its predecessor, and
// indexes whatever that makes ready. deps may name entries not added yet
// (the segment then waits), entries of feed itself before start (implied:
// ignored) or neverDep. add keeps no reference to deps. A segment with
// end ≤ start, or a feed outside 0..causalMaxFeed, is ignored.
func (x *causalIndex) add(feed int, start, end uint64, deps []dep) {
	if feed < 0 || feed > causalMaxFeed || end <= start {
		return
	}
	var own []dep
	if len(deps) > 0 {
		own = append([]dep(nil), deps...)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	f := x.feedAt(feed)
	if len(own) == 0 && start <= f.n && !f.busy && len(f.pending) == 0 {
		// The common case (a writer's next entries, a replica's in
		// order): nothing to merge, nothing pending; only waiters to wake.
		if end > f.n {
			f.n = end
			if len(f.waiters) > 0 && f.waiters[0].seq < f.n {
				x.drain(x.woken(f, nil))
			}
		}
		return
	}
	f.put(start, end, own)
	x.drain([]int{feed})
}

// woken pops the waiters of f that its indexed length has passed, and
// returns work with their feeds appended.
func (x *causalIndex) woken(f *causalFeed, work []int) []int {
	for len(f.waiters) > 0 && f.waiters[0].seq < f.n {
		w := heap.Pop(&f.waiters).(causalWaiter).feed
		x.feeds[w].waiting = false
		work = append(work, w)
	}
	return work
}

// drain indexes the ready segments of the feeds in work and of those their
// indexing wakes (x.mu held for writing; released between chunks of long
// segments).
func (x *causalIndex) drain(work []int) {
	for len(work) > 0 {
		k := work[len(work)-1]
		work = x.indexFeed(k, work[:len(work)-1])
	}
}

// indexFeed indexes feed k's segments from its indexed length on while they
// are held and ready, and returns work with the feeds it woke appended.
func (x *causalIndex) indexFeed(k int, work []int) []int {
	f := x.feeds[k]
	for !f.busy {
		seg := f.pending[f.n]
		if seg == nil {
			return work
		}
		f.busy = true
		if !x.ready(k, f, seg) {
			f.busy = false
			return work
		}
		if len(seg.deps) > 0 {
			x.merge(k, f, seg)
		}
		delete(f.pending, seg.start)
		if len(f.pending) == 0 {
			f.pending = nil // a map never shrinks: let a drained one go
		}
		f.n = seg.end
		f.busy = false
		x.tidy(f, seg.start)
		work = x.woken(f, work)
		x.spend() // a long cascade of segments lets others in too
	}
	return work
}

// ready tells whether every dep of seg (feed k's next segment) is indexed.
// If one is not, it registers k as waiting for it, unless it never comes.
func (x *causalIndex) ready(k int, f *causalFeed, seg *causalSegment) bool {
	for seg.next < len(seg.deps) {
		d := seg.deps[seg.next]
		if !(d.feed == k && d.seq < seg.start) && !x.indexed(d) {
			if d.feed >= 0 && d.feed <= causalMaxFeed && !f.waiting {
				heap.Push(&x.feedAt(d.feed).waiters, causalWaiter{seq: d.seq, feed: k})
				f.waiting = true
			}
			return false
		}
		seg.next++
		x.spend()
	}
	return true
}

// merge adds the breakpoints of seg (feed k's next segment, all deps
// indexed) to knows[k][·].
func (x *causalIndex) merge(k int, f *causalFeed, seg *causalSegment) {
	m := x.spare
	x.spare = nil
	if m == nil {
		m = new(causalMerge)
	}
	m.reset()
	for i := 0; i < len(seg.deps); i++ {
		d := seg.deps[i]
		if d.feed == k || m.get(f, d.feed) > d.seq {
			continue // implied by the predecessor, or already in the past
		}
		m.raise(f, d.feed, d.seq+1)
		h := x.feeds[d.feed]
		for j := 0; j < len(h.know); j++ {
			s := &h.know[j]
			if g := int(s.g); g != k {
				if v := s.count(d.seq); v > 0 {
					m.raise(f, g, v)
				}
			}
			x.spend()
		}
	}
	for _, g := range m.touched {
		if m.cand[g] > m.base[g] {
			f.push(g, seg.start, m.cand[g])
		}
		x.spend()
	}
	x.spare = m
}

// spend counts a unit of work done under the write lock, and every
// causalChunk units lets others take the lock.
func (x *causalIndex) spend() {
	if x.spent++; x.spent >= causalChunk {
		x.spent = 0
		x.pause()
	}
}

// pause lets others take the lock (x.mu held for writing).
func (x *causalIndex) pause() {
	x.mu.Unlock()
	if x.yield != nil {
		x.yield()
	}
	runtime.Gosched()
	x.mu.Lock()
}

// tidy moves the segments waiting at a start that F's indexing has just
// passed (from start on) to F's new indexed length: overlapping segments,
// which only a caller's mistake makes.
func (f *causalFeed) tidy(start uint64) {
	if len(f.pending) == 0 || f.n-start < 2 {
		return
	}
	var stale []*causalSegment
	if uint64(len(f.pending)) < f.n-start-1 {
		for s, p := range f.pending {
			if s > start && s < f.n {
				stale = append(stale, p)
			}
		}
	} else {
		for s := start + 1; s < f.n; s++ {
			if p, ok := f.pending[s]; ok {
				stale = append(stale, p)
			}
		}
	}
	for _, p := range stale {
		delete(f.pending, p.start)
		f.put(p.start, p.end, nil)
	}
}

// tidy is causalFeed.tidy (x.mu held).
func (x *causalIndex) tidy(f *causalFeed, start uint64) { f.tidy(start) }

// compare tells how entries a and b are related: Unknown unless both are
// indexed, then exactly Before, After, Concurrent or Same.
func (x *causalIndex) compare(a, b pos) Order {
	x.mu.RLock()
	defer x.mu.RUnlock()
	fa, fb := x.feed(a.feed), x.feed(b.feed)
	if fa == nil || fb == nil || a.seq >= fa.n || b.seq >= fb.n {
		return Unknown
	}
	if a.feed == b.feed {
		switch {
		case a.seq < b.seq:
			return Before
		case a.seq > b.seq:
			return After
		}
		return Same
	}
	if s := fb.steps(a.feed); s != nil && a.seq < s.count(b.seq) {
		return Before
	}
	if s := fa.steps(b.feed); s != nil && b.seq < s.count(a.seq) {
		return After
	}
	return Concurrent
}

// follows tells whether b happened before a (a is indexed and b is in its
// causal past). It is false if a is not indexed, and for a == b.
func (x *causalIndex) follows(a, b pos) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.followsLocked(x.feed(a.feed), a, b)
}

// causalReducePairwise bounds the heads reduce keeps as candidates while it
// compares each head with them; past it, it merges what each head knows.
var causalReducePairwise = 32

// reduce returns the context a writer of feed own, holding n entries of it,
// records for its next append, from heads: the last entry it holds of each
// other feed (at most one per feed). It keeps, in their order, the heads
// that neither its own last entry (own, n-1) follows (none if n is 0) nor
// another head follows. Heads of feed own are dropped. A head that is not
// indexed yet (the writer holds it, not all of its past) is kept and
// counts as following nothing (the context is then larger, never wrong).
// Cost: a lookup per head, then a lookup per head and candidate kept (see
// reduceMaximal: one each when the heads follow one another), and if more
// than causalReducePairwise heads are candidates at once, the breakpoint
// lists of their feeds (at most the index's size).
func (x *causalIndex) reduce(own int, n uint64, heads []dep) []dep {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []dep
	fo := x.feed(own)
	for _, h := range heads {
		if h.feed == own {
			continue
		}
		if n > 0 && x.followsLocked(fo, pos{own, n - 1}, h) {
			continue
		}
		out = append(out, h)
	}
	if len(out) < 2 {
		return out
	}
	if keep, ok := x.reduceMaximal(out); ok {
		return keep
	}
	known := make(map[int]uint64, len(out)) // feed → how many of its entries another head follows
	for _, h := range out {
		known[h.feed] = 0
	}
	for _, k := range out {
		f := x.feed(k.feed)
		if f == nil || k.seq >= f.n {
			continue
		}
		for i := range f.know {
			s := &f.know[i]
			if v, ok := known[int(s.g)]; ok {
				if c := s.count(k.seq); c > v {
					known[int(s.g)] = c
				}
			}
		}
	}
	keep := out[:0]
	for _, h := range out {
		if h.seq >= known[h.feed] {
			keep = append(keep, h)
		}
	}
	return keep
}

// reduceMaximal returns the heads (in their order) that no other head
// follows, keeping the candidates found so far: each head is compared with
// them, dropped if one follows it, else it replaces those it follows. Heads
// that follow one another (a writer that heard of many changes by gossip)
// keep one candidate: a follows per head. ok is false, and nothing is
// returned, once more than causalReducePairwise candidates are kept (x.mu
// held).
func (x *causalIndex) reduceMaximal(heads []dep) (keep []dep, ok bool) {
	var cand []int // indexes into heads, in order
next:
	for i, h := range heads {
		for _, j := range cand {
			if k := heads[j]; x.followsLocked(x.feed(k.feed), k, h) {
				continue next
			}
		}
		fh := x.feed(h.feed)
		cand = slices.DeleteFunc(cand, func(j int) bool { return x.followsLocked(fh, h, heads[j]) })
		if cand = append(cand, i); len(cand) > causalReducePairwise {
			return nil, false
		}
	}
	keep = make([]dep, len(cand))
	for n, j := range cand {
		keep[n] = heads[j]
	}
	return keep, true
}

// followsLocked is follows with x.mu held and fa the index of a's feed.
func (x *causalIndex) followsLocked(fa *causalFeed, a, b pos) bool {
	if fa == nil || a.seq >= fa.n {
		return false
	}
	if a.feed == b.feed {
		return b.seq < a.seq
	}
	s := fa.steps(b.feed)
	return s != nil && b.seq < s.count(a.seq)
}

// deliverable returns how many of feed's entries a causal view may have
// received, given that it has received entries 0..from-1 of it and
// delivered(g) entries of each other feed g: the largest end, from ≤ end ≤
// indexedLen(feed), such that no entry from..end-1 has in its causal past
// an entry of another feed beyond what was delivered. A view cuts its batch
// of feed there. delivered is called with the index's read lock held, once
// per feed that feed's entries know; it must not call the index. It
// returns from if from ≥ indexedLen(feed). Cost: a binary search per feed
// that feed's entries know.
func (x *causalIndex) deliverable(feed int, from uint64, delivered func(g int) uint64) uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	f := x.feed(feed)
	if f == nil || from >= f.n {
		return from
	}
	end := f.n
	for i := range f.know {
		s := &f.know[i]
		if at, ok := s.exceeds(delivered(int(s.g))); ok && at < end {
			end = max(at, from)
			if end == from {
				break
			}
		}
	}
	return end
}

// indexedLen returns how many entries of feed are indexed (a prefix).
func (x *causalIndex) indexedLen(feed int) uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if f := x.feed(feed); f != nil {
		return f.n
	}
	return 0
}

// waitingOn tells why entry (feed, seq) is not indexed: on is the entry
// its indexing waits for, followed through the chain of waiting segments to
// its end: an entry not held (waitNotHeld; possibly (feed, seq) itself), an
// entry of a cycle (waitCycle), neverDep (waitMalformed), or the first
// entry of a segment being indexed now (waitIndexing). For an indexed entry
// it returns waitNone. The chain visits each feed at most once.
func (x *causalIndex) waitingOn(feed int, seq uint64) (on pos, why waitReason) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	t := pos{feed, seq}
	if x.indexed(t) {
		return pos{}, waitNone
	}
	var seen map[int]bool
	for {
		if t.feed < 0 || t.feed > causalMaxFeed {
			return t, waitMalformed
		}
		f := x.feed(t.feed)
		if f == nil || !f.holds(t.seq) {
			return t, waitNotHeld
		}
		if seen[t.feed] {
			return t, waitCycle
		}
		if seen == nil {
			seen = make(map[int]bool)
		}
		seen[t.feed] = true
		h := pos{t.feed, f.n} // the feed's first entry not indexed
		seg := f.pending[f.n]
		switch {
		case seg == nil:
			return h, waitNotHeld
		case f.busy || seg.next >= len(seg.deps):
			return h, waitIndexing
		}
		t = seg.deps[seg.next]
	}
}

// holds tells whether entry seq of the feed is held (indexed or in a
// pending segment).
func (f *causalFeed) holds(seq uint64) bool {
	if seq < f.n {
		return true
	}
	if _, ok := f.pending[seq]; ok {
		return true
	}
	for _, p := range f.pending {
		if p.start <= seq && seq < p.end {
			return true
		}
	}
	return false
}
