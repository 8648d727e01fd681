package kappa

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// causalSeg is one append segment of a generated history.
type causalSeg struct {
	feed       int
	start, end uint64
	deps       []dep
}

// causalHistory is a random multi-writer history with the vector clock of
// every entry, computed by brute force: vc[f][s][g] is the number of g's
// entries in the causal past of (f, s), itself included.
//
// Writers are numbered 0..writers-1 in vc; the index knows writer w as
// feed ids[w] (segs use ids), spread out when sparse is set so that the
// index's sparse feed maps are exercised too.
type causalHistory struct {
	writers int
	segs    []causalSeg
	vc      [][][]uint64
	ids     []int
	writer  map[int]int // id → writer
}

// id translates p from writer numbers to the index's feed ids.
func (h *causalHistory) id(p pos) pos { return pos{h.ids[p.feed], p.seq} }

// genCausalHistory makes a history of writers writers: at each step one
// writer either receives a random prefix of another's feed (random
// delivery: what it holds need not be closed under causality), or appends
// a segment of 1–4 entries whose deps are heads of what it holds — all of
// them, a random subset, sometimes with a redundant dep on its own past.
func genCausalHistory(rng *rand.Rand, writers, steps int, sparse bool) *causalHistory {
	h := &causalHistory{writers: writers, vc: make([][][]uint64, writers), writer: make(map[int]int)}
	for w := range writers {
		id := w
		if sparse {
			id = w*1000 + 100 + rng.IntN(900)
		}
		h.ids = append(h.ids, id)
		h.writer[id] = w
	}
	had := make([][]uint64, writers)
	for w := range had {
		had[w] = make([]uint64, writers)
	}
	for range steps {
		w := rng.IntN(writers)
		if rng.IntN(3) == 0 {
			g := rng.IntN(writers)
			if g != w {
				n := uint64(len(h.vc[g]))
				had[w][g] += rng.Uint64N(n - had[w][g] + 1)
			}
			continue
		}
		start := uint64(len(h.vc[w]))
		var deps []dep
		all := rng.IntN(2) == 0
		for g, n := range had[w] {
			if g != w && n > 0 && (all || rng.IntN(2) == 0) {
				deps = append(deps, dep{g, n - 1 - rng.Uint64N(min(n, 2))})
			}
		}
		if start > 0 && rng.IntN(5) == 0 {
			deps = append(deps, dep{w, rng.Uint64N(start)})
		}
		rng.Shuffle(len(deps), func(i, j int) { deps[i], deps[j] = deps[j], deps[i] })
		k := 1 + rng.Uint64N(4)
		for s := start; s < start+k; s++ {
			v := make([]uint64, writers)
			if s > start {
				copy(v, h.vc[w][s-1])
			} else {
				if s > 0 {
					copy(v, h.vc[w][s-1])
				}
				for _, d := range deps {
					for g, c := range h.vc[d.feed][d.seq] {
						v[g] = max(v[g], c)
					}
				}
			}
			v[w] = s + 1
			h.vc[w] = append(h.vc[w], v)
		}
		for i, d := range deps {
			deps[i] = h.id(d)
		}
		h.segs = append(h.segs, causalSeg{h.ids[w], start, start + k, deps})
	}
	return h
}

// before tells by the vector clocks whether a happened before b.
func (h *causalHistory) before(a, b pos) bool {
	return a != b && h.vc[b.feed][b.seq][a.feed] > a.seq
}

// order is the expected compare(a, b) once both are indexed.
func (h *causalHistory) order(a, b pos) Order {
	switch {
	case a == b:
		return Same
	case h.before(a, b):
		return Before
	case h.before(b, a):
		return After
	}
	return Concurrent
}

// entries lists every entry of the history.
func (h *causalHistory) entries() []pos {
	var all []pos
	for f, v := range h.vc {
		for s := range v {
			all = append(all, pos{f, uint64(s)})
		}
	}
	return all
}

