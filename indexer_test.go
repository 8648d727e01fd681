package kappa

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// adder is multifeed-index's test view: it sums numbers and keeps its
// progress in memory that outlives the Core (a stand-in for a database).
type adder struct {
	sumView
	max      int
	delay    time.Duration
	stMu     sync.Mutex
	state    []byte
	fetchErr error
	clears   int
	indexed  int
}

func (a *adder) MaxBatch() int { return a.max }

func (a *adder) FetchState() ([]byte, error) {
	time.Sleep(a.delay)
	a.stMu.Lock()
	defer a.stMu.Unlock()
	return a.state, a.fetchErr
}

func (a *adder) StoreState(b []byte) error {
	time.Sleep(a.delay)
	a.stMu.Lock()
	defer a.stMu.Unlock()
	a.state = append([]byte(nil), b...)
	return nil
}

func (a *adder) ClearIndex() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.clears++
	a.sum = 0
	return nil
}

func (a *adder) Indexed(es []Entry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.indexed += len(es)
}

// progress decodes the stored state into entries indexed per feed.
func (a *adder) progress(t *testing.T) map[string]uint64 {
	t.Helper()
	a.stMu.Lock()
	defer a.stMu.Unlock()
	st, err := decodeIndexState(a.state)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for k, spans := range st.feeds {
		for _, s := range spans {
			out[k] += s.end - s.start
		}
	}
	return out
}

func ready(t *testing.T, c *Core, names ...string) {
	t.Helper()
	if err := c.Ready(ctxT(t), names...); err != nil {
		t.Fatal(err)
	}
}

// multifeed-index test/basic.js: "indexed event".
func TestIndexedEvent(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	a := &adder{}
	c.Use("a", 1, a)
	w, _ := c.Writer("w")
	appendJSON(t, w, 1, 2, 3, 4, 5, 6)
	appendJSON(t, w, 10)
	ready(t, c)
	a.mu.Lock()
	indexed := a.indexed
	a.mu.Unlock()
	if indexed != 7 || a.Sum() != 31 {
		t.Fatalf("Indexed saw %d entries by Ready, sum %d", indexed, a.Sum())
	}
}

// multifeed-index test/batch.js: "batch size".
func TestBatchSize(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	w, _ := c.Writer("w")
	w.Append([]byte("10"), []byte("10"), []byte("10"))
	a := &adder{max: 10}
	c.Use("a", 1, a)
	ready(t, c)
	if len(a.batches) != 1 || a.batches[0] != 3 || a.Sum() != 30 {
		t.Fatalf("batches %v sum %d", a.batches, a.Sum())
	}
}

// multifeed-index test/adder.js: "empty + ready called".
func TestEmptyReady(t *testing.T) {
	c := newCore(t, nil)
	c.Use("a", 1, &adder{})
	ready(t, c)
}

// multifeed-index test/adder.js: "adder", "adder /w slow versions",
// "adder /w async storage".
func TestAdder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		delay time.Duration
		async bool
	}{{"plain", 0, false}, {"slow state", 20 * time.Millisecond, false}, {"async map", 0, true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCore(t, &Options{ValueEncoding: "json"})
			a := &adder{max: 1, delay: tc.delay}
			var v View = a
			if tc.async {
				v = &slowMap{a}
			}
			c.Use("a", 1, v)
			w, _ := c.Writer("w")
			appendJSON(t, w, 10, 10, 10)
			ready(t, c)
			if a.Sum() != 30 {
				t.Fatalf("sum %d", a.Sum())
			}
			if p := a.progress(t); len(p) != 1 || p[string(w.Key())] != 3 {
				t.Fatalf("stored progress %v", p)
			}
		})
	}
}

// slowMap maps after a random pause, like the async storage tests.
type slowMap struct{ *adder }

func (s *slowMap) Map(es []Entry) error {
	time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
	return s.adder.Map(es)
}

// multifeed-index test/adder.js: "adder: picks up where it left off".
func TestAdderPicksUpWhereItLeftOff(t *testing.T) {
	s := NewMemStorage()
	c, _ := New(s, &Options{ValueEncoding: "json"})
	a := &adder{}
	c.Use("a", 1, a)
	w, _ := c.Writer("w")
	appendJSON(t, w, 10, 10, 10)
	ready(t, c)
	c.Close()

	c, _ = New(s, &Options{ValueEncoding: "json"})
	defer c.Close()
	b := &adder{state: a.state}
	c.Use("a", 1, b)
	w, _ = c.Writer("w")
	appendJSON(t, w, 7)
	ready(t, c)
	if b.Sum() != 7 || b.clears != 0 {
		t.Fatalf("second run summed %d (cleared %d times), want only the new 7", b.Sum(), b.clears)
	}
}

