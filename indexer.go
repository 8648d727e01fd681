package kappa

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
)

// View is a materialized view: Map receives every entry of every feed, in
// batches, and builds whatever the view answers queries from.
//
// The contract:
//   - A batch holds up to MaxBatch entries of one feed, ascending by
//     sequence number, and never empty. Entries are consecutive except
//     where an entry was left out because its value does not decode with
//     the database's value encoding (a peer's feed can hold such an entry:
//     feeds are signed, not checked): the indexer counts it as indexed,
//     leaves it out of the batch and reports it, naming view, feed and
//     sequence number, to Options.OnError. Across feeds there is no order;
//     the indexer takes turns between feeds, so no feed waits for another
//     to drain.
//   - Entries are indexed as they become present: a replica with a hole
//     is indexed up to the hole and past it, and the hole when it is filled.
//   - Batches of one view never overlap in time. Map's error stops the
//     view (see Index.Retry); the batch is not counted as indexed.
//   - Map may keep the entries' Values after it returns: each batch is
//     read into memory of its own. Entry.Key is shared and must not be
//     modified.
//   - Delivery is at-least-once across crashes: progress is stored (with
//     StoreState) after Map returns, so a crash between the two repeats a
//     batch. A view that makes Map's changes durable only inside
//     StoreState, in the same atomic write as the state, sees every entry
//     exactly once.
//
// A view may also implement StateStorer, IndexClearer, IndexedNotifier and
// MaxBatcher.
type View interface {
	Map(entries []Entry) error
}

// StateStorer is implemented by views that keep their indexing progress
// durably, next to their data. Without it progress lives in memory and the
// view is rebuilt from the first entry each time the database opens.
//
// FetchState runs once when the view starts (and again when Retry restarts
// a view whose FetchState failed), before the first batch; it returns what
// StoreState last stored, or nil if nothing. StoreState runs after Map
// returns, with progress that covers every batch mapped until then, and
// after ClearIndex with the progress reset. The state names every feed the
// view has indexed, so it grows with the number of feeds; so that storing
// it does not cost work in proportion to all feeds for each batch, with
// more than 128 feeds StoreState runs once for a group of batches (one per
// 64 feeds, or fewer when no more work is ready): a view that buffers Map's
// changes until StoreState must buffer every batch since the last one.
//
// Concurrency: FetchState, ClearIndex, Map, StoreState and Indexed of one
// view all run on that view's goroutine, one at a time, so StoreState
// never runs at the same time as Map or another StoreState of the same
// view; the indexer holds none of its locks meanwhile. Each view has a
// goroutine of its own, so methods of two views can run at the same time
// (views that share a file or a database must lock it), and the
// application's queries run whenever it makes them (a view guards its
// data against them itself). An error from StoreState stops the view as
// Map's does (see Index.Retry); the batches since the last StoreState that
// succeeded are mapped again.
//
// The state slice is the view's: it is allocated for that call and the
// indexer never reads or changes it afterwards, so StoreState may keep it
// without copying. FetchState's result is decoded as soon as FetchState
// returns and not kept: the view may reuse it afterwards.
//
// Files: the package creates no directory or file for a view. A database
// made by Open leaves the "views" directory in Core.Dir to views (see
// Core.Dir); a view that keeps its files under views/<name>/ creates that
// directory itself (and syncs the directory entries, if it must survive a
// crash), before Core.Use.
type StateStorer interface {
	FetchState() ([]byte, error)
	StoreState(state []byte) error
}

// IndexClearer is implemented by views that can wipe their data. ClearIndex
// is called before the first batch whenever there is no stored progress,
// when the view's version changed, and when stored progress claims entries
// a feed does not hold (the feed was cut back by a crash); progress is
// reset with it.
type IndexClearer interface {
	ClearIndex() error
}

// IndexedNotifier is implemented by views that want to know when a batch
// has been mapped and its progress stored.
type IndexedNotifier interface {
	Indexed(entries []Entry)
}