// checkCausalIndex checks x against the history given which entries were
// added: an entry must be indexed exactly when its whole causal past
// (itself included) is added, compare and follows must be exact between
// indexed entries and Unknown/false otherwise, and waitingOn must name an
// entry not added in the causal past of a waiting one.
func checkCausalIndex(t *testing.T, h *causalHistory, x *causalIndex, added [][]bool, what string) {
	t.Helper()
	prefix := make([]uint64, h.writers)
	for f := range added {
		for prefix[f] < uint64(len(added[f])) && added[f][prefix[f]] {
			prefix[f]++
		}
	}
	ready := func(p pos) bool {
		for g, c := range h.vc[p.feed][p.seq] {
			if c > prefix[g] {
				return false
			}
		}
		return true
	}
	all := h.entries()
	isReady := make(map[pos]bool, len(all))
	for f := range h.vc {
		n := uint64(0)
		for n < uint64(len(h.vc[f])) && ready(pos{f, n}) {
			n++
		}
		if got := x.indexedLen(h.ids[f]); got != n {
			t.Fatalf("%s: indexedLen(%d) = %d, want %d", what, f, got, n)
		}
		for s := range n {
			isReady[pos{f, s}] = true
		}
	}
	for _, a := range all {
		if !isReady[a] {
			on, why := x.waitingOn(h.ids[a.feed], a.seq)
			if why != waitNotHeld {
				t.Fatalf("%s: waitingOn(%v) = %v %v, want not held", what, a, on, why)
			}
			w, ok := h.writer[on.feed]
			if !ok {
				t.Fatalf("%s: waitingOn(%v) = %v, no such feed", what, a, on)
			}
			on.feed = w
			if on.feed < 0 || on.feed >= h.writers || (on.seq < uint64(len(added[on.feed])) && added[on.feed][on.seq]) {
				t.Fatalf("%s: waitingOn(%v) = %v, which is held", what, a, on)
			}
			if on != a && !h.before(on, a) {
				t.Fatalf("%s: waitingOn(%v) = %v, not in its causal past", what, a, on)
			}
		} else if on, why := x.waitingOn(h.ids[a.feed], a.seq); why != waitNone {
			t.Fatalf("%s: waitingOn(%v) = %v %v for an indexed entry", what, a, on, why)
		}
		for _, b := range all {
			want := Unknown
			if isReady[a] && isReady[b] {
				want = h.order(a, b)
			}
			if got := x.compare(h.id(a), h.id(b)); got != want {
				t.Fatalf("%s: compare(%v, %v) = %v, want %v", what, a, b, got, want)
			}
			if got, want := x.follows(h.id(a), h.id(b)), isReady[a] && h.before(b, a); got != want {
				t.Fatalf("%s: follows(%v, %v) = %v, want %v", what, a, b, got, want)
			}
		}
	}
}

// TestCausalIndexMatchesVectorClocks: random histories of 3–5 writers whose
// segments are added in random orders (deps not added yet included, some
// segments twice); after every add the index agrees exactly with brute-force
// vector clocks on what is indexed, on compare and follows for every pair,
// and waitingOn names a missing entry of the causal past.
func TestCausalIndexMatchesVectorClocks(t *testing.T) {
	trials := 300
	if testing.Short() {
		trials = 60
	}
	for trial := range trials {
		seed := uint64(trial)
		rng := rand.New(rand.NewPCG(seed, 18))
		h := genCausalHistory(rng, 3+rng.IntN(3), 10+rng.IntN(30), trial%2 == 1)
		added := make([][]bool, h.writers)
		for f := range added {
			added[f] = make([]bool, len(h.vc[f]))
		}
		order := rng.Perm(len(h.segs))
		var x causalIndex
		for i, si := range order {
			s := h.segs[si]
			x.add(s.feed, s.start, s.end, s.deps)
			for q := s.start; q < s.end; q++ {
				added[h.writer[s.feed]][q] = true
			}
			if rng.IntN(8) == 0 { // again, as a duplicate delivery would
				r := h.segs[order[rng.IntN(i+1)]]
				x.add(r.feed, r.start, r.end, r.deps)
			}
			checkCausalIndex(t, h, &x, added, fmt.Sprintf("seed %d, after %d of %d adds", seed, i+1, len(order)))
		}
	}
}

