package kappa

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
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
// A view may also implement StateStorer, IndexClearer, IndexedNotifier,
// MaxBatcher and CausalViewer (which changes the order of delivery: see
// there).
type View interface {
	Map(entries []Entry) error
}

// StateStorer is implemented by views that keep their indexing progress
// durably, next to their data. Without it progress lives in memory and the
// view is rebuilt from the first entry each time the database opens.
//
// FetchState runs once when the view starts (and again when Retry restarts
// a view that failed before its first batch: in FetchState, ClearIndex or
// the StoreState after it), before the first batch; it returns what
// StoreState last stored, or nil if nothing. StoreState runs after Map
// returns, with progress that covers every batch mapped until then, and
// after ClearIndex with the progress reset. The state names every feed the
// view has indexed, so it grows with the number of feeds; so that storing
// it does not cost work in proportion to all feeds for each batch, once
// the state names 128 feeds or more StoreState runs once for a group of
// ⌊feeds/64⌋ batches (or fewer when no more work is ready): a view that buffers Map's
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
// MaxBatcher, or whose MaxBatch returns zero or less.
const DefaultMaxBatch = 100

// Entry is one entry of a feed as a view sees it. Key and the Feed of each
// Pos in Deps are shared: do not modify them.
type Entry struct {
	Key   ed25519.PublicKey // the feed's public key
	Seq   uint64            // the entry's sequence number in its feed
	Value []byte            // the entry's value

	// Deps is the causal context recorded with the entry: for each other
	// feed its writer had seen when it appended, the last entry it held
	// of that feed, sorted by feed key. It is set only on the first entry
	// of each Append call (the later entries of the call follow it as
	// their own feed's successors), and only for the feeds whose head
	// changed since the writer's previous context, reduced: without a
	// head that the writer's previous entry or another head in Deps
	// already causally follows (see Core.Compare). Empty (nil) for most
	// entries, and nil too for an entry whose stored context is malformed
	// (a causal view's Wait tells the two apart).
	Deps []Pos

	enc byte // the value encoding's code (see Encoding.code)
}

// Decode decodes the value into v according to the database's value
// encoding: JSON into any v for "json"; for "utf-8" and "binary", into a
// *string or a *[]byte (a copy), and any other v is ErrInvalidValue.
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

	// Waiting lists, for a causal view (see CausalViewer), each feed
	// whose next entry waits, in the database's feed order, and what it
	// waits on; nil for other views. A causal view whose every entry
	// left is in a dead Wait is ViewIdle.
	Waiting []Wait
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
	// causalRebuilt returns a channel closed once the causal index holds
	// every entry held when the host opened: a causal view starts then,
	// so that Compare in its Map knows every entry it is given.
	causalRebuilt() <-chan struct{}
}

// Index drives one view over every feed of a database. Use creates it.
type Index struct {
	host     indexHost
	name     string
	version  uint64
	view     View
	states   StateStorer
	maxBatch int
	causal   bool // the view is a CausalViewer that asked for it
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
	blocked  map[string][]*feedProgress // causal: feed key → feeds waiting on it
}

// feedProgress is what one view has indexed of one feed: sorted, disjoint
// ranges of sequence numbers.
type feedProgress struct {
	feed   *Feed // nil for stored progress of a feed not seen yet
	key    string
	spans  []span // the entries mapped
	saved  []span // the entries mapped whose progress is stored: what Ready and Status count
	n      uint64 // entries in saved
	seg    []byte // with states: key and spans encoded as in indexState, nil without spans
	broken bool   // reading the feed failed; skipped until reopen
	queued bool   // in Index.dirty; guarded by Index.dmu
	cancel func()

	// Batches read ahead of their turn, guarded by Index.mu. A view that
	// is not causal reads several batches of one feed ahead, each from
	// where the one before ends (from; 0 looks from the progress). A batch
	// that ends early (damage) or fails moves gen on: the batches read
	// after it are then dropped unmapped, so that the feed's entries are
	// still mapped in order.
	ahead int    // batches of the feed read ahead and not mapped
	from  uint64 // where the next batch read ahead starts looking
	gen   uint64

	cwait *causalWait // causal: what the next entry waits on; guarded by Index.mu
	waits []feedWait  // the Ready calls waiting for the feed; guarded by Index.mu
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
	if cv, ok := view.(CausalViewer); ok {
		x.causal = cv.Causal()
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
	if x.causal && x.loaded {
		x.causalStatusLocked(&st)
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
