package kappa

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// causalTruth is the causal order of entries computed the slow way: each
// entry's vector clock (for each feed, how many of its entries are in the
// entry's causal past) from its Entry.Deps and its predecessor.
type causalTruth struct {
	deps map[string][]Pos             // entryName → Deps
	vc   map[string]map[string]uint64 // entryName → feed key → count
}

func newCausalTruth() *causalTruth {
	return &causalTruth{deps: map[string][]Pos{}, vc: map[string]map[string]uint64{}}
}

// learn records the Deps of every entry a view of c maps.
func (ct *causalTruth) learn(t *testing.T, c *Core) {
	t.Helper()
	for k, e := range entriesOf(t, c) {
		ct.deps[k] = e.Deps
	}
}

// clock returns the vector clock of entry (key, seq).
func (ct *causalTruth) clock(t *testing.T, key []byte, seq uint64) map[string]uint64 {
	name := entryName(key, seq)
	if vc, ok := ct.vc[name]; ok {
		return vc
	}
	deps, ok := ct.deps[name]
	if !ok {
		t.Fatalf("no Deps learnt for %s", name)
	}
	vc := map[string]uint64{}
	raise := func(k string, n uint64) {
		if n > vc[k] {
			vc[k] = n
		}
	}
	if seq > 0 {
		for k, n := range ct.clock(t, key, seq-1) {
			raise(k, n)
		}
	}
	raise(string(key), seq)
	for _, d := range deps {
		for k, n := range ct.clock(t, d.Feed, d.Seq) {
			raise(k, n)
		}
		raise(string(d.Feed), d.Seq+1)
	}
	ct.vc[name] = vc
	return vc
}

// order is the brute-force Compare of two entries.
func (ct *causalTruth) order(t *testing.T, a, b Pos) Order {
	switch {
	case string(a.Feed) == string(b.Feed) && a.Seq == b.Seq:
		return Same
	case a.Seq < ct.clock(t, b.Feed, b.Seq)[string(a.Feed)]:
		return Before
	case b.Seq < ct.clock(t, a.Feed, a.Seq)[string(b.Feed)]:
		return After
	}
	return Concurrent
}

// complete tells whether c holds entry p and every entry in its causal past.
func (ct *causalTruth) complete(t *testing.T, c *Core, p Pos) bool {
	f := c.Feed(p.Feed)
	if f == nil || !f.Has(p.Seq) {
		return false
	}
	for k, n := range ct.clock(t, p.Feed, p.Seq) {
		g := c.Feed([]byte(k))
		if g == nil || !g.HasRange(0, n) {
			return false
		}
	}
	return true
}

// check compares Core.Compare on c with the brute force for every pair of
// entries c holds: exact where both are complete, Unknown elsewhere. It
// returns how many pairs were exact.
func (ct *causalTruth) check(t *testing.T, what string, c *Core) int {
	t.Helper()
	var held []Pos
	for _, f := range c.Feeds() {
		for s := range f.Len() {
			if f.Has(s) {
				held = append(held, Pos{f.Key(), s})
			}
		}
	}
	exact := 0
	kinds := map[Order]int{}
	defer func() { t.Logf("%s: %d entries held, %d pairs exact, %v", what, len(held), exact, kinds) }()
	for _, a := range held {
		for _, b := range held {
			got, err := c.Compare(a, b)
			if err != nil {
				t.Fatalf("%s: Compare: %v", what, err)
			}
			want := Unknown
			if ct.complete(t, c, a) && ct.complete(t, c, b) {
				want = ct.order(t, a, b)
				exact++
			}
			kinds[want]++
			if got != want {
				t.Fatalf("%s: Compare(%x@%d, %x@%d) = %v, want %v", what, a.Feed[:4], a.Seq, b.Feed[:4], b.Seq, got, want)
			}
		}
	}
	return exact
}

// Real writers in four databases (one sparse) append and replicate in
// random orders, sessions accepting random subsets of feeds and the sparse
// replica downloading random ranges: on every replica, Compare agrees with
// a vector clock computed from Entry.Deps for every pair of held entries
// whose causal past is held, and is Unknown for the others; after a reopen,
// once the index is rebuilt, the same.
func TestCompareAgreesWithVectorClocksAcrossReplicas(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { testCompareAcrossReplicas(t, seed) })
	}
}