// TestCausalIndexPiecesInAnyOrder: the same histories with each segment
// given as a whole, entry by entry (as Put delivers them), or cut in
// pieces, and some pieces given again or overlapping others (sub-ranges of
// a segment, or its start with a shorter end), all in random order: after
// every add the index is exact for what is held.
func TestCausalIndexPiecesInAnyOrder(t *testing.T) {
	for seed := range uint64(80) {
		rng := rand.New(rand.NewPCG(seed, 19))
		h := genCausalHistory(rng, 3+rng.IntN(3), 40, seed%2 == 1)
		var pieces []causalSeg
		piece := func(s causalSeg, a, b uint64) {
			var deps []dep
			if a == s.start {
				deps = s.deps
			}
			pieces = append(pieces, causalSeg{s.feed, a, b, deps})
		}
		for _, s := range h.segs {
			switch rng.IntN(3) {
			case 0:
				piece(s, s.start, s.end)
			case 1:
				for q := s.start; q < s.end; q++ {
					piece(s, q, q+1)
				}
			case 2:
				for a := s.start; a < s.end; {
					b := a + 1 + rng.Uint64N(s.end-a)
					piece(s, a, b)
					a = b
				}
			}
			for range rng.IntN(3) {
				a := s.start + rng.Uint64N(s.end-s.start)
				piece(s, a, a+1+rng.Uint64N(s.end-a))
			}
		}
		rng.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
		added := make([][]bool, h.writers)
		for f := range added {
			added[f] = make([]bool, len(h.vc[f]))
		}
		var x causalIndex
		for i, s := range pieces {
			x.add(s.feed, s.start, s.end, s.deps)
			for q := s.start; q < s.end; q++ {
				added[h.writer[s.feed]][q] = true
			}
			if i%7 == 6 || i == len(pieces)-1 {
				checkCausalIndex(t, h, &x, added, fmt.Sprintf("seed %d, after %d of %d adds", seed, i+1, len(pieces)))
			}
		}
		if n := x.waiterCount(); n != 0 {
			t.Fatalf("seed %d: %d waiters left with everything indexed", seed, n)
		}
	}
}

// waiterCount returns the number of waiter records in all feeds.
func (x *causalIndex) waiterCount() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := 0
	for _, f := range x.feeds {
		if f != nil {
			n += len(f.waiters)
		}
	}
	return n
}