// MaxBatcher is implemented by views that choose their batch size.
type MaxBatcher interface {
	MaxBatch() int
}

// DefaultMaxBatch is the batch size of views that do not implement
// MaxBatcher.
const DefaultMaxBatch = 100

// Entry is one entry of a feed as a view sees it. Key is shared: do not
// modify it.
type Entry struct {
	Key   ed25519.PublicKey // the feed's public key
	Seq   uint64            // the entry's sequence number in its feed
	Value []byte            // the entry's value
	enc   byte              // the value encoding's code (see Encoding.code): an Entry stays 64 bytes
}

// Decode decodes the value into v according to the database's value
// encoding: JSON into any v for "json"; into a *string for "utf-8"; into a
// *[]byte (a copy) for "binary".
func (e Entry) Decode(v any) error {
	enc, _ := encodingFromCode(e.enc)
	if enc == JSON {
		return json.Unmarshal(e.Value, v)
	}
	switch p := v.(type) {
	case *string:
		*p = string(e.Value)
	case *[]byte:
		*p = append([]byte(nil), e.Value...)
	default:
		return fmt.Errorf("decode %s value into %T: %w: want *string or *[]byte", enc, v, ErrInvalidValue)
	}
	return nil
}

// ViewState is what a view is doing, as IndexStatus reports it.
type ViewState string

// The states of a view.
const (
	// ViewStarting: the view has not loaded its stored progress yet.
	ViewStarting ViewState = "starting"
	// ViewIdle: every entry present is indexed.
	ViewIdle ViewState = "idle"
	// ViewIndexing: a batch is being mapped, or entries wait for one.
	ViewIndexing ViewState = "indexing"
	// ViewPaused: Pause stopped the view and no batch is in flight.
	ViewPaused ViewState = "paused"
	// ViewFailed: the view stopped on an error (IndexStatus.Err) until
	// Retry.
	ViewFailed ViewState = "error"
)

// IndexStatus is a view's progress, for progress bars.
type IndexStatus struct {
	State   ViewState // what the view is doing
	Indexed uint64    // entries indexed (counting those left out as undecodable)
	Total   uint64    // entries present in all feeds
	Err     error     // why the view stopped, in state ViewFailed
}

// indexHost is what an Index needs from the database that holds it: the
// feeds, a signal for new ones, the end of the database, a place for errors
// that no call returns, and the value encoding. Core implements it.
type indexHost interface {
	// Feeds returns every feed; the list only grows, at its end (it may
	// be empty once the host is closing).
	Feeds() []*Feed
	// FeedsChanged returns a channel closed when the next feed is added.
	FeedsChanged() <-chan struct{}
	// closing returns a channel closed when the host closes: indexes
	// stop, and calls waiting on them fail with ErrClosed.
	closing() <-chan struct{}
	// report receives errors that no call returns.
	report(err error)
	// valueEncoding is the encoding every value was checked against
	// when it was appended here; views decode entries with it.
	valueEncoding() Encoding
}

// Index drives one view over every feed of a database. Use creates it.
type Index struct {
	host     indexHost
	name     string
	version  uint64
	view     View
	states   StateStorer
	maxBatch int
	enc      Encoding
	wake     chan struct{} // a signal that work may wait; capacity 1
	stopped  chan struct{} // closed when the index's goroutine returned

	// dirty holds the feeds that may have entries to index, in the
	// order they get their next batch: a feed that got one goes to the
	// back, a feed found with nothing to do is dropped until it changes.
	// Feeds add to it from their callbacks, under their own lock, so dmu
	// is always taken last: never call a feed or take mu while holding it.
	dmu       sync.Mutex
	dirty     []*feedProgress
	dirtyHead int

	mu       sync.Mutex
	loaded   bool
	rebuild  bool            // stored progress is past a feed's end: clear and start over
	feeds    []*feedProgress // in the host's feed order
	byKey    map[string]*feedProgress
	stored   map[string]*feedProgress // stored progress of feeds not seen yet
	segs     []*feedProgress          // with states: every feed known, sorted by key
	segCount int                      // feeds in segs with spans
	segBytes int                      // their encoded size
	paused   int
	busy     bool
	waiters  []*readyWaiter
	err      error
	changed  chan struct{} // closed and replaced on every change of state
	indexed  uint64
}