func testCompareAcrossReplicas(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 18))
	const n = 4
	dirs := make([]string, n)
	opts := make([]*Options, n)
	cs := make([]*Core, n)
	var shared []byte
	for i := range cs {
		dirs[i] = t.TempDir()
		opts[i] = &Options{NoSync: true, SharedKey: shared, Sparse: i == n-1}
		c, err := Open(dirs[i], opts[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i], shared = c, c.SharedKey()
		opts[0].SharedKey = shared
	}
	ws := make([]*Feed, n)
	for i, c := range cs {
		ws[i] = mustWriter(t, c, "w")
	}
	for round := range 60 {
		switch r := rng.IntN(10); {
		case r < 5: // a writer appends one call of 1–3 values
			i := rng.IntN(n)
			appendN(t, ws[i], 1+rng.IntN(3), fmt.Sprintf("r%d-", round))
		case r < 8: // a session accepting a random subset of feeds
			i, j := rng.IntN(n), rng.IntN(n-1)
			if j >= i {
				j++
			}
			deny := map[string]bool{}
			for _, w := range ws {
				if rng.IntN(3) == 0 {
					deny[string(w.Key())] = true
				}
			}
			accept := func(key []byte) bool { return !deny[string(key)] }
			ea, eb := replicatePair(t, "pipe", cs[i], cs[j], &ReplicateOptions{Accept: accept}, &ReplicateOptions{Accept: accept})
			if ea != nil || eb != nil {
				t.Fatalf("replicate: %v / %v", ea, eb)
			}
		default: // the sparse replica downloads a random range from a peer
			sparseDownload(t, rng, cs[n-1], cs[rng.IntN(n-1)])
		}
	}
	ct := newCausalTruth()
	for _, c := range cs {
		ct.learn(t, c)
	}
	exact := 0
	for i, c := range cs {
		exact += ct.check(t, fmt.Sprint("replica ", i), c)
	}
	if exact == 0 {
		t.Fatal("no pair was comparable: the test tests nothing")
	}
	for i := range cs {
		if err := cs[i].Close(); err != nil {
			t.Fatal(err)
		}
		c, err := Open(dirs[i], opts[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
		if err := c.causalReady(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		ct.check(t, fmt.Sprint("replica ", i, " reopened"), c)
	}
}

// sparseDownload has sparse replica s fetch a random range of a feed that
// peer p holds (within p's contiguous prefix), over a live session.
func sparseDownload(t *testing.T, rng *rand.Rand, s, p *Core) {
	t.Helper()
	var cands []*Feed
	for _, f := range p.Feeds() {
		if f.NextMissing(0) > 0 && s.Feed(f.Key()) != nil {
			cands = append(cands, f)
		}
	}
	if len(cands) == 0 {
		return
	}
	f := cands[rng.IntN(len(cands))]
	h := min(f.NextMissing(0), f.Len())
	a := rng.Uint64N(h)
	b := a + 1 + rng.Uint64N(h-a)
	ca, cb := connPair(t, "pipe")
	ctx, cancel := context.WithCancel(ctxT(t))
	errs := make(chan error, 2)
	live := &ReplicateOptions{Live: true}
	go func() { errs <- s.Replicate(ctx, ca, true, live) }()
	go func() { errs <- p.Replicate(ctx, cb, false, live) }()
	err := s.Feed(f.Key()).Download(ctx, a, b)
	cancel()
	<-errs
	<-errs
	if err != nil {
		t.Fatalf("download [%d, %d): %v", a, b, err)
	}
}

// A context may name a feed the database does not hold: its entries are
// Unknown until that feed arrives, then exact (the placeholder number).
func TestCompareWaitsForAFeedNamedButNotHeld(t *testing.T) {
	x, y := sharedPair(t, &Options{NoSync: true})
	a, b := mustWriter(t, x, "a"), mustWriter(t, x, "b")
	appendN(t, a, 1, "a")
	appendN(t, b, 2, "b") // b 0 names a@0
	onlyB := &ReplicateOptions{Accept: func(k []byte) bool { return string(k) == string(b.Key()) }}
	if ea, eb := replicatePair(t, "pipe", x, y, nil, onlyB); ea != nil || eb != nil {
		t.Fatalf("replicate: %v / %v", ea, eb)
	}
	b0, b1, a0 := Pos{b.Key(), 0}, Pos{b.Key(), 1}, Pos{a.Key(), 0}
	if y.Feed(a.Key()) != nil || y.Feed(b.Key()) == nil || y.Feed(b.Key()).Downloaded() != 2 {
		t.Fatal("y should hold b alone")
	}
	for _, p := range [][2]Pos{{b0, b1}, {a0, b0}} {
		if o, err := y.Compare(p[0], p[1]); err != nil || o != Unknown {
			t.Fatalf("without a: Compare = %v, %v; want unknown", o, err)
		}
	}
	mustReplicate(t, "pipe", x, y)
	for _, c := range []*Core{x, y} {
		if o, err := c.Compare(b0, b1); err != nil || o != Before {
			t.Fatalf("Compare(b0, b1) = %v, %v; want before", o, err)
		}
		if o, err := c.Compare(b1, a0); err != nil || o != After {
			t.Fatalf("Compare(b1, a0) = %v, %v; want after", o, err)
		}
	}
}

// Contexts are reduced: 50 writers each append after the one before, and
// each names only that one; a writer that saw all 50 names one head.
func TestContextNamesOnlyHeadsNothingElseCovers(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	ws := make([]*Feed, 50)
	for i := range ws {
		ws[i] = mustWriter(t, c, fmt.Sprint("w", i))
		appendN(t, ws[i], 1, "w")
	}
	last := mustWriter(t, c, "last")
	appendN(t, last, 1, "last")
	es := entriesOf(t, c)
	for i := 1; i < len(ws); i++ {
		checkDeps(t, fmt.Sprint("w", i), mustEntry(t, es, ws[i], 0), Pos{ws[i-1].Key(), 0})
	}
	checkDeps(t, "last", mustEntry(t, es, last, 0), Pos{ws[49].Key(), 0})
	if o, err := c.Compare(Pos{ws[0].Key(), 0}, Pos{last.Key(), 0}); err != nil || o != Before {
		t.Fatalf("Compare(w0, last) = %v, %v; want before", o, err)
	}
}

// A malformed context is a dependency that never comes: its entry and the
// feed's later ones are Unknown; Compare refuses a bad key and a closed
// database.
func TestCompareMalformedBadPosAndClosed(t *testing.T) {
	src := newFeed(t, NewMemStorage(), nil)
	appendRawBlocks(t, src, []byte("\x00zero"), []byte("\x05bad"), []byte("\x00two"))
	c := newCore(t, &Options{NoSync: true})
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, src, 0, 3)
	k := src.Key()
	if o, _ := c.Compare(Pos{k, 0}, Pos{k, 0}); o != Same {
		t.Fatalf("Compare of the well-formed first entry with itself: %v", o)
	}
	for _, s := range []uint64{1, 2} {
		if o, _ := c.Compare(Pos{k, 0}, Pos{k, s}); o != Unknown {
			t.Fatalf("Compare(0, %d) past a malformed context: %v, want unknown", s, o)
		}
	}
	if _, err := c.Compare(Pos{k[:31], 0}, Pos{k, 0}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("Compare of a 31-byte key: %v", err)
	}
	c.Close()
	if _, err := c.Compare(Pos{k, 0}, Pos{k, 0}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Compare after Close: %v", err)
	}
}

// Compare inside Map: every entry a view is given is indexed already (the
// index learns entries before they are published), so comparing it with
// its predecessor and its Deps never says Unknown, while writers append.
func TestCompareInsideMapKnowsTheEntriesMapped(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	ws := []*Feed{mustWriter(t, c, "a"), mustWriter(t, c, "b"), mustWriter(t, c, "c")}
	errs := make(chan error, 1)
	bad := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	x := mustUse(t, c, "cmp", 1, viewFunc(func(es []Entry) error {
		for _, e := range es {
			here := Pos{e.Key, e.Seq}
			want := map[*Pos]Order{}
			if e.Seq > 0 {
				want[&Pos{e.Key, e.Seq - 1}] = Before
			}
			for i := range e.Deps {
				want[&e.Deps[i]] = Before
			}
			for p, o := range want {
				if got, err := c.Compare(*p, here); err != nil || got != o {
					bad(fmt.Errorf("in Map: Compare(%x@%d, %x@%d) = %v, %v; want %v", p.Feed[:4], p.Seq, e.Key[:4], e.Seq, got, err, o))
				}
			}
		}
		return nil
	}))
	done := make(chan error, len(ws))
	for i, w := range ws {
		go func() {
			for k := range 40 {
				if _, err := w.Append([]byte(fmt.Sprint(i, k)), []byte("x")); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range ws {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// The rebuild after open takes feeds in turns, a bounded step each: a
// small feed is indexed before a huge one is done; Open does not wait for
// it, and once it is done Compare answers as before the reopen.
func TestRebuildTakesFeedsInTurns(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	big, small := mustWriter(t, c, "big"), mustWriter(t, c, "small")
	appendN(t, small, 1, "s")
	vals := make([][]byte, 12288) // three steps
	for i := range vals {
		vals[i] = []byte("v")
	}
	// Its first block names small's: big's blocks must be read.
	if _, err := big.Append(vals...); err != nil {
		t.Fatal(err)
	}
	appendN(t, small, 2, "s") // names big's last entry
	bigKey, smallKey := big.Key(), small.Key()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var steps []string
	causalRebuildStepped = func(f *Feed, start, end uint64) {
		mu.Lock()
		defer mu.Unlock()
		name := "big"
		if string(f.Key()) == string(smallKey) {
			name = "small"
		}
		steps = append(steps, fmt.Sprintf("%s[%d,%d)", name, start, end))
	}
	defer func() { causalRebuildStepped = nil }()
	c, err = Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.causalReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(steps)
	mu.Unlock()
	want := fmt.Sprint([]string{"big[0,4096)", "small[0,3)", "big[4096,8192)", "big[8192,12288)"})
	if got != want {
		t.Fatalf("rebuild steps %s, want %s", got, want)
	}
	if o, err := c.Compare(Pos{bigKey, 0}, Pos{smallKey, 2}); err != nil || o != Before {
		t.Fatalf("after the rebuild: Compare = %v, %v; want before", o, err)
	}
	if o, err := c.Compare(Pos{smallKey, 0}, Pos{bigKey, 0}); err != nil || o != Before {
		t.Fatalf("after the rebuild: Compare = %v, %v; want before", o, err)
	}
}

// A writer that appended every block without a context (as a lone writer
// does) says so in its newest signature record: the rebuild after open
// adds its entries without reading them, in one step, and Compare answers
// for them. Once its blocks carry contexts, they are read again.
func TestRebuildDoesNotReadAWritersBlocksWithoutContext(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	lone := mustWriter(t, c, "lone")
	vals := make([][]byte, 12288)
	for i := range vals {
		vals[i] = []byte("v")
	}
	if _, err := lone.Append(vals...); err != nil {
		t.Fatal(err)
	}
	key := lone.Key()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rebuild := func() (string, *Core) {
		var mu sync.Mutex
		var steps []string
		causalRebuildStepped = func(f *Feed, start, end uint64) {
			mu.Lock()
			defer mu.Unlock()
			steps = append(steps, fmt.Sprintf("%x[%d,%d)", f.Key()[:2], start, end))
		}
		defer func() { causalRebuildStepped = nil }()
		c, err := Open(dir, &Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.causalReady(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprint(steps), c
	}
	got, c := rebuild()
	if want := fmt.Sprintf("[%x[0,12288)]", key[:2]); got != want {
		t.Fatalf("rebuild steps %s, want %s", got, want)
	}
	if o, err := c.Compare(Pos{key, 0}, Pos{key, 12287}); err != nil || o != Before {
		t.Fatalf("after the rebuild: Compare = %v, %v; want before", o, err)
	}
	other := mustWriter(t, c, "other")
	appendN(t, other, 1, "o")
	lone = mustWriter(t, c, "lone")
	appendN(t, lone, 1, "l") // names other's entry
	otherKey := other.Key()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, c = rebuild()
	defer c.Close()
	if strings.Contains(got, fmt.Sprintf("%x[0,12289)", key[:2])) {
		t.Fatalf("rebuild steps %s: the writer's blocks with a context were not read", got)
	}
	if o, err := c.Compare(Pos{otherKey, 0}, Pos{key, 12288}); err != nil || o != Before {
		t.Fatalf("after the rebuild: Compare = %v, %v; want before", o, err)
	}
}