// TestCausalIndexCycleStaysUnknown: two feeds naming each other's future
// never index from there (no loop, no hang), waitingOn says cycle, and a
// third feed is unaffected except where it depends on the cycle.
func TestCausalIndexCycleStaysUnknown(t *testing.T) {
	var x causalIndex
	const a, b, c = 0, 1, 2
	x.add(a, 0, 3, nil)
	x.add(a, 3, 5, []dep{{b, 2}})    // a3 follows b2 ...
	x.add(b, 0, 4, []dep{{a, 4}})    // ... which follows b0, which follows a4, which follows a3
	x.add(c, 0, 2, []dep{{a, 1}})    // c0, c1 follow a1: fine
	x.add(c, 2, 3, []dep{{a, 3}})    // c2 follows a3: waits
	x.add(b, 4, 6, []dep{{c, 1}})    // b4 would follow b3: waits
	x.add(c, 3, 4, []dep{{c, 5}})    // c3 follows its own future: waits (behind c2 anyway)
	x.add(a+3, 0, 2, []dep{{c, 1}})  // a fourth feed on c1: fine
	x.add(a+3, 2, 3, []dep{{a, 99}}) // and on a future entry: not held
	for _, tc := range []struct {
		a, b pos
		want Order
	}{
		{pos{a, 1}, pos{c, 0}, Before},
		{pos{a, 2}, pos{c, 0}, Concurrent},
		{pos{c, 1}, pos{a + 3, 1}, Before},
		{pos{a, 0}, pos{a + 3, 0}, Before},
		{pos{a, 2}, pos{a, 1}, After},
		{pos{c, 1}, pos{a, 2}, Concurrent},
		{pos{a, 3}, pos{a, 0}, Unknown},
		{pos{b, 0}, pos{b, 0}, Unknown},
		{pos{b, 0}, pos{c, 0}, Unknown},
		{pos{c, 2}, pos{c, 1}, Unknown},
		{pos{a + 3, 2}, pos{a + 3, 0}, Unknown},
	} {
		if got := x.compare(tc.a, tc.b); got != tc.want {
			t.Errorf("compare(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	for f, n := range []uint64{3, 0, 2, 2} {
		if got := x.indexedLen(f); got != n {
			t.Errorf("indexedLen(%d) = %d, want %d", f, got, n)
		}
	}
	for _, tc := range []struct {
		e, on pos
		why   waitReason
	}{
		{pos{a, 3}, pos{a, 4}, waitCycle},
		{pos{b, 5}, pos{b, 2}, waitCycle},
		{pos{c, 3}, pos{a, 4}, waitCycle},
		{pos{a + 3, 2}, pos{a, 99}, waitNotHeld},
		{pos{a + 3, 7}, pos{a + 3, 7}, waitNotHeld},
		{pos{c, 1}, pos{}, waitNone},
	} {
		on, why := x.waitingOn(tc.e.feed, tc.e.seq)
		if on != tc.on || why != tc.why {
			t.Errorf("waitingOn(%v) = %v %v, want %v %v", tc.e, on, why, tc.on, tc.why)
		}
	}
	// The rest of the world goes on: a new feed on c1 and a1.
	x.add(5, 0, 1, []dep{{c, 1}, {a + 3, 1}})
	if got := x.compare(pos{a, 1}, pos{5, 0}); got != Before {
		t.Errorf("compare(a1, e0) = %v, want before", got)
	}
}

// TestCausalIndexMalformedContext: an entry given neverDep never indexes,
// stalls only what follows it, and waitingOn says malformed context.
func TestCausalIndexMalformedContext(t *testing.T) {
	var x causalIndex
	x.add(0, 0, 2, nil)
	x.add(0, 2, 3, []dep{neverDep})
	x.add(0, 3, 5, nil)
	x.add(1, 0, 1, []dep{{0, 1}})
	x.add(2, 0, 1, []dep{{0, 3}})
	if got := x.indexedLen(0); got != 2 {
		t.Errorf("indexedLen(0) = %d, want 2", got)
	}
	if got := x.compare(pos{0, 1}, pos{1, 0}); got != Before {
		t.Errorf("compare(0/1, 1/0) = %v, want before", got)
	}
	if got := x.compare(pos{0, 1}, pos{2, 0}); got != Unknown {
		t.Errorf("compare(0/1, 2/0) = %v, want unknown", got)
	}
	if on, why := x.waitingOn(2, 0); on != neverDep || why != waitMalformed {
		t.Errorf("waitingOn(2/0) = %v %v, want %v malformed context", on, why, neverDep)
	}
	// Adds that mean nothing change nothing.
	x.add(-1, 0, 1, nil)
	x.add(3, 5, 5, nil)
	if past := uint64(causalMaxFeed) + 1; past <= math.MaxInt { // not on 32 bits, where no int is past it
		x.add(int(past), 0, 1, nil)
	}
	if got := x.indexedLen(3); got != 0 {
		t.Errorf("indexedLen(3) = %d after an empty segment", got)
	}
}

// TestCausalIndexWideContextDoesNotStallOthers: a segment naming 100,000
// feeds is indexed in chunks with the lock released between them: while it
// is being indexed, another goroutine adds and compares other feeds' entries
// to completion. Then every named entry happened before it.
func TestCausalIndexWideContextDoesNotStallOthers(t *testing.T) {
	const feeds = 100_000
	var x causalIndex
	deps := make([]dep, 0, feeds)
	for g := 1; g <= feeds; g++ {
		x.add(g, 0, 1, nil)
		deps = append(deps, dep{g, 0})
	}
	x.add(feeds+1, 0, 1, nil)
	var once sync.Once
	var during Order
	var duringOn pos
	var duringWhy waitReason
	x.yield = func() {
		once.Do(func() {
			done := make(chan struct{})
			go func() {
				defer close(done)
				x.add(feeds+2, 0, 1, []dep{{feeds + 1, 0}})
				during = x.compare(pos{feeds + 1, 0}, pos{feeds + 2, 0})
				duringOn, duringWhy = x.waitingOn(0, 1)
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Error("another feed's add did not finish while a wide context was being indexed")
			}
		})
	}
	x.add(0, 0, 2, deps)
	x.yield = nil
	if during != Before {
		t.Errorf("while the wide context was indexed, compare of two other entries = %v, want before", during)
	}
	if duringOn != (pos{0, 0}) || duringWhy != waitIndexing {
		t.Errorf("while the wide context was indexed, waitingOn(0/1) = %v %v, want 0/0 indexing", duringOn, duringWhy)
	}
	if got := x.indexedLen(0); got != 2 {
		t.Fatalf("indexedLen(0) = %d, want 2", got)
	}
	for _, g := range []int{1, 2, feeds / 2, feeds} {
		if got := x.compare(pos{g, 0}, pos{0, 1}); got != Before {
			t.Errorf("compare(%d/0, 0/1) = %v, want before", g, got)
		}
	}
	if got := x.compare(pos{feeds + 1, 0}, pos{0, 0}); got != Concurrent {
		t.Errorf("compare(%d/0, 0/0) = %v, want concurrent", feeds+1, got)
	}
	// A feed that follows the wide entry learns all of it, in chunks too.
	chunks := 0
	x.yield = func() { chunks++ }
	x.add(feeds+3, 0, 1, []dep{{0, 1}})
	x.yield = nil
	if chunks < feeds/causalChunk {
		t.Errorf("%d chunks to follow an entry that knows %d feeds", chunks, feeds)
	}
	for _, g := range []int{1, feeds / 3, feeds} {
		if got := x.compare(pos{g, 0}, pos{feeds + 3, 0}); got != Before {
			t.Errorf("compare(%d/0, %d/0) = %v, want before", g, feeds+3, got)
		}
	}
}

// TestCausalIndexLongCascadeLetsOthersIn: one add that makes 100,000
// waiting segments ready indexes them in chunks, releasing the lock between
// them.
func TestCausalIndexLongCascadeLetsOthersIn(t *testing.T) {
	const n = 100_000
	var x causalIndex
	for s := uint64(n); s >= 1; s-- {
		x.add(1, s, s+1, nil)
	}
	chunks := 0
	x.yield = func() { chunks++ }
	x.add(1, 0, 1, nil)
	x.yield = nil
	if got := x.indexedLen(1); got != n+1 {
		t.Fatalf("indexedLen(1) = %d, want %d", got, n+1)
	}
	if chunks < n/causalChunk {
		t.Errorf("%d chunks to index %d segments in one add, want at least %d", chunks, n, n/causalChunk)
	}
}

// TestCausalIndexWaitingSegmentMemoryBounded: a segment naming 100,000
// entries that are not held holds one waiter record, however many of its
// deps arrive (in the worst order) and however often more of its own feed
// is added behind it; it indexes when the last arrives.
func TestCausalIndexWaitingSegmentMemoryBounded(t *testing.T) {
	const feeds = 100_000
	var x causalIndex
	deps := make([]dep, 0, feeds)
	for g := 1; g <= feeds; g++ {
		deps = append(deps, dep{g, 0})
	}
	x.add(0, 0, 1, deps)
	for s := uint64(1); s < 1000; s++ {
		x.add(0, s, s+1, []dep{{feeds + 1, s}})
	}
	if n := x.waiterCount(); n != 1 {
		t.Fatalf("%d waiter records for one waiting segment, want 1", n)
	}
	for g := feeds; g >= 1; g-- {
		x.add(g, 0, 1, nil)
		if g%10_000 == 0 {
			if n := x.waiterCount(); n != 1 {
				t.Fatalf("%d waiter records for one waiting segment, want 1", n)
			}
		}
	}
	if got := x.indexedLen(0); got != 1 {
		t.Fatalf("indexedLen(0) = %d, want 1", got)
	}
	if on, why := x.waitingOn(0, 1); on != (pos{feeds + 1, 1}) || why != waitNotHeld {
		t.Errorf("waitingOn(0/1) = %v %v", on, why)
	}
}

// TestCausalIndexConcurrentCompare: compares running while segments are
// added from several goroutines only ever give Unknown or the exact answer
// (run with -race).
func TestCausalIndexConcurrentCompare(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 18))
	h := genCausalHistory(rng, 5, 200, true)
	all := h.entries()
	var x causalIndex
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rr := rand.New(rand.NewPCG(uint64(r), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, b := all[rr.IntN(len(all))], all[rr.IntN(len(all))]
				if got := x.compare(h.id(a), h.id(b)); got != Unknown && got != h.order(a, b) {
					errs <- fmt.Errorf("compare(%v, %v) = %v, want %v", a, b, got, h.order(a, b))
					return
				}
				x.waitingOn(h.ids[a.feed], a.seq)
			}
		}()
	}
	order := rng.Perm(len(h.segs))
	var adders sync.WaitGroup
	for part := range 2 {
		adders.Add(1)
		go func() {
			defer adders.Done()
			for i := part; i < len(order); i += 2 {
				s := h.segs[order[i]]
				x.add(s.feed, s.start, s.end, s.deps)
			}
		}()
	}
	adders.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, a := range all {
		for _, b := range all {
			if got, want := x.compare(h.id(a), h.id(b)), h.order(a, b); got != want {
				t.Fatalf("compare(%v, %v) = %v, want %v", a, b, got, want)
			}
		}
	}
}