// feedProgress is what one view has indexed of one feed: sorted, disjoint
// ranges of sequence numbers.
type feedProgress struct {
	feed    *Feed // nil for stored progress of a feed not seen yet
	key     string
	spans   []span // the entries mapped
	saved   []span // the entries mapped whose progress is stored: what Ready and Status count
	n       uint64 // entries in saved
	seg     []byte // with states: key and spans encoded as in indexState, nil without spans
	broken  bool   // reading the feed failed; skipped until reopen
	reading bool   // a batch of it is read ahead; guarded by Index.mu
	queued  bool   // in Index.dirty; guarded by Index.dmu
	cancel  func()
}

type span struct{ start, end uint64 }

// newIndex makes the index of a view; start runs it.
func newIndex(host indexHost, name string, version uint64, view View) *Index {
	x := &Index{
		host:     host,
		name:     name,
		version:  version,
		view:     view,
		maxBatch: DefaultMaxBatch,
		enc:      host.valueEncoding(),
		wake:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
		byKey:    make(map[string]*feedProgress),
		stored:   make(map[string]*feedProgress),
		changed:  make(chan struct{}),
	}
	x.states, _ = view.(StateStorer)
	if mb, ok := view.(MaxBatcher); ok && mb.MaxBatch() > 0 {
		x.maxBatch = mb.MaxBatch()
	}
	return x
}

// start runs the index's goroutine; it returns when the host closes, and
// wait waits for that.
func (x *Index) start() { go x.run() }

// wait returns once the index's goroutine has returned.
func (x *Index) wait() { <-x.stopped }

// Name returns the view's name.
func (x *Index) Name() string { return x.name }

func (x *Index) wakeUp() {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// closedErr returns an error wrapping ErrClosed for operation op if the
// host is closing, else nil.
func (x *Index) closedErr(op string) error {
	select {
	case <-x.host.closing():
		return fmt.Errorf("view %q: %s: %w", x.name, op, ErrClosed)
	default:
		return nil
	}
}

// changedLocked wakes everyone waiting on the index's state.
func (x *Index) changedLocked() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// Ready waits until the view has indexed every entry present when Ready
// was called; see Core.Ready. After the database closed it fails with
// ErrClosed.
func (x *Index) Ready(ctx context.Context) error {
	if err := x.closedErr("ready"); err != nil {
		return err
	}
	present := presentNow(x.host.Feeds())
	w := &readyWaiter{pending: make(map[string][]span, len(present)), done: make(chan struct{})}
	for _, t := range present {
		w.pending[t.key] = t.spans
	}
	x.mu.Lock()
	x.waiters = append(x.waiters, w)
	if x.loaded {
		x.checkWaiterLocked(w, "")
	}
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.waiters = slices.DeleteFunc(x.waiters, func(v *readyWaiter) bool { return v == w })
		x.mu.Unlock()
	}()
	for {
		x.mu.Lock()
		switch {
		case x.err != nil:
			err := x.err
			x.mu.Unlock()
			return err
		case x.paused > 0 && !x.busy:
			x.mu.Unlock()
			return nil
		}
		ch := x.changed
		x.mu.Unlock()
		select {
		case <-w.done:
			return nil
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("view %q: ready: %w", x.name, ctx.Err())
		case <-x.host.closing():
			return fmt.Errorf("view %q: ready: %w", x.name, ErrClosed)
		}
	}
}

