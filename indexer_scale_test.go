package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// heapSampler records the largest HeapInuse seen while it runs.
type heapSampler struct {
	stop chan struct{}
	done chan struct{}
	peak uint64
}

// sampleHeap starts sampling HeapInuse every interval. It reads
// runtime/metrics, which (unlike runtime.ReadMemStats) does not stop the
// world, so that sampling does not slow what it measures.
func sampleHeap(interval time.Duration) *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		// HeapInuse is the bytes of heap spans in use: objects, and
		// the free space in their spans.
		ms := []metrics.Sample{
			{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/memory/classes/heap/unused:bytes"},
		}
		for {
			metrics.Read(ms)
			h.peak = max(h.peak, ms[0].Value.Uint64()+ms[1].Value.Uint64())
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// Stop ends the sampling and returns the peak in bytes.
func (h *heapSampler) Stop() uint64 {
	close(h.stop)
	<-h.done
	return h.peak
}

// heapAfterGC returns HeapAlloc after a collection.
func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// overlayStorage serves the files under prefix from top and all others
// from base: a database that a benchmark changes in one feed only, while
// the rest stays a shared fixture.
type overlayStorage struct {
	base, top Storage
	prefix    string
}

func (o *overlayStorage) pick(name string) Storage {
	if strings.HasPrefix(name, o.prefix) {
		return o.top
	}
	return o.base
}

func (o *overlayStorage) Open(name string, create bool) (File, error) {
	return o.pick(name).Open(name, create)
}

func (o *overlayStorage) Remove(name string) error { return o.pick(name).Remove(name) }

func (o *overlayStorage) Close() error { return errors.Join(o.top.Close(), o.base.Close()) }

// openBusyOverlay opens the database directory dir with the files under
// prefix copied to a fresh scratch directory, both NoSync.
func openBusyOverlay(b *testing.B, dir, prefix string) *overlayStorage {
	b.Helper()
	opts := &DirOptions{NoSync: true}
	base, err := OpenDir(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	top, err := OpenDir(b.TempDir(), opts)
	if err != nil {
		b.Fatal(err)
	}
	o := &overlayStorage{base: base, top: top, prefix: prefix}
	names, err := filepath.Glob(filepath.Join(dir, filepath.FromSlash(prefix), "*"))
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range names {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		f, err := top.Open(prefix+filepath.Base(path), true)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.WriteAt(data, 0); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	return o
}

// Tests of the indexer on its own (over a host that is not a Core), of
// views over many feeds, and of progress and entries that do not fit.

// errorLog collects what Options.OnError reports.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errorLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// fakeHost is an indexHost without a Core: a list of feeds and the
// signals an index needs.
type fakeHost struct {
	mu      sync.Mutex
	feeds   []*Feed
	changed chan struct{}
	done    chan struct{}
	log     errorLog // what the index reported
	enc     Encoding
}

func newFakeHost(enc Encoding, feeds ...*Feed) *fakeHost {
	return &fakeHost{feeds: feeds, changed: make(chan struct{}), done: make(chan struct{}), enc: enc}
}

// startIndex starts view "v" (version 1) over h; the test's end closes h
// and waits for the view to stop.
func startIndex(t *testing.T, h *fakeHost, view View) *Index {
	x := newIndex(h, "v", 1, view)
	x.start()
	t.Cleanup(func() {
		close(h.done)
		x.wait()
	})
	return x
}

func (h *fakeHost) Feeds() []*Feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.feeds)
}

func (h *fakeHost) FeedsChanged() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

func (h *fakeHost) add(f *Feed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.feeds = append(h.feeds, f)
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *fakeHost) closing() <-chan struct{} { return h.done }

func (h *fakeHost) report(err error) { h.log.add(err) }

func (h *fakeHost) valueEncoding() Encoding { return h.enc }

func (h *fakeHost) causalRebuilt() <-chan struct{} { return closedChan }

// memFeed is a writable feed on its own MemStorage, closed with the test.
func memFeed(t *testing.T, values ...string) *Feed {
	t.Helper()
	f, err := OpenFeed(NewMemStorage(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	appendStrings(t, f, values...)
	return f
}

func appendStrings(t *testing.T, f *Feed, values ...string) {
	t.Helper()
	for _, v := range values {
		if _, err := f.Append([]byte(v)); err != nil {
			t.Fatal(err)
		}
	}
}

func scaleCtx(t *testing.T) context.Context { return ctxT(t) }

// recorder is a view that records what Map got, keyed "feed@seq", and
// may keep its progress (state) and fail on demand.
type recorder struct {
	mu      sync.Mutex
	seen    map[string]string // "xxxxxxxx@seq" → value
	batches int
	clears  int
	state   []byte
	fail    func([]Entry) error
}

func newRecorder() *recorder { return &recorder{seen: map[string]string{}} }

func (r *recorder) Map(es []Entry) error {
	r.mu.Lock()
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		if err := fail(es); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches++
	for _, e := range es {
		r.seen[fmt.Sprintf("%x@%d", e.Key[:4], e.Seq)] = string(e.Value)
	}
	return nil
}

func (r *recorder) saw(f *Feed, seq uint64) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.seen[fmt.Sprintf("%x@%d", f.Key()[:4], seq)]
	return v, ok
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// statefulRecorder is a recorder that keeps its progress and can be wiped.
type statefulRecorder struct{ *recorder }

func (r statefulRecorder) FetchState() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state, nil
}

func (r statefulRecorder) StoreState(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = slices.Clone(b)
	return nil
}

func (r statefulRecorder) ClearIndex() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clears++
	clear(r.seen)
	return nil
}

func TestIndexRunsOverAHostWithoutACore(t *testing.T) {
	a, b := memFeed(t, "a0", "a1", "a2"), memFeed(t, "b0")
	h := newFakeHost(Binary, a, b)
	v := newRecorder()
	x := startIndex(t, h, v)
	ctx := scaleCtx(t)
	if err := x.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if v.count() != 4 {
		t.Fatalf("indexed %d entries, want 4", v.count())
	}
	// A feed that grows, and a feed added to the host, both reach the view.
	c := memFeed(t, "c0", "c1")
	h.add(c)
	appendStrings(t, b, "b1")
	if err := x.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := v.saw(c, 1); got != "c1" {
		t.Fatalf("new feed's entry 1: %q", got)
	}
	if got, _ := v.saw(b, 1); got != "b1" {
		t.Fatalf("grown feed's entry 1: %q", got)
	}
	if st := x.Status(); st.State != ViewIdle || st.Indexed != 7 || st.Total != 7 {
		t.Fatalf("status %+v", st)
	}
	if errs := h.log.all(); len(errs) != 0 {
		t.Fatalf("errors reported: %v", errs)
	}
}

func TestIndexStopsWhenItsHostCloses(t *testing.T) {
	h := newFakeHost(Binary, memFeed(t, "x"))
	x := newIndex(h, "v", 1, newRecorder())
	x.start()
	close(h.done)
	x.wait()
	for name, err := range map[string]error{
		"ready": x.Ready(context.Background()),
		"pause": x.Pause(context.Background()),
		"retry": x.Retry(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after close: %v, want ErrClosed", name, err)
		}
	}
}

func TestPauseReadyRetryAfterCloseReturnErrClosed(t *testing.T) {
	c, err := New(NewMemStorage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	x, err := c.Use("v", 1, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx := scaleCtx(t)
	for name, err := range map[string]error{
		"Index.Pause": x.Pause(ctx),
		"Index.Ready": x.Ready(ctx),
		"Index.Retry": x.Retry(),
		"Core.Pause":  c.Pause(ctx),
		"Core.Ready":  c.Ready(ctx),
		"Core.Retry":  c.Retry(),
		"Core.Resume": c.Resume(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after close: %v, want ErrClosed", name, err)
		}
	}
}

// Resume undoes a Pause and nothing else: a view stopped by an error stays
// stopped, also when a Pause of it is rolled back, until Retry.
func TestResumeDoesNotRestartAFailedViewRetryDoes(t *testing.T) {
	var log errorLog
	c, err := New(NewMemStorage(), &Options{OnError: log.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	boom := errors.New("boom")
	bad := newRecorder()
	bad.fail = func([]Entry) error { return boom }
	x, _ := c.Use("bad", 1, bad)
	// A view whose Map blocks, so that a Pause of it waits, and times out.
	entered, release := make(chan struct{}, 1), make(chan struct{})
	slow := newRecorder()
	slow.fail = func([]Entry) error {
		entered <- struct{}{}
		<-release
		return nil
	}
	c.Use("slow", 1, slow)
	w, _ := c.Writer("w")
	appendStrings(t, w, "1")
	ctx := scaleCtx(t)
	if err := c.Ready(ctx, "bad"); !errors.Is(err, boom) {
		t.Fatalf("ready of the failing view: %v", err)
	}
	<-entered
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := c.Pause(short, "bad", "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pause while a batch hangs: %v", err)
	}
	if st := x.Status(); st.State != ViewFailed || !errors.Is(st.Err, boom) {
		t.Fatalf("a rolled back Pause changed the failed view: %+v", st)
	}
	c.Pause(ctx, "bad")
	c.Resume("bad")
	if st := x.Status(); st.State != ViewFailed {
		t.Fatalf("Resume restarted a failed view: %+v", st)
	}
	if err := c.Ready(ctx, "bad"); !errors.Is(err, boom) {
		t.Fatalf("ready after resume: %v", err)
	}
	bad.mu.Lock()
	bad.fail = nil
	bad.mu.Unlock()
	if err := c.Retry("bad"); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	if got, _ := bad.saw(w, 0); got != "1" || x.Status().State != ViewIdle {
		t.Fatalf("after retry: saw %q, %+v", got, x.Status())
	}
	close(release)
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if errs := log.all(); len(errs) == 0 || !errors.Is(errs[0], boom) || !strings.Contains(errs[0].Error(), `view "bad"`) {
		t.Fatalf("OnError got %v", errs)
	}
}

// A view whose stored progress claims entries past a feed's end (the feed
// was cut back by a power loss) is rebuilt, and then sees the entries
// appended after the cut.
func TestStoredProgressPastAFeedsEndRebuildsTheView(t *testing.T) {
	s := NewMemStorage()
	var log errorLog
	open := func(s Storage, noSync bool) *Core {
		t.Helper()
		c, err := New(s, &Options{NoSync: noSync, OnError: log.add})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := scaleCtx(t)
	// Five entries synced, then five more that a power loss takes away.
	c := open(s, false)
	w, _ := c.Writer("w")
	appendStrings(t, w, "0", "1", "2", "3", "4")
	other, _ := c.Writer("other")
	appendStrings(t, other, "o0")
	c.Close()
	c = open(s, true)
	v := statefulRecorder{newRecorder()}
	c.Use("v", 1, v)
	w, _ = c.Writer("w")
	appendStrings(t, w, "5", "6", "7", "8", "9")
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()

	crashed := s.crashClone(nil)
	c = open(crashed, false)
	defer c.Close()
	w, _ = c.Writer("w")
	if w.Len() != 5 {
		t.Fatalf("after the crash the feed holds %d entries, want 5", w.Len())
	}
	after := statefulRecorder{newRecorder()}
	after.state = v.state // progress that remembers 10 entries of w
	x, _ := c.Use("v", 1, after)
	// The view finds the cut when it first sees the feed: before the feed
	// grows past the stored progress again.
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	appendStrings(t, w, "new5", "new6", "new7", "new8", "new9")
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	for seq, want := range []string{"0", "1", "2", "3", "4", "new5", "new6", "new7", "new8", "new9"} {
		if got, _ := after.saw(w, uint64(seq)); got != want {
			t.Fatalf("entry %d: Map got %q, want %q", seq, got, want)
		}
	}
	if got, _ := after.saw(other, 0); got != "o0" {
		t.Fatalf("the other feed was not indexed again: %q", got)
	}
	if st := x.Status(); st.State != ViewIdle || st.Indexed != 11 || st.Total != 11 {
		t.Fatalf("status %+v", st)
	}
	if after.clears != 1 {
		t.Fatalf("ClearIndex called %d times, want 1", after.clears)
	}
	st, err := decodeIndexState(after.state)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(st.feeds[string(w.Key())]); got != "[{0 10}]" {
		t.Fatalf("stored progress of the cut feed: %s", got)
	}
	var found bool
	errs := log.all()
	for _, err := range errs {
		msg := err.Error()
		found = found || strings.Contains(msg, `view "v"`) && strings.Contains(msg, fmt.Sprintf("%x", w.Key()[:4])) && strings.Contains(msg, "rebuilding")
	}
	if !found {
		t.Fatalf("no report of the rebuild naming view and feed: %v", errs)
	}
}

// An entry a peer signed that does not decode in the database's encoding
// is left out of its batch, counted, and reported.
func TestUndecodableEntryIsLeftOutAndReported(t *testing.T) {
	src := memFeed(t, "1", "{bad", "3") // a Binary feed takes any bytes
	var log errorLog
	c, err := New(NewMemStorage(), &Options{ValueEncoding: JSON, OnError: log.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := newRecorder()
	x, _ := c.Use("v", 1, v)
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	p, err := src.Proof(0, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(scaleCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.saw(src, 1); ok || v.count() != 2 {
		t.Fatalf("Map got %v", v.seen)
	}
	if st := x.Status(); st.State != ViewIdle || st.Indexed != 3 || st.Total != 3 {
		t.Fatalf("status %+v", st)
	}
	errs := log.all()
	want := fmt.Sprintf(`view "v": feed %x entry 1`, src.Key()[:4])
	if len(errs) != 1 || !errors.Is(errs[0], ErrInvalidValue) || !strings.Contains(errs[0].Error(), want) {
		t.Fatalf("OnError got %v, want one error containing %q", errs, want)
	}
}

// The state kept in parts per feed encodes as indexState does, including
// progress of feeds the database does not hold (yet).
func TestStoredStateKeepsFeedsNotSeen(t *testing.T) {
	ctx := scaleCtx(t)
	c1, _ := New(NewMemStorage(), nil)
	v := statefulRecorder{newRecorder()}
	c1.Use("v", 1, v)
	var keys []string
	for i := range 5 {
		w, _ := c1.Writer(fmt.Sprint("w", i))
		appendStrings(t, w, "a", "b")
		keys = append(keys, string(w.Key()))
	}
	if err := c1.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	c1.Close()

	c2, _ := New(NewMemStorage(), nil)
	defer c2.Close()
	v2 := statefulRecorder{newRecorder()}
	v2.state = v.state
	c2.Use("v", 1, v2)
	w, _ := c2.Writer("new")
	appendStrings(t, w, "x", "y", "z")
	if err := c2.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := decodeIndexState(v2.state)
	if err != nil {
		t.Fatal(err)
	}
	want := &indexState{version: 1, feeds: map[string][]span{string(w.Key()): {{0, 3}}}}
	for _, k := range keys {
		want.feeds[k] = []span{{0, 2}}
	}
	if !bytes.Equal(v2.state, want.encode()) {
		t.Fatalf("stored state %v, want %v", st.feeds, want.feeds)
	}
}

// A feed that grows all the time does not keep the others waiting.
func TestBusyFeedDoesNotStarveOthers(t *testing.T) {
	c, err := New(NewMemStorage(), &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := newRecorder()
	c.Use("v", 1, &maxBatchView{v, 1})
	busy, _ := c.Writer("busy")
	quiet, _ := c.Writer("quiet")
	ctx, cancel := context.WithCancel(scaleCtx(t))
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			busy.Append([]byte("b"), []byte("b"))
		}
	}()
	defer wg.Wait()
	for busy.Len() < 100 {
		time.Sleep(time.Millisecond)
	}
	appendStrings(t, quiet, "q0", "q1", "q2")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, ok := v.saw(quiet, 2); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the quiet feed was not indexed in two minutes while the busy one grew")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
}

type maxBatchView struct {
	*recorder
	max int
}

func (v *maxBatchView) MaxBatch() int { return v.max }

// exactlyOnceView buffers what Map gets until StoreState, as a view that
// writes its data and progress in one atomic step does. Each feed's
// entries must come in order, each once; at each StoreState the progress
// stored must cover exactly what earlier StoreStates wrote plus what is
// buffered. A StoreState that fails (failStore says when) drops the
// buffer, as the indexer maps those batches again after Retry.
type exactlyOnceView struct {
	mu        sync.Mutex
	durable   map[string]uint64 // per feed, the entries stored
	pending   map[string]uint64 // per feed, the entries buffered past those
	maps      int
	stores    int
	failStore func(n int) bool // n counts StoreState calls from 1
	problems  []string
	mapped    chan struct{} // signalled after each Map
}

func newExactlyOnceView() *exactlyOnceView {
	return &exactlyOnceView{durable: map[string]uint64{}, pending: map[string]uint64{}, mapped: make(chan struct{}, 1)}
}

func (v *exactlyOnceView) MaxBatch() int { return 2 }

func (v *exactlyOnceView) Map(es []Entry) error {
	v.mu.Lock()
	v.maps++
	for _, e := range es {
		k := string(e.Key)
		if want := v.durable[k] + v.pending[k]; e.Seq != want {
			v.problems = append(v.problems, fmt.Sprintf("feed %x: mapped entry %d, want %d", e.Key[:4], e.Seq, want))
		}
		v.pending[k]++
	}
	v.mu.Unlock()
	select {
	case v.mapped <- struct{}{}:
	default:
	}
	return nil
}

func (v *exactlyOnceView) FetchState() ([]byte, error) { return nil, nil }

func (v *exactlyOnceView) StoreState(b []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stores++
	if v.failStore != nil && v.failStore(v.stores) {
		clear(v.pending)
		return errors.New("disk full")
	}
	st, err := decodeIndexState(b)
	if err != nil {
		v.problems = append(v.problems, err.Error())
		return err
	}
	for k, n := range v.pending {
		v.durable[k] += n
	}
	clear(v.pending)
	for k, spans := range st.feeds {
		if want := []span{{0, v.durable[k]}}; !slices.Equal(spans, want) {
			v.problems = append(v.problems, fmt.Sprintf("store %d: feed %x: progress %v, want %v", v.stores, k[:4], spans, want))
		}
	}
	for k := range v.durable {
		if _, ok := st.feeds[k]; !ok {
			v.problems = append(v.problems, fmt.Sprintf("store %d: feed %x mapped but not in the progress stored", v.stores, k[:4]))
		}
	}
	return nil
}

// With many feeds a durable view's progress is stored once per group of
// batches, not after every batch; every StoreState still covers exactly
// the batches mapped until then, Ready and Pause wait for it, and a failed
// StoreState loses nothing once retried.
func TestDurableViewOverManyFeedsStoresProgressPerGroup(t *testing.T) {
	const nfeeds, perFeed = 384, 6 // three batches of two per feed
	feeds := make([]*Feed, nfeeds)
	for i := range feeds {
		feeds[i] = memFeed(t)
		if _, err := feeds[i].Append(slices.Repeat([][]byte{[]byte("v")}, perFeed)...); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name      string
		failStore func(n int) bool
	}{
		{"stores succeed", nil},
		{"the 200th store fails", func(n int) bool { return n == 200 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(Binary, feeds...)
			v := newExactlyOnceView()
			v.failStore = tc.failStore
			x := startIndex(t, h, v)
			ctx := scaleCtx(t)

			// Pause waits until what was mapped is stored.
			<-v.mapped
			if err := x.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			v.mu.Lock()
			if len(v.pending) > 0 {
				t.Errorf("paused with entries of %d feeds mapped whose progress is not stored", len(v.pending))
			}
			v.mu.Unlock()
			x.Resume()

			err := x.Ready(ctx)
			if tc.failStore != nil {
				if err == nil || !strings.Contains(err.Error(), "disk full") {
					t.Fatalf("Ready: %v, want the StoreState error", err)
				}
				if err := x.Retry(); err != nil {
					t.Fatal(err)
				}
				err = x.Ready(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			v.mu.Lock()
			defer v.mu.Unlock()
			if len(v.problems) > 0 {
				t.Fatalf("%d problems, first: %s", len(v.problems), v.problems[0])
			}
			if len(v.pending) > 0 {
				t.Fatalf("Ready returned with entries of %d feeds whose progress is not stored", len(v.pending))
			}
			if len(v.durable) != nfeeds {
				t.Fatalf("entries of %d feeds stored, want %d", len(v.durable), nfeeds)
			}
			for k, n := range v.durable {
				if n != perFeed {
					t.Fatalf("feed %x: %d entries stored, want %d", k[:4], n, perFeed)
				}
			}
			// 1,152 batches; a store per batch would be 1,152 of up to
			// 384 feeds each. Groups grow with the feeds in the state
			// (one batch per 64 feeds), so far fewer are made.
			if v.stores > v.maps/2 {
				t.Fatalf("%d StoreState calls for %d batches", v.stores, v.maps)
			}
			t.Logf("%d batches, %d StoreState calls", v.maps, v.stores)
		})
	}
}

// Ready releases its caller in the same step as the view's batch counts,
// so a Status right after it says idle: no batch in flight, nothing left.
// (Before, Status could say "indexing" with every entry indexed, for the
// moment between the two.) Each round widens that window if it exists.
func TestStatusAfterReadyIsIdle(t *testing.T) {
	ctx := scaleCtx(t)
	for _, durable := range []bool{false, true} {
		c, err := New(NewMemStorage(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var view View = newRecorder()
		if durable {
			view = statefulRecorder{newRecorder()}
		}
		x := mustUse(t, c, "v", 1, view)
		w := mustWriter(t, c, "w")
		for i := range 200 {
			appendStrings(t, w, fmt.Sprint(i))
			if err := c.Ready(ctx); err != nil {
				t.Fatal(err)
			}
			if st := x.Status(); st.State != ViewIdle || st.Indexed != uint64(i+1) || st.Total != uint64(i+1) {
				t.Fatalf("durable=%v, after Ready of entry %d: status %+v", durable, i, st)
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