// TestCausalIndexWideValues: seqs and counts past 32 bits switch a step
// function to 64-bit breakpoints and stay exact.
func TestCausalIndexWideValues(t *testing.T) {
	var x causalIndex
	big := uint64(1) << 33
	x.add(1, 0, 10, nil)
	x.add(0, 0, 5, []dep{{1, 3}})
	x.add(0, 5, big, nil)
	x.add(0, big, big+1, []dep{{1, 8}})
	x.add(1, 10, big+10, nil)
	x.add(0, big+1, big+2, []dep{{1, big + 5}})
	for _, tc := range []struct {
		a, b pos
		want Order
	}{
		{pos{1, 3}, pos{0, 0}, Before},
		{pos{1, 4}, pos{0, big - 1}, Concurrent},
		{pos{1, 8}, pos{0, big}, Before},
		{pos{1, 9}, pos{0, big}, Concurrent},
		{pos{1, big + 5}, pos{0, big + 1}, Before},
		{pos{0, big + 1}, pos{1, big + 6}, Concurrent},
		{pos{0, big + 1}, pos{1, big + 5}, After},
	} {
		if got := x.compare(tc.a, tc.b); got != tc.want {
			t.Errorf("compare(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	for _, tc := range []struct{ delivered, from, want uint64 }{
		{3, 0, 0}, {4, 0, big}, {8, 0, big}, {9, 0, big + 1}, {9, big + 1, big + 1}, {big + 6, 0, big + 2}, {big + 6, big + 7, big + 7},
	} {
		if got := x.deliverable(0, tc.from, func(int) uint64 { return tc.delivered }); got != tc.want {
			t.Errorf("deliverable(0, %d, %d) = %d, want %d", tc.from, tc.delivered, got, tc.want)
		}
	}
}

// TestCausalIndexDenseThenSparse: a feed that knows low feed numbers, then
// a high one, switches its G → steps index from a slice to a map and keeps
// every answer.
func TestCausalIndexDenseThenSparse(t *testing.T) {
	var x causalIndex
	for g := 1; g <= 3; g++ {
		x.add(g, 0, 2, nil)
	}
	x.add(5000, 0, 2, nil)
	x.add(0, 0, 1, []dep{{1, 0}, {2, 1}, {3, 0}})
	x.add(0, 1, 2, []dep{{5000, 0}})
	x.add(0, 2, 3, []dep{{1, 1}})
	for _, tc := range []struct {
		a    pos
		want Order
	}{
		{pos{1, 0}, Before}, {pos{1, 1}, Concurrent}, {pos{2, 1}, Before}, {pos{3, 1}, Concurrent},
		{pos{5000, 0}, Before}, {pos{5000, 1}, Concurrent},
	} {
		if got := x.compare(tc.a, pos{0, 1}); got != tc.want {
			t.Errorf("compare(%v, 0/1) = %v, want %v", tc.a, got, tc.want)
		}
	}
	if got := x.compare(pos{1, 1}, pos{0, 2}); got != Before {
		t.Errorf("compare(1/1, 0/2) = %v, want before", got)
	}
	if x.feeds[0].kpos == nil {
		t.Error("feed 0 still has a dense index after learning feed 5000")
	}
}

// TestCausalIndexReduce: reduce keeps exactly the heads that neither the
// writer's last entry nor another head follows (brute-force vector clocks),
// comparing pairwise and by merging alike; a head not indexed is kept.
func TestCausalIndexReduce(t *testing.T) {
	defer func(n int) { causalReducePairwise = n }(causalReducePairwise)
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 20))
		h := genCausalHistory(rng, 3+rng.IntN(8), 120, seed%2 == 1)
		var x causalIndex
		for _, s := range h.segs {
			x.add(s.feed, s.start, s.end, s.deps)
		}
		for range 50 {
			w := rng.IntN(h.writers)
			n := rng.Uint64N(uint64(len(h.vc[w])) + 1)
			var heads []dep
			for g := range h.writers {
				if len(h.vc[g]) > 0 && rng.IntN(4) != 0 {
					heads = append(heads, dep{g, rng.Uint64N(uint64(len(h.vc[g])))})
				}
			}
			rng.Shuffle(len(heads), func(i, j int) { heads[i], heads[j] = heads[j], heads[i] })
			var want []dep
		next:
			for _, d := range heads {
				if d.feed == w || (n > 0 && h.before(d, pos{w, n - 1})) {
					continue
				}
				for _, k := range heads {
					if k.feed != w && h.before(d, k) {
						continue next
					}
				}
				want = append(want, h.id(d))
			}
			ids := make([]dep, len(heads))
			for i, d := range heads {
				ids[i] = h.id(d)
			}
			for _, pairwise := range []int{32, 0} {
				causalReducePairwise = pairwise
				got := x.reduce(h.ids[w], n, ids)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("seed %d, pairwise %d: reduce(%d, %d, %v) = %v, want %v", seed, pairwise, h.ids[w], n, ids, got, want)
				}
			}
		}
	}
	// A head not indexed is kept, and dominates nothing.
	var x causalIndex
	x.add(1, 0, 3, nil)
	x.add(2, 0, 1, []dep{{1, 2}, {3, 0}})
	for _, pairwise := range []int{32, 0} {
		causalReducePairwise = pairwise
		if got := x.reduce(0, 0, []dep{{1, 2}, {2, 0}}); fmt.Sprint(got) != fmt.Sprint([]dep{{1, 2}, {2, 0}}) {
			t.Errorf("pairwise %d: reduce with an unindexed head = %v", pairwise, got)
		}
	}
}