// readyWaiter is a Ready call: the ranges, per feed, still to be indexed.
type readyWaiter struct {
	pending  map[string][]span
	done     chan struct{} // closed when pending is empty
	released bool
}

// checkWaiterLocked drops from w what is now indexed, for one feed key or,
// with "", for all; a waiter with nothing left is released.
func (x *Index) checkWaiterLocked(w *readyWaiter, key string) {
	if w.released {
		return
	}
	check := func(k string, spans []span) {
		p := x.byKey[k]
		if p == nil {
			return
		}
		if !p.broken {
			// Entries found damaged are holes: Ready does not wait
			// for them.
			for _, s := range p.feed.withoutDamaged(spans) {
				if !p.covers(s) {
					return
				}
			}
		}
		delete(w.pending, k)
	}
	if key != "" {
		if spans, ok := w.pending[key]; ok {
			check(key, spans)
		}
	} else {
		for k, spans := range w.pending {
			check(k, spans)
		}
	}
	if len(w.pending) == 0 {
		w.released = true
		close(w.done)
	}
}

func (x *Index) checkWaitersLocked(key string) {
	for _, w := range x.waiters {
		x.checkWaiterLocked(w, key)
	}
}

type feedTarget struct {
	key   string
	spans []span
}

// presentNow lists, per feed, the ranges of entries present now.
func presentNow(feeds []*Feed) []feedTarget {
	out := make([]feedTarget, 0, len(feeds))
	for _, f := range feeds {
		t := feedTarget{key: string(f.Key()), spans: f.presentSpans(math.MaxUint64)}
		if len(t.spans) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// Pause stops the view after the batch it is mapping; see Core.Pause. If
// ctx ends first, or the database closes, the pause is undone and Pause
// returns the reason (wrapping ErrClosed for a closed database, also when
// it was closed before); a view's error is left as it is.
func (x *Index) Pause(ctx context.Context) error {
	if err := x.closedErr("pause"); err != nil {
		return err
	}
	x.mu.Lock()
	x.paused++
	x.changedLocked()
	for x.busy {
		ch := x.changed
		x.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			x.Resume()
			return fmt.Errorf("view %q: pause: %w", x.name, ctx.Err())
		case <-x.host.closing():
			x.Resume()
			return fmt.Errorf("view %q: pause: %w", x.name, ErrClosed)
		}
		x.mu.Lock()
	}
	x.mu.Unlock()
	return nil
}

// Resume undoes one Pause; without a Pause to undo it does nothing. A
// view that stopped on an error stays stopped: see Retry.
func (x *Index) Resume() {
	x.mu.Lock()
	if x.paused == 0 {
		x.mu.Unlock()
		return
	}
	x.paused--
	x.changedLocked()
	x.mu.Unlock()
	x.wakeUp()
}

// Retry restarts a view that stopped on an error (of Map, StoreState,
// FetchState or ClearIndex), retrying what failed: for Map, the same batch.
// It does nothing to a view without an error, and a paused view stays
// paused. After the database closed it fails with ErrClosed.
func (x *Index) Retry() error {
	if err := x.closedErr("retry"); err != nil {
		return err
	}
	x.mu.Lock()
	if x.err == nil {
		x.mu.Unlock()
		return nil
	}
	x.err = nil
	x.changedLocked()
	x.mu.Unlock()
	x.wakeUp()
	return nil
}

// Status returns the view's progress.
func (x *Index) Status() IndexStatus {
	feeds := x.host.Feeds()
	x.mu.Lock()
	defer x.mu.Unlock()
	st := IndexStatus{Indexed: x.indexed, Err: x.err}
	for _, f := range feeds {
		st.Total += f.Downloaded()
	}
	switch {
	case x.err != nil:
		st.State = ViewFailed
	case x.paused > 0 && !x.busy:
		st.State = ViewPaused
	case !x.loaded:
		st.State = ViewStarting
	case x.busy || st.Indexed < st.Total:
		st.State = ViewIndexing
	default:
		st.State = ViewIdle
	}
	return st
}

// fail stops the view on err, which no call returned.
func (x *Index) fail(err error) {
	err = fmt.Errorf("view %q: %w", x.name, err)
	// Reported first: a Ready or Status that sees the view stopped finds
	// the error reported already.
	x.host.report(err)
	x.mu.Lock()
	x.err = err
	x.changedLocked()
	x.mu.Unlock()
}

// run is the view's goroutine: load progress, follow the host's feeds, map
// batches until there is no work, and sleep until a feed changes.
func (x *Index) run() {
	defer close(x.stopped)
	defer func() {
		x.mu.Lock()
		for _, p := range x.feeds {
			p.cancel()
		}
		x.mu.Unlock()
	}()
	done := x.host.closing()
	var feedsChanged <-chan struct{} // nil: take the host's feeds again
	for {
		if x.prepare() {
			if feedsChanged == nil {
				feedsChanged = x.host.FeedsChanged()
				x.addFeeds(x.host.Feeds())
			}
			if x.prepare() { // a new feed may have asked for a rebuild
				x.drain(done)
			}
		}
		select {
		case <-x.wake:
		case <-feedsChanged:
			feedsChanged = nil
		case <-done:
			return
		}
	}
}

// prepare reports whether the view may index: not paused, no error, and
// its progress loaded (or rebuilt, if that was asked for).
func (x *Index) prepare() bool {
	x.mu.Lock()
	stopped := x.paused > 0 || x.err != nil
	load, rebuild := !x.loaded, x.rebuild
	x.mu.Unlock()
	if stopped {
		return false
	}
	if !load && !rebuild {
		return true
	}
	if err := x.load(rebuild); err != nil {
		x.fail(err)
		return false
	}
	return true
}

// load reads stored progress; with none, from another version, or to
// rebuild, it wipes the view and stores fresh progress.
func (x *Index) load(rebuild bool) error {
	var st *indexState
	if x.states != nil && !rebuild {
		b, err := x.states.FetchState()
		if err != nil {
			return fmt.Errorf("fetch state: %w", err)
		}
		if len(b) > 0 {
			if st, err = decodeIndexState(b); err != nil {
				x.host.report(fmt.Errorf("view %q: stored state unreadable, rebuilding: %w", x.name, err))
				st = nil
			}
		}
	}
	if st == nil || st.version != x.version {
		if c, ok := x.view.(IndexClearer); ok {
			if err := c.ClearIndex(); err != nil {
				return fmt.Errorf("clear index: %w", err)
			}
		}
		st = &indexState{version: x.version, feeds: map[string][]span{}}
		if x.states != nil {
			if err := x.states.StoreState(st.encode()); err != nil {
				return fmt.Errorf("store state: %w", err)
			}
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stored = make(map[string]*feedProgress, len(st.feeds))
	for k, spans := range st.feeds {
		p := &feedProgress{key: k}
		p.setSpans(spans, x.states != nil)
		x.stored[k] = p
	}
	if x.rebuild {
		x.rebuild = false
		x.indexed = 0
		for _, p := range x.feeds {
			p.setSpans(nil, false)
			x.queue(p, false)
		}
		x.wakeUp()
	}
	x.sortSegsLocked(nil)
	x.loaded = true
	x.changedLocked()
	return nil
}

// addFeeds follows feeds added to the host since last time: it matches
// them with stored progress, subscribes to their changes, and queues those
// with entries to index.
func (x *Index) addFeeds(feeds []*Feed) {
	var reports []error
	x.mu.Lock()
	var added []*feedProgress
	work := false
	feeds = feeds[min(len(x.feeds), len(feeds)):]
	if len(x.byKey) == 0 {
		x.byKey = make(map[string]*feedProgress, len(feeds)) // not grown step by step
	}
	x.feeds = slices.Grow(x.feeds, len(feeds))
	for _, f := range feeds {
		key := string(f.Key())
		p := x.stored[key]
		if p != nil {
			delete(x.stored, key)
			if end := p.spans[len(p.spans)-1].end; end > f.Len() && !x.rebuild {
				x.rebuild = true
				reports = append(reports, fmt.Errorf("view %q: stored progress says entries up to %d of feed %x are indexed, but the feed holds %d (cut back by a crash?); rebuilding the view from the first entry", x.name, end-1, f.Key()[:4], f.Len()))
			}
			x.indexed += p.n
		} else {
			p = &feedProgress{key: key}
			added = append(added, p)
		}
		p.feed = f
		// Subscribe before looking for work, so no change is missed.
		p.cancel = f.subscribeFunc(func() { x.queue(p, true) })
		x.feeds = append(x.feeds, p)
		x.byKey[key] = p
		if p.n < f.Downloaded() {
			x.queue(p, false)
			work = true
		}
	}
	if x.states != nil && len(added) > 0 {
		x.sortSegsLocked(added)
	}
	x.mu.Unlock()
	if work {
		x.wakeUp() // once for all
	}
	for _, err := range reports {
		x.host.report(err)
	}
}

// queue puts p at the back of the feeds with work, unless it is there
// already, and wakes the goroutine if wake. Feeds call it from their
// callbacks, under their lock.
func (x *Index) queue(p *feedProgress, wake bool) {
	x.dmu.Lock()
	if !p.queued {
		p.queued = true
		x.dirty = append(x.dirty, p)
	}
	x.dmu.Unlock()
	if wake {
		x.wakeUp()
	}
}

// next takes the feed at the front of the feeds with work, or nil.
func (x *Index) next() *feedProgress {
	x.dmu.Lock()
	defer x.dmu.Unlock()
	if x.dirtyHead == len(x.dirty) {
		x.dirty, x.dirtyHead = x.dirty[:0], 0
		return nil
	}
	p := x.dirty[x.dirtyHead]
	x.dirty[x.dirtyHead] = nil
	x.dirtyHead++
	if x.dirtyHead >= 1024 && x.dirtyHead*2 >= len(x.dirty) {
		n := copy(x.dirty, x.dirty[x.dirtyHead:])
		clear(x.dirty[n:])
		x.dirty, x.dirtyHead = x.dirty[:n], 0
	}
	p.queued = false
	return p
}

// Batches drain reads ahead of the one it maps: at most batchesAhead, and
// (by the feeds' mean entry size) about bytesAhead bytes, though always
// one. A new view over many small feeds spends most of its time opening
// and reading files, which up to readers goroutines then do side by side,
// in the order drain maps them.
const (
	batchesAhead = 64
	bytesAhead   = 4 << 20
	readers      = 8
)

// batchRead is a batch read ahead of its turn to be mapped.
type batchRead struct {
	p          *feedProgress
	start, end uint64
	size       uint64 // its estimated size in bytes
	values     [][]byte
	err        error
	done       chan struct{} // closed once read
}

func (b *batchRead) read() {
	b.values, b.err = b.p.feed.scanBatch(b.start, b.end)
	close(b.done)
}

// readAll reads the batches of jobs in order, until it is closed.
func readAll(jobs <-chan *batchRead) {
	for b := range jobs {
		b.read()
	}
}

// drain maps batches until there is no work or the view is stopped. It
// reads the next few batches, of other feeds, while it maps one. With
// StateStorer, progress is stored for a group of batches at once (see
// groupLimitLocked): the state names every feed, so storing it after each
// batch would cost work in proportion to all feeds for every batch.
func (x *Index) drain(done <-chan struct{}) {
	// The readers, started as batches are read ahead; they end when drain
	// does, after the batches it waits for below.
	d := &drainer{x: x, jobs: make(chan *batchRead, batchesAhead)}
	defer close(d.jobs)
	defer d.requeueAhead()
	for {
		stop := false
		select {
		case <-done:
			stop = true
		default:
		}
		x.mu.Lock()
		stop = stop || x.paused > 0 || x.err != nil || x.rebuild
		if !stop {
			d.readAheadLocked()
		}
		if stop || len(d.ahead) == 0 {
			x.mu.Unlock()
			if !d.pauseOrIdle(stop) {
				return
			}
			continue
		}
		b := d.ahead[0]
		d.ahead = d.ahead[1:]
		d.aheadSize -= b.size
		x.busy = true
		x.mu.Unlock()
		if !d.mapNext(b) {
			return
		}
	}
}

// drainer is the state of one drain: the batches read ahead of their turn,
// and the group of batches mapped whose progress is not stored yet.
type drainer struct {
	x          *Index
	ahead      []*batchRead
	aheadSize  uint64
	group      []*mappedBatch
	groupBytes uint64
	jobs       chan *batchRead // to the readers
	started    int             // readers started
}

// requeueAhead puts the feeds of batches read but not mapped back in the
// queue, once their reads are done.
func (d *drainer) requeueAhead() {
	x := d.x
	for _, b := range d.ahead {
		<-b.done
		x.mu.Lock()
		b.p.reading = false
		x.mu.Unlock()
		x.queue(b.p, false)
	}
}

// readAheadLocked picks the next batches to read, up to batchesAhead and
// about bytesAhead bytes, and hands them to the readers, starting readers
// as needed.
func (d *drainer) readAheadLocked() {
	x := d.x
	for len(d.ahead) < batchesAhead && (len(d.ahead) == 0 || d.aheadSize < bytesAhead) {
		p, start, end := x.pickLocked()
		if p == nil {
			break
		}
		p.reading = true
		b := &batchRead{p: p, start: start, end: end, done: make(chan struct{})}
		if n := p.feed.Len(); n > 0 {
			b.size = (end - start) * (p.feed.ByteLen() / n)
		}
		d.aheadSize += b.size
		d.ahead = append(d.ahead, b)
		if d.started < min(len(d.ahead), readers) {
			d.started++
			go readAll(d.jobs)
		}
		d.jobs <- b
	}
}

// commit stores the group's progress and ends the group; after an error
// the view stops. It reports whether the progress was stored.
func (d *drainer) commit() bool {
	err := d.x.commit(d.group)
	d.group, d.groupBytes = d.group[:0], 0
	if err != nil && !errors.Is(err, ErrClosed) {
		d.x.fail(err)
	}
	return err == nil
}

// pauseOrIdle is drain's step when it stops (stop) or has nothing to read:
// it stores the group, and reports whether drain goes on, as work may have
// waited for the group. Otherwise the view is idle, and its waiters are
// told.
func (d *drainer) pauseOrIdle(stop bool) bool {
	x := d.x
	grouped := len(d.group) > 0
	if !d.commit() || stop {
		return false
	}
	if grouped {
		return true // more work may have waited for the group
	}
	x.mu.Lock()
	x.checkWaitersLocked("") // idle
	x.changedLocked()
	x.mu.Unlock()
	return false
}

// mapNext maps batch b, once read, adds it to the group, and stores the
// group when it is full. It reports whether drain goes on: not after an
// error.
func (d *drainer) mapNext(b *batchRead) bool {
	x := d.x
	<-b.done
	m, err := x.mapBatch(b)
	x.mu.Lock()
	b.p.reading = false
	if m != nil && m.end > m.start {
		// The feed's next batch starts past this one, but the
		// batch counts (for Ready and Status) only once commit
		// stored it.
		m.p.spans = m.p.with(span{m.start, m.end})
		d.group = append(d.group, m)
		d.groupBytes += m.bytes
	} else if err == nil {
		// The feed broke, or its batch began with a damaged entry,
		// which is a hole now.
		// In the step that releases who waited for it, no batch
		// is in flight unless the group has one.
		if len(d.group) == 0 {
			x.endBatchesLocked()
		}
		x.checkWaitersLocked(b.p.key)
	}
	full := len(d.group) >= x.groupLimitLocked() || d.groupBytes >= bytesAhead
	x.mu.Unlock()
	// The feed may have more: its turn comes again after the others'.
	// After an error this is the batch that Retry retries.
	x.queue(b.p, false)
	if err != nil {
		// What the group mapped before is stored first.
		if d.commit() && !errors.Is(err, ErrClosed) {
			x.fail(err)
		}
		return false
	}
	if full && !d.commit() {
		return false
	}
	return true
}

// groupLimitLocked is how many batches drain maps before it stores their
// progress: one without StateStorer or with few feeds, else enough that the
// state stored per batch stays about 64 feeds' worth.
func (x *Index) groupLimitLocked() int {
	if x.states == nil {
		return 1
	}
	return max(1, x.segCount/64)
}

// pickLocked chooses the next batch: the first run of entries to index of
// the first feed in the queue that has one. Feeds without are dropped from
// the queue until they change.
func (x *Index) pickLocked() (*feedProgress, uint64, uint64) {
	for {
		p := x.next()
		if p == nil {
			return nil, 0, 0
		}
		// Entries held count, damaged or not: one indexed before it
		// was found damaged still counts in p.n.
		if p.reading || p.broken || p.n >= p.feed.heldCount() {
			continue // a feed being read is queued again once mapped
		}
		if start, end := p.nextRun(x.maxBatch); start < end {
			return p, start, end
		}
	}
}

// mappedBatch is a batch that Map took, whose progress is not stored yet.
type mappedBatch struct {
	p          *feedProgress
	start, end uint64
	entries    []Entry // for IndexedNotifier only
	bytes      uint64  // the size of entries' values
	bad        []error // entries left out
}

// mapBatch maps the entries of b, for drain to add to its group. It
// returns no batch for a feed that could not be read (which is reported and
// skipped) or when Map failed, and an empty one when the batch's first
// entry was found damaged.
func (x *Index) mapBatch(b *batchRead) (*mappedBatch, error) {
	p, start, end := b.p, b.start, b.end
	key := p.feed.Key()
	values, err := b.values, b.err
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		x.host.report(fmt.Errorf("view %q: feed %x skipped: %w", x.name, key[:4], err))
		x.mu.Lock()
		p.broken = true // drain releases the Ready calls waiting for it
		x.mu.Unlock()
		return nil, nil
	}
	// A damaged entry ends the batch early (see Feed.scanBatch): it is
	// reported, and left out of the view until it heals.
	end = start + uint64(len(values))
	m := &mappedBatch{p: p, start: start, end: end}
	entries := make([]Entry, 0, len(values))
	code := x.enc.code()
	for i, v := range values {
		seq := start + uint64(i)
		if x.enc != Binary {
			if err := x.enc.check(v); err != nil {
				m.bad = append(m.bad, fmt.Errorf("view %q: feed %x entry %d left out: %w", x.name, key[:4], seq, err))
				continue
			}
		}
		entries = append(entries, Entry{Key: key, Seq: seq, Value: v, enc: code})
	}
	if len(entries) > 0 {
		if err := x.view.Map(entries); err != nil {
			return nil, fmt.Errorf("map %d entries of feed %x from %d: %w", len(entries), key[:4], start, err)
		}
	}
	if _, ok := x.view.(IndexedNotifier); ok {
		m.entries = entries
		for _, e := range entries {
			m.bytes += uint64(len(e.Value))
		}
	}
	return m, nil
}

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
		x.checkWaitersLocked(p.key)
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

// nextRun returns the first run of entries that are present and not
// indexed, at most max long.
func (p *feedProgress) nextRun(max int) (uint64, uint64) {
	length := p.feed.Len()
	s := uint64(0)
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
