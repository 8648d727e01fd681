package kappa

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	mustUse(t, c, "a", 1, a)
	w := mustWriter(t, c, "w")
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
	w := mustWriter(t, c, "w")
	mustAppend(t, w, "10", "10", "10")
	a := &adder{max: 10}
	mustUse(t, c, "a", 1, a)
	ready(t, c)
	if len(a.batches) != 1 || a.batches[0] != 3 || a.Sum() != 30 {
		t.Fatalf("batches %v sum %d", a.batches, a.Sum())
	}
}

// multifeed-index test/adder.js: "empty + ready called".
func TestEmptyReady(t *testing.T) {
	c := newCore(t, nil)
	mustUse(t, c, "a", 1, &adder{})
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
			mustUse(t, c, "a", 1, v)
			w := mustWriter(t, c, "w")
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
	c, err := New(s, &Options{ValueEncoding: "json"})
	if err != nil {
		t.Fatal(err)
	}
	a := &adder{}
	mustUse(t, c, "a", 1, a)
	w := mustWriter(t, c, "w")
	appendJSON(t, w, 10, 10, 10)
	ready(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c, err = New(s, &Options{ValueEncoding: "json"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := &adder{state: a.state}
	mustUse(t, c, "a", 1, b)
	w = mustWriter(t, c, "w")
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
				mustUse(t, c, "a", 1, a)
			}
			w := mustWriter(t, c, "w")
			var wg sync.WaitGroup
			want := 0
			for i := range 200 {
				want += i
				wg.Add(1)
				go func() { defer wg.Done(); appendJSON(t, w, i) }()
			}
			wg.Wait()
			if after {
				mustUse(t, c, "a", 1, a)
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
	mustUse(t, c, "a", 1, a)
	w := mustWriter(t, c, "w")
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
	x := mustUse(t, c, "a", 1, a)
	w := mustWriter(t, c, "w")
	appendJSON(t, w, 1, 2, 3, 4, 5, 6)
	ready(t, c)
	if err := c.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	appendJSON(t, w, 10)
	viewHasLooked(t, x)
	if a.Sum() != 21 {
		t.Fatalf("a paused view indexed: sum %d", a.Sum())
	}
	if st := x.Status(); st.State != "paused" || st.Indexed != 6 || st.Total != 7 {
		t.Fatalf("paused view with a new entry: %+v", st)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
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
	releaseMap := sync.OnceFunc(func() { close(release) })
	defer releaseMap() // if the test fails: Close would wait for Map
	a := &adder{}
	x := mustUse(t, c, "a", 1, viewFunc(func(es []Entry) error {
		once.Do(func() { close(started); <-release })
		return a.Map(es)
	}))
	w := mustWriter(t, c, "w")
	appendJSON(t, w, 1, 2, 3, 4, 5, 6)
	await(t, started, "the first batch")
	// Pause must wait for the batch held in Map. Given a context that has
	// already ended it cannot, so it fails with the context's error and
	// undoes itself; a Pause that did not wait would return nil.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := x.Pause(ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pause with an ended context while a batch was being mapped: %v, want context.Canceled", err)
	}
	if st := x.Status(); st.State != "indexing" {
		t.Fatalf("a Pause that failed left the view %q", st.State)
	}
	paused := make(chan error, 1)
	go func() { paused <- c.Pause(ctxT(t)) }()
	releaseMap()
	if err := await(t, paused, "Pause"); err != nil {
		t.Fatal(err)
	}
	// The batch held in Map was entry 0, 1; more entries were appended
	// meanwhile, and may or may not have been mapped before the pause.
	atPause := a.Sum()
	if atPause == 0 {
		t.Fatal("Pause returned before the batch it waited for was mapped")
	}
	appendJSON(t, w, 10)
	ready(t, c) // at once, for a paused view
	viewHasLooked(t, x)
	if s := a.Sum(); s != atPause {
		t.Fatalf("paused view went on mapping: sum %d, %d when Pause returned", s, atPause)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	ready(t, c)
	if a.Sum() != 31 {
		t.Fatalf("sum %d, want 31", a.Sum())
	}
}

func TestPauseIsCounted(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	a := &adder{}
	x := mustUse(t, c, "a", 1, a)
	w := mustWriter(t, c, "w")
	if err := c.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	appendJSON(t, w, 5)
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	viewHasLooked(t, x)
	if a.Sum() != 0 || x.Status().State != "paused" {
		t.Fatalf("one Resume of two Pauses let the view run: sum %d, %s", a.Sum(), x.Status().State)
	}
	if err := c.Resume("a"); err != nil {
		t.Fatal(err)
	}
	ready(t, c)
	if a.Sum() != 5 {
		t.Fatalf("sum %d", a.Sum())
	}
}

// multifeed-index test/states.js.
func TestIndexStates(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	entered, release := make(chan struct{}, 1), make(chan struct{})
	releaseMap := sync.OnceFunc(func() { close(release) })
	defer releaseMap() // if the test fails: Close would wait for Map
	gate := true
	var gmu sync.Mutex
	x := mustUse(t, c, "a", 1, viewFunc(func(es []Entry) error {
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
	w := mustWriter(t, c, "w")
	appendJSON(t, w, 1)
	await(t, entered, "the batch")
	if st := x.Status(); st.State != "indexing" || st.Total != 1 || st.Indexed != 0 {
		t.Fatalf("while indexing: %+v", st)
	}
	paused := make(chan error, 1)
	go func() { paused <- x.Pause(ctxT(t)) }()
	gmu.Lock()
	gate = false
	gmu.Unlock()
	releaseMap()
	if err := await(t, paused, "Pause"); err != nil {
		t.Fatal(err)
	}
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

// viewHasLooked returns once x's goroutine has finished a pass over its
// work that began after the call: whatever the view would do with what is
// present now, it has done (a paused view: nothing). The goroutine takes
// the token in x.wake, a channel of one slot, only between passes; so a
// send completes only once the token before it was taken, and after three
// sends the goroutine has taken the second token, which it does only after
// the pass that taking the first one began.
func viewHasLooked(t testing.TB, x *Index) {
	t.Helper()
	ctx := ctxT(t)
	for range 3 {
		select {
		case x.wake <- struct{}{}:
		case <-ctx.Done():
			t.Fatalf("view %q took no wake-up: %v", x.Name(), ctx.Err())
		}
	}
}

// await receives from ch. It fails the test only if ctxT's hang detector
// ends first.
func await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctxT(t).Done():
	}
	t.Fatalf("still waiting for %s", what)
	var zero T
	return zero
}

// multifeed-index test/states.js: "error state".
func TestFetchStateErrorIsErrorState(t *testing.T) {
	var reported []error
	var mu sync.Mutex
	c := newCore(t, &Options{OnError: func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	boom := errors.New("boom")
	x := mustUse(t, c, "a", 1, &adder{fetchErr: boom})
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
	mustUse(t, c, "a", 1, viewFunc(func(es []Entry) error {
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
	w := mustWriter(t, c, "w")
	appendJSON(t, w, 1, 1, 1, 1, 1, 1, 1, 1)
	if err := c.Ready(ctxT(t)); !errors.Is(err, boom) {
		t.Fatalf("ready after a failed map: %v", err)
	}
	if err := c.Retry(); err != nil {
		t.Fatal(err)
	}
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
	// open runs the view at a version until it is ready, and closes.
	open := func(version int, a *adder) {
		t.Helper()
		c, err := New(s, &Options{ValueEncoding: "json"})
		if err != nil {
			t.Fatal(err)
		}
		mustUse(t, c, "a", version, a)
		w := mustWriter(t, c, "w")
		if w.Len() == 0 {
			appendJSON(t, w, 10, 10, 10)
		}
		ready(t, c)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	a := &adder{}
	open(1, a)
	if a.Sum() != 30 || a.clears != 1 {
		t.Fatalf("v1: sum %d clears %d", a.Sum(), a.clears)
	}
	// Same version: nothing to do.
	b := &adder{state: a.state}
	open(1, b)
	if len(b.batches) != 0 || b.clears != 0 {
		t.Fatalf("same version re-indexed: %v, %d clears", b.batches, b.clears)
	}
	// New version: wiped once, every entry again (the seed kept the old
	// progress here and lost these rows).
	c2 := &adder{state: a.state}
	c2.sum = 999 // the old version's data
	open(2, c2)
	if c2.clears != 1 || c2.Sum() != 30 || len(c2.batches) != 1 {
		t.Fatalf("v2: clears %d sum %d batches %v", c2.clears, c2.Sum(), c2.batches)
	}
	d := &adder{state: c2.state}
	open(2, d)
	if len(d.batches) != 0 || d.clears != 0 {
		t.Fatalf("reopened v2 re-indexed: %v, %d clears", d.batches, d.clears)
	}
}

func TestUseAndReadyErrors(t *testing.T) {
	c := newCore(t, nil)
	mustUse(t, c, "a", 1, &adder{})
	if _, err := c.Use("a", 1, &adder{}); !errors.Is(err, ErrViewExists) {
		t.Fatalf("use twice: %v", err)
	}
	if err := c.Ready(ctxT(t), "nope"); !errors.Is(err, ErrNoView) {
		t.Fatalf("ready of unknown view: %v", err)
	}
	if err := c.Pause(ctxT(t), "nope"); !errors.Is(err, ErrNoView) {
		t.Fatalf("pause of unknown view: %v", err)
	}
	if _, err := c.Use("b", -1, &adder{}); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("negative version: %v, want ErrInvalidValue", err)
	}
}

// A view over 100 feeds takes turns: every feed gets a batch before any
// feed gets a second.
func TestIndexerIsFairAcrossFeeds(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	for i := range 100 {
		w := mustWriter(t, c, fmt.Sprint("w", i))
		vals := make([][]byte, 50)
		for j := range vals {
			vals[j] = []byte("x")
		}
		if _, err := w.Append(vals...); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var order []string
	mustUse(t, c, "v", 1, &batcher{max: 10, fn: func(es []Entry) error {
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
	mustUse(t, c, "v", 1, viewFunc(func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			seen[e.Seq]++
		}
		return nil
	}))
	for _, rg := range [][2]uint64{{0, 10}, {20, 30}} {
		p, err := src.Proof(rg[0], rg[1], 0)
		if err != nil {
			t.Fatal(err)
		}
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
	p, err := src.Proof(10, 20, 0)
	if err != nil {
		t.Fatal(err)
	}
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
	if _, err := decodeIndexState(b); !errors.Is(err, errBadState) {
		t.Fatalf("damaged state: %v, want errBadState", err)
	}
}

// Ready waits only for what was present when it was called.
func TestReadyUnderSteadyAppends(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	x := mustUse(t, c, "v", 1, viewFunc(func([]Entry) error { return nil }))
	w := mustWriter(t, c, "w")
	stop, appendErr := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				appendErr <- nil
				return
			default:
			}
			if _, err := w.Append([]byte("x")); err != nil {
				appendErr <- err
				return
			}
		}
	}()
	defer func() {
		close(stop)
		if err := <-appendErr; err != nil {
			t.Errorf("append: %v", err)
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

// A Ready that its context ends takes back what it waits for: the view
// keeps no wait of it, and goes on to serve the next Ready.
func TestReadyEndedByItsContextLeavesNoWait(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	w := mustWriter(t, c, "w")
	mustAppend(t, w, "a", "b", "c")
	entered, gate := make(chan struct{}), make(chan struct{})
	var mapped atomic.Int64
	x := mustUse(t, c, "v", 1, viewFunc(func(es []Entry) error {
		if mapped.Load() == 0 {
			close(entered)
		}
		<-gate
		mapped.Add(int64(len(es)))
		return nil
	}))
	<-entered // the view has the feed, and maps its batch
	for range 3 {
		ctx, cancel := context.WithCancel(ctxT(t))
		cancel()
		if err := x.Ready(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("ready with its context ended: %v", err)
		}
	}
	x.mu.Lock()
	for _, p := range x.feeds {
		if len(p.waits) > 0 {
			t.Errorf("feed %x: %d waits left by ended Ready calls", p.feed.Key()[:4], len(p.waits))
		}
	}
	x.mu.Unlock()
	close(gate)
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := mapped.Load(); n != 3 {
		t.Fatalf("mapped %d entries, want 3", n)
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
	mustUse(t, c, "kv", 1, v)
	ready(t, c)
	if h := v.get("foo"); len(h) != 0 {
		t.Fatalf("heads before any data: %v", h)
	}
	w := mustWriter(t, c, "w")
	mustAppend(t, w, `{"key":"foo","links":[]}`)
	first := fmt.Sprintf("%x@0", w.Key()[:4])
	mustAppend(t, w, `{"key":"foo","links":["`+first+`"]}`)
	ready(t, c)
	if h := v.get("foo"); len(h) != 1 || h[0] != fmt.Sprintf("%x@1", w.Key()[:4]) {
		t.Fatalf("heads %v, want only entry 1", h)
	}
}

// multifeed-index test/states.js: "pausing when nothing is indexing".
func TestPauseWhenIdle(t *testing.T) {
	c := newCore(t, nil)
	x := mustUse(t, c, "a", 1, &adder{})
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
	mustUse(t, a, "sum", 1, sa)
	mustUse(t, b, "sum", 1, sb)
	for i, n := range []int{17, 12, 1} {
		w := mustWriter(t, a, fmt.Sprint("a", i))
		appendJSON(t, w, n)
	}
	for i, n := range []int{11, 3} {
		w := mustWriter(t, b, fmt.Sprint("b", i))
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

// The indexer reads batches of other feeds ahead of the one it maps. Pauses
// and appends in the middle of that lose no entry and map none twice, and
// each feed's entries arrive in order.
func TestReadAheadMapsEveryEntryOnce(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	const feeds, rounds = 40, 20
	ws := make([]*Feed, feeds)
	for i := range ws {
		ws[i] = mustWriter(t, c, fmt.Sprint("w", i))
	}
	var mu sync.Mutex
	next := map[string]uint64{} // per feed, the next seq expected
	var bad []string
	x := mustUse(t, c, "v", 1, &batcher{max: 3, fn: func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			k := string(e.Key)
			if e.Seq != next[k] {
				bad = append(bad, fmt.Sprintf("feed %x: got entry %d, want %d", e.Key[:4], e.Seq, next[k]))
			}
			next[k] = e.Seq + 1
		}
		return nil
	}})
	rng := rand.New(rand.NewPCG(1, 2))
	want := uint64(0)
	for range rounds {
		for _, w := range ws {
			n := rng.IntN(8)
			for range n {
				mustAppend(t, w, "x")
			}
			want += uint64(n)
		}
		if rng.IntN(2) == 0 {
			if err := x.Pause(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, ws[rng.IntN(feeds)], "y")
			want++
			x.Resume()
		}
	}
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d entries out of order or twice, first: %s", len(bad), bad[0])
	}
	var got uint64
	for _, w := range ws {
		if n := next[string(w.Key())]; n != w.Len() {
			t.Errorf("feed %x: %d of %d entries mapped", w.Key()[:4], n, w.Len())
		}
		got += next[string(w.Key())]
	}
	if got != want {
		t.Fatalf("mapped %d entries, appended %d", got, want)
	}
}

// A view reads a feed from entry 0 through the data file alone. Values of
// very different sizes (so that a read sized by the mean ends inside a
// record), empty values and batches that stop before the end all arrive
// whole and in order.
func TestViewReadsRecordsFromTheStart(t *testing.T) {
	var values []string
	values = append(values, strings.Repeat("L", 100_000), "", "a")
	for i := range 300 {
		values = append(values, fmt.Sprint(i))
	}
	values = append(values, "", strings.Repeat("M", 70_000), "z")
	for _, max := range []int{1, 2, 10, 1000} {
		t.Run(fmt.Sprint("max-batch-", max), func(t *testing.T) {
			c := newCore(t, nil)
			w := mustWriter(t, c, "w")
			for _, v := range values {
				mustAppend(t, w, v)
			}
			var mu sync.Mutex
			var got []string
			x := mustUse(t, c, "v", 1, &batcher{max: max, fn: func(es []Entry) error {
				mu.Lock()
				defer mu.Unlock()
				for _, e := range es {
					if e.Seq != uint64(len(got)) {
						return fmt.Errorf("entry %d after %d", e.Seq, len(got))
					}
					got = append(got, string(e.Value))
				}
				return nil
			}})
			if err := x.Ready(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(got, values) {
				t.Fatalf("the view got %d entries, not the %d appended, or others", len(got), len(values))
			}
		})
	}
}

// A damaged data record is reported, naming the file and the record's
// offset, when a view reads it in a batch of records read together from the
// data file (a batch from the feed's start, with MaxBatch 100; one that
// starts at it, with 2; itself alone, with 1), and the view maps nothing
// of that entry rather than a wrong value; a stale checksum over an intact
// value is rewritten and reported as a repair.
func TestViewReportsADamagedRecordFromTheStart(t *testing.T) {
	type damageCase struct {
		name   string
		at     func(rec int64) int64 // the byte to flip, given the record's offset
		intact bool                  // the value still matches its leaf
		batch  int                   // the view's MaxBatch
	}
	var cases []damageCase
	for _, batch := range []int{100, 2, 1} {
		for _, tc := range []damageCase{
			{"length", func(rec int64) int64 { return rec + 1 }, false, batch},
			{"value", func(rec int64) int64 { return rec + dataLenLen + 1 }, false, batch},
			{"crc", func(rec int64) int64 { return rec + dataLenLen + 4 + 2 }, true, batch}, // format 4: the block 0x00 ‖ "ccc"
		} {
			tc.name = fmt.Sprintf("%s, batches of %d", tc.name, batch)
			cases = append(cases, tc)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewMemStorage()
			c, err := New(s, nil)
			if err != nil {
				t.Fatal(err)
			}
			mustAppend(t, mustWriter(t, c, "w"), "aaa", "bbb", "ccc", "ddd")
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			rec := dataPos(2, 8) // "ccc", after two blocks 0x00 ‖ 3 bytes (format 4)
			name := "feeds/0/" + fileData
			b := mustFileBytes(t, s, name)
			b[tc.at(rec)] ^= 0x40
			s.setFileBytes(name, b)

			errs := make(chan error, 10)
			repairs := make(chan Repair, 10)
			c, err = New(s, &Options{OnError: func(err error) { errs <- err }, OnRepair: func(r Repair) { repairs <- r }})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var mapped atomic.Int64
			x := mustUse(t, c, "v", 1, &batcher{max: tc.batch, fn: func(es []Entry) error {
				mapped.Add(int64(len(es)))
				return nil
			}})
			if err := x.Ready(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			// The damaged entry is reported before Ready is released;
			// every other entry is mapped. A stale checksum over an
			// intact value is no damage: it is rewritten.
			err = nil
			select {
			case err = <-errs:
			default:
			}
			if tc.intact {
				if err != nil {
					t.Fatalf("reported %v for an intact value", err)
				}
				if n := mapped.Load(); n != 4 {
					t.Fatalf("the view mapped %d entries, want 4", n)
				}
				select {
				case r := <-repairs:
					if r.File != name || !strings.Contains(r.Reason, "entry 2: stale record checksum") {
						t.Fatalf("repair %v", r)
					}
				default:
					t.Fatal("the stale checksum was not reported as a repair")
				}
				return
			}
			var ce *CorruptError
			var d Damage
			if !errors.As(err, &ce) || ce.File != name || ce.Offset != rec || !errors.As(err, &d) || !d.Entry || d.Seq != 2 {
				t.Fatalf("reported %v, want entry 2's *CorruptError for %s at %d", err, name, rec)
			}
			if n := mapped.Load(); n != 3 {
				t.Fatalf("the view mapped %d entries, want the 3 undamaged ones", n)
			}
		})
	}
}