// TestCausalIndexDeliverable: where a causal view cuts a feed's batch,
// given what it has delivered of the others, agrees with brute-force vector
// clocks, with segments added in random order.
func TestCausalIndexDeliverable(t *testing.T) {
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 21))
		h := genCausalHistory(rng, 3+rng.IntN(3), 60, seed%2 == 1)
		var x causalIndex
		order := rng.Perm(len(h.segs))
		for i, si := range order {
			s := h.segs[si]
			x.add(s.feed, s.start, s.end, s.deps)
			if i%5 != 4 && i != len(order)-1 {
				continue
			}
			for range 20 {
				w := rng.IntN(h.writers)
				delivered := make([]uint64, h.writers)
				for g := range delivered {
					delivered[g] = rng.Uint64N(uint64(len(h.vc[g])) + 1)
				}
				n := x.indexedLen(h.ids[w])
				from := rng.Uint64N(n + 2)
				want := from
				for want < n {
					ok := true
					for g, c := range h.vc[w][want] {
						if g != w && c > delivered[g] {
							ok = false
						}
					}
					if !ok {
						break
					}
					want++
				}
				got := x.deliverable(h.ids[w], from, func(id int) uint64 { return delivered[h.writer[id]] })
				if got != want {
					t.Fatalf("seed %d: deliverable(%d, %d, %v) = %d, want %d (indexed %d)", seed, w, from, delivered, got, want, n)
				}
			}
		}
	}
}

// TestOrderString: the names of the orders.
func TestOrderString(t *testing.T) {
	for r, want := range map[waitReason]string{waitNone: "indexed", waitNotHeld: "not held", waitCycle: "cycle", waitMalformed: "malformed context", waitIndexing: "indexing"} {
		if got := r.String(); got != want {
			t.Errorf("waitReason(%d).String() = %q, want %q", int(r), got, want)
		}
	}
	for o, want := range map[Order]string{Unknown: "unknown", Before: "before", After: "after", Concurrent: "concurrent", Same: "same", 9: "Order(9)"} {
		if got := o.String(); got != want {
			t.Errorf("Order(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}