// multifeed-index test/adder.js: "adder /w many concurrent PUTs" and
// "adder /w index made AFTER db population".
func TestAdderManyAppends(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(fmt.Sprintf("index after data %v", after), func(t *testing.T) {
			c := newCore(t, &Options{ValueEncoding: "json"})
			a := &adder{max: 1}
			if !after {
				c.Use("a", 1, a)
			}
			w, _ := c.Writer("w")
			var wg sync.WaitGroup
			want := 0
			for i := range 200 {
				want += i
				wg.Add(1)
				go func() { defer wg.Done(); appendJSON(t, w, i) }()
			}
			wg.Wait()
			if after {
				c.Use("a", 1, a)
			}
			ready(t, c)
			if a.Sum() != want || a.progress(t)[string(w.Key())] != 200 {
				t.Fatalf("sum %d want %d", a.Sum(), want)
			}
		})
	}
}

// multifeed-index test/adder.js: "fs: adder" — on disk, slow state.
func TestAdderOnDisk(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, &Options{ValueEncoding: "json", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	a := &adder{delay: time.Millisecond}
	c.Use("a", 1, a)
	w, _ := c.Writer("w")
	want := 0
	for i := range 50 {
		appendJSON(t, w, i)
		want += i
	}
	ready(t, c)
	if a.Sum() != want || a.progress(t)[string(w.Key())] != 50 {
		t.Fatalf("sum %d want %d", a.Sum(), want)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// multifeed-index test/pause-resume.js: "pause while ready".
func TestPauseWhileReady(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	a := &adder{}
	c.Use("a", 1, a)
	w, _ := c.Writer("w")
	appendJSON(t, w, 1, 2, 3, 4, 5, 6)
	ready(t, c)
	if err := c.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	appendJSON(t, w, 10)
	time.Sleep(20 * time.Millisecond)
	if a.Sum() != 21 {
		t.Fatalf("a paused view indexed: sum %d", a.Sum())
	}
	c.Resume()
	ready(t, c)
	if a.Sum() != 31 {
		t.Fatalf("sum %d, want 31", a.Sum())
	}
}

// multifeed-index test/pause-resume.js: "pause while indexing".
func TestPauseWhileIndexing(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a := &adder{}
	c.Use("a", 1, viewFunc(func(es []Entry) error {
		once.Do(func() { close(started); <-release })
		return a.Map(es)
	}))
	w, _ := c.Writer("w")
	appendJSON(t, w, 1, 2, 3, 4, 5, 6)
	<-started
	paused := make(chan error)
	go func() { paused <- c.Pause(ctxT(t)) }()
	select {
	case <-paused:
		t.Fatal("Pause returned while a batch was being mapped")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	appendJSON(t, w, 10)
	ready(t, c) // at once, for a paused view
	if s := a.Sum(); s > 21 {
		t.Fatalf("paused view indexed the new entry: sum %d", s)
	}
	c.Resume()
	ready(t, c)
	if a.Sum() != 31 {
		t.Fatalf("sum %d, want 31", a.Sum())
	}
}

func TestPauseIsCounted(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	a := &adder{}
	x, _ := c.Use("a", 1, a)
	w, _ := c.Writer("w")
	c.Pause(ctxT(t))
	c.Pause(ctxT(t), "a")
	appendJSON(t, w, 5)
	c.Resume()
	time.Sleep(20 * time.Millisecond)
	if a.Sum() != 0 || x.Status().State != "paused" {
		t.Fatalf("one Resume of two Pauses let the view run: sum %d, %s", a.Sum(), x.Status().State)
	}
	c.Resume("a")
	ready(t, c)
	if a.Sum() != 5 {
		t.Fatalf("sum %d", a.Sum())
	}
}

// multifeed-index test/states.js.
func TestIndexStates(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	entered, release := make(chan struct{}, 1), make(chan struct{})
	gate := true
	var gmu sync.Mutex
	x, _ := c.Use("a", 1, viewFunc(func(es []Entry) error {
		gmu.Lock()
		g := gate
		gmu.Unlock()
		if g {
			entered <- struct{}{}
			<-release
		}
		return nil
	}))
	ready(t, c)
	if st := x.Status(); st.State != "idle" || st.Indexed != 0 || st.Total != 0 {
		t.Fatalf("new view: %+v", st)
	}
	w, _ := c.Writer("w")
	appendJSON(t, w, 1)
	<-entered
	waitState(t, x, "indexing")
	if st := x.Status(); st.Total != 1 || st.Indexed != 0 {
		t.Fatalf("while indexing: %+v", st)
	}
	paused := make(chan error)
	go func() { paused <- x.Pause(ctxT(t)) }()
	gmu.Lock()
	gate = false
	gmu.Unlock()
	close(release)
	<-paused
	if st := x.Status(); st.State != "paused" || st.Indexed != 1 || st.Total != 1 {
		t.Fatalf("paused: %+v", st)
	}
	appendJSON(t, w, 2)
	x.Resume()
	ready(t, c)
	if st := x.Status(); st.State != "idle" || st.Indexed != 2 || st.Total != 2 {
		t.Fatalf("after resume: %+v", st)
	}
}

func waitState(t *testing.T, x *Index, state ViewState) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for x.Status().State != state {
		if time.Now().After(deadline) {
			t.Fatalf("state %q, want %q", x.Status().State, state)
		}
		time.Sleep(time.Millisecond)
	}
}

// multifeed-index test/states.js: "error state".
func TestFetchStateErrorIsErrorState(t *testing.T) {
	var reported []error
	var mu sync.Mutex
	c := newCore(t, &Options{OnError: func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	boom := errors.New("boom")
	x, _ := c.Use("a", 1, &adder{fetchErr: boom})
	if err := c.Ready(ctxT(t), "a"); !errors.Is(err, boom) {
		t.Fatalf("ready: %v", err)
	}
	if st := x.Status(); st.State != "error" || !errors.Is(st.Err, boom) {
		t.Fatalf("status %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 1 || !errors.Is(reported[0], boom) {
		t.Fatalf("OnError got %v", reported)
	}
}

func TestMapErrorSurfacesAndLosesNoProgress(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	boom := errors.New("boom")
	a := &adder{max: 2}
	failed := false
	var seen []uint64
	var mu sync.Mutex
	c.Use("a", 1, viewFunc(func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			if e.Seq == 4 && !failed {
				failed = true
				return boom
			}
		}
		for _, e := range es {
			seen = append(seen, e.Seq)
		}
		return a.Map(es)
	}))
	w, _ := c.Writer("w")
	appendJSON(t, w, 1, 1, 1, 1, 1, 1, 1, 1)
	if err := c.Ready(ctxT(t)); !errors.Is(err, boom) {
		t.Fatalf("ready after a failed map: %v", err)
	}
	c.Retry()
	ready(t, c)
	mu.Lock()
	defer mu.Unlock()
	if a.Sum() != 8 || len(seen) != 8 {
		t.Fatalf("after resume: sum %d, seen %v", a.Sum(), seen)
	}
}

// multifeed-index test/version.js.
func TestVersionBumpRebuildsOnce(t *testing.T) {
	s := NewMemStorage()
	open := func(version int, a *adder) *Core {
		c, err := New(s, &Options{ValueEncoding: "json"})
		if err != nil {
			t.Fatal(err)
		}
		c.Use("a", version, a)
		w, _ := c.Writer("w")
		if w.Len() == 0 {
			appendJSON(t, w, 10, 10, 10)
		}
		ready(t, c)
		return c
	}
	a := &adder{}
	open(1, a).Close()
	if a.Sum() != 30 || a.clears != 1 {
		t.Fatalf("v1: sum %d clears %d", a.Sum(), a.clears)
	}
	// Same version: nothing to do.
	b := &adder{state: a.state}
	open(1, b).Close()
	if len(b.batches) != 0 || b.clears != 0 {
		t.Fatalf("same version re-indexed: %v, %d clears", b.batches, b.clears)
	}
	// New version: wiped once, every entry again (the seed kept the old
	// progress here and lost these rows).
	c2 := &adder{state: a.state}
	c2.sum = 999 // the old version's data
	open(2, c2).Close()
	if c2.clears != 1 || c2.Sum() != 30 || len(c2.batches) != 1 {
		t.Fatalf("v2: clears %d sum %d batches %v", c2.clears, c2.Sum(), c2.batches)
	}
	d := &adder{state: c2.state}
	open(2, d).Close()
	if len(d.batches) != 0 || d.clears != 0 {
		t.Fatalf("reopened v2 re-indexed: %v, %d clears", d.batches, d.clears)
	}
}

func TestUseAndReadyErrors(t *testing.T) {
	c := newCore(t, nil)
	c.Use("a", 1, &adder{})
	if _, err := c.Use("a", 1, &adder{}); !errors.Is(err, ErrViewExists) {
		t.Fatalf("use twice: %v", err)
	}
	if err := c.Ready(ctxT(t), "nope"); !errors.Is(err, ErrNoView) {
		t.Fatalf("ready of unknown view: %v", err)
	}
	if err := c.Pause(ctxT(t), "nope"); !errors.Is(err, ErrNoView) {
		t.Fatalf("pause of unknown view: %v", err)
	}
	if _, err := c.Use("b", -1, &adder{}); err == nil {
		t.Fatal("negative version accepted")
	}
}

// A view over 100 feeds takes turns: every feed gets a batch before any
// feed gets a second.
func TestIndexerIsFairAcrossFeeds(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	for i := range 100 {
		w, _ := c.Writer(fmt.Sprint("w", i))
		vals := make([][]byte, 50)
		for j := range vals {
			vals[j] = []byte("x")
		}
		w.Append(vals...)
	}
	var mu sync.Mutex
	var order []string
	c.Use("v", 1, &batcher{max: 10, fn: func(es []Entry) error {
		mu.Lock()
		order = append(order, string(es[0].Key))
		mu.Unlock()
		return nil
	}})
	ready(t, c)
	seen := map[string]bool{}
	for _, k := range order[:100] {
		if seen[k] {
			t.Fatalf("a feed got a second batch before all had one")
		}
		seen[k] = true
	}
	if len(order) != 500 {
		t.Fatalf("%d batches", len(order))
	}
}

type batcher struct {
	max int
	fn  func([]Entry) error
}

func (b *batcher) Map(es []Entry) error { return b.fn(es) }
func (b *batcher) MaxBatch() int        { return b.max }

// A replica with a hole is indexed up to the hole and past it, and the
// hole once it is filled.
func TestIndexerDoesNotStallOnAHole(t *testing.T) {
	src := newFeed(t, NewMemStorage(), nil)
	for i := range 30 {
		mustAppend(t, src, fmt.Sprint(i))
	}
	c := newCore(t, nil)
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[uint64]int{}
	c.Use("v", 1, viewFunc(func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			seen[e.Seq]++
		}
		return nil
	}))
	for _, rg := range [][2]uint64{{0, 10}, {20, 30}} {
		p, _ := src.Proof(rg[0], rg[1], 0)
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	ready(t, c)
	mu.Lock()
	if len(seen) != 20 || seen[25] != 1 || seen[15] != 0 {
		t.Fatalf("with a hole, indexed %d entries", len(seen))
	}
	mu.Unlock()
	p, _ := src.Proof(10, 20, 0)
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	ready(t, c)
	mu.Lock()
	defer mu.Unlock()
	for i := range uint64(30) {
		if seen[i] != 1 {
			t.Fatalf("entry %d seen %d times", i, seen[i])
		}
	}
}

func TestIndexStateEncodingRoundTrips(t *testing.T) {
	st := &indexState{version: 7, feeds: map[string][]span{
		string(make([]byte, 32)):            {{0, 10}, {20, 30}},
		string(append(make([]byte, 31), 1)): {{5, 6}},
	}}
	got, err := decodeIndexState(st.encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.version != 7 || len(got.feeds) != 2 || fmt.Sprint(got.feeds) != fmt.Sprint(st.feeds) {
		t.Fatalf("round trip: %+v", got)
	}
	b := st.encode()
	b[6] ^= 1
	if _, err := decodeIndexState(b); err == nil {
		t.Fatal("damaged state decoded")
	}
}

// Ready waits only for what was present when it was called.
func TestReadyUnderSteadyAppends(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	x, _ := c.Use("v", 1, viewFunc(func([]Entry) error { return nil }))
	w, _ := c.Writer("w")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			w.Append([]byte("x"))
		}
	}()
	for range 20 {
		n := w.Len()
		ready(t, c)
		if x.Status().Indexed < n {
			t.Fatalf("ready returned with %d indexed of %d", x.Status().Indexed, n)
		}
	}
}

// headsView is multifeed-index's kv test view: each entry names a key and
// the entries it replaces; the heads of a key are the entries nothing
// replaced yet.
type headsView struct {
	mu    sync.Mutex
	heads map[string]map[string]bool
	gone  map[string]bool
}

func (v *headsView) Map(es []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range es {
		var m struct {
			Key   string
			Links []string
		}
		if err := e.Decode(&m); err != nil {
			return err
		}
		id := fmt.Sprintf("%x@%d", e.Key[:4], e.Seq)
		if v.heads[m.Key] == nil {
			v.heads[m.Key] = map[string]bool{}
		}
		for _, l := range m.Links {
			v.gone[l] = true
			delete(v.heads[m.Key], l)
		}
		if !v.gone[id] {
			v.heads[m.Key][id] = true
		}
	}
	return nil
}

func (v *headsView) get(k string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for id := range v.heads[k] {
		out = append(out, id)
	}
	return out
}

// multifeed-index test/basic.js: "kv: create index then data".
func TestKVCreateIndexThenData(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	v := &headsView{heads: map[string]map[string]bool{}, gone: map[string]bool{}}
	c.Use("kv", 1, v)
	ready(t, c)
	if h := v.get("foo"); len(h) != 0 {
		t.Fatalf("heads before any data: %v", h)
	}
	w, _ := c.Writer("w")
	w.Append([]byte(`{"key":"foo","links":[]}`))
	first := fmt.Sprintf("%x@0", w.Key()[:4])
	w.Append([]byte(`{"key":"foo","links":["` + first + `"]}`))
	ready(t, c)
	if h := v.get("foo"); len(h) != 1 || h[0] != fmt.Sprintf("%x@1", w.Key()[:4]) {
		t.Fatalf("heads %v, want only entry 1", h)
	}
}

// multifeed-index test/states.js: "pausing when nothing is indexing".
func TestPauseWhenIdle(t *testing.T) {
	c := newCore(t, nil)
	x, _ := c.Use("a", 1, &adder{})
	ready(t, c)
	if err := x.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if st := x.Status().State; st != "paused" {
		t.Fatalf("state %q after pause", st)
	}
	x.Resume()
	if st := x.Status().State; st != "idle" {
		t.Fatalf("state %q after resume", st)
	}
}

// copyFeeds gives dst every entry of every feed of src, through proofs, as
// replication will.
func copyFeeds(t *testing.T, src, dst *Core) {
	t.Helper()
	for _, f := range src.Feeds() {
		if f.Len() == 0 {
			continue
		}
		r, err := dst.AddFeed(f.Key())
		if err != nil {
			t.Fatal(err)
		}
		if r.Writable() {
			continue
		}
		p, err := f.Proof(0, f.Len(), r.Len())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
}

// multifeed-index test/sync.js "multiple feeds" and test/adder.js "adder +
// sync": feeds arriving from a peer are indexed with the local ones.
func TestIndexFeedsFromAPeer(t *testing.T) {
	a := newCore(t, &Options{ValueEncoding: "json"})
	b := newCore(t, &Options{ValueEncoding: "json"})
	sa, sb := &adder{max: 50}, &adder{max: 50}
	a.Use("sum", 1, sa)
	b.Use("sum", 1, sb)
	for i, n := range []int{17, 12, 1} {
		w, _ := a.Writer(fmt.Sprint("a", i))
		appendJSON(t, w, n)
	}
	for i, n := range []int{11, 3} {
		w, _ := b.Writer(fmt.Sprint("b", i))
		appendJSON(t, w, n)
	}
	copyFeeds(t, a, b)
	copyFeeds(t, b, a)
	ready(t, a)
	ready(t, b)
	if sa.Sum() != 44 || sb.Sum() != 44 {
		t.Fatalf("sums %d and %d, want 44", sa.Sum(), sb.Sum())
	}
	if pa, pb := sa.progress(t), sb.progress(t); len(pa) != 5 || len(pb) != 5 {
		t.Fatalf("progress over %d and %d feeds", len(pa), len(pb))
	}
}
