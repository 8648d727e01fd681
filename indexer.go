package kappa

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"
)

// View is a materialized view: Map receives every entry of every feed, in
// batches, and builds whatever the view answers queries from.
//
// The contract:
//   - A batch holds up to MaxBatch entries of one feed with consecutive
//     sequence numbers, ascending. Across feeds there is no order; the
//     indexer takes turns between feeds, so no feed waits for another to
//     drain.
//   - Entries are indexed as they become present: a replica with a hole
//     is indexed up to the hole and past it, and the hole when it is filled.
//   - Batches of one view never overlap in time. Map's error stops the
//     view (see Index.Resume); the batch is not counted as indexed.
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
// FetchState returns what StoreState last stored, or nil if nothing.
type StateStorer interface {
	FetchState() ([]byte, error)
	StoreState(state []byte) error
}

// IndexClearer is implemented by views that can wipe their data. ClearIndex
// is called before the first batch whenever there is no stored progress,
// and when the view's version changed; progress is reset with it.
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
	enc   Encoding
}

// Decode decodes the value into v according to the database's value
// encoding: JSON into any v for "json"; into a *string for "utf-8"; into a
// *[]byte (a copy) for "binary".
func (e Entry) Decode(v any) error {
	if e.enc == JSON {
		return json.Unmarshal(e.Value, v)
	}
	switch p := v.(type) {
	case *string:
		*p = string(e.Value)
	case *[]byte:
		*p = append([]byte(nil), e.Value...)
	default:
		enc := e.enc
		if enc == "" {
			enc = Binary
		}
		return fmt.Errorf("decode %s value into %T: %w: want *string or *[]byte", enc, v, ErrInvalidValue)
	}
	return nil
}

// Index drives one view over every feed of a database. Use creates it.
type Index struct {
	core     *Core
	name     string
	version  uint64
	view     View
	states   StateStorer
	maxBatch int
	wake     chan struct{}

	mu      sync.Mutex
	loaded  bool
	feeds   []*feedProgress // in the core's feed order
	byKey   map[string]*feedProgress
	stored  map[string][]span // progress loaded for feeds not seen yet
	next    int               // where the next search for work starts
	paused  int
	busy    bool
	waiters []*readyWaiter
	err     error
	changed chan struct{} // closed and replaced on every change of state
	indexed uint64
}

// feedProgress is what one view has indexed of one feed: sorted, disjoint
// ranges of sequence numbers.
type feedProgress struct {
	feed   *Feed
	key    string
	spans  []span
	n      uint64 // entries in spans
	broken bool   // reading the feed failed; skipped until reopen
	cancel func()
}

type span struct{ start, end uint64 }

// IndexStatus is a view's progress, for progress bars.
type IndexStatus struct {
	State   string // "starting", "idle", "indexing", "paused" or "error"
	Indexed uint64 // entries indexed
	Total   uint64 // entries present in all feeds
	Err     error  // why the view stopped, in state "error"
}

// Use installs a view called name at a version. If the view's stored
// progress was made by another version, the view is wiped (ClearIndex) and
// rebuilt from the first entry. The view starts indexing at once, in its own
// goroutine; Ready waits for it.
func (c *Core) Use(name string, version int, view View) (*Index, error) {
	if view == nil || version < 0 {
		return nil, fmt.Errorf("kappa: use %q: %w: need a view and a version >= 0", name, ErrInvalidValue)
	}
	x := &Index{
		core:     c,
		name:     name,
		version:  uint64(version),
		view:     view,
		maxBatch: DefaultMaxBatch,
		wake:     make(chan struct{}, 1),
		byKey:    make(map[string]*feedProgress),
		changed:  make(chan struct{}),
	}
	x.states, _ = view.(StateStorer)
	if mb, ok := view.(MaxBatcher); ok && mb.MaxBatch() > 0 {
		x.maxBatch = mb.MaxBatch()
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("kappa: use %q: %w", name, ErrClosed)
	}
	if c.views[name] != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("kappa: use %q: %w", name, ErrViewExists)
	}
	c.views[name] = x
	c.viewList = append(c.viewList, x)
	c.wg.Add(1)
	c.mu.Unlock()
	go x.run()
	return x, nil
}

// Index returns the index of the view called name, or nil.
func (c *Core) Index(name string) *Index {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.views[name]
}

func (c *Core) indexes(names []string) ([]*Index, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, ErrClosed
	}
	if len(names) == 0 {
		return append([]*Index(nil), c.viewList...), nil
	}
	out := make([]*Index, len(names))
	for i, n := range names {
		if out[i] = c.views[n]; out[i] == nil {
			return nil, fmt.Errorf("kappa: %w: %q", ErrNoView, n)
		}
	}
	return out, nil
}

// Ready waits until the named views (all if none) have indexed every entry
// that was present when Ready was called. It returns at once for a paused
// view, and a view's error if it stopped on one.
func (c *Core) Ready(ctx context.Context, names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		if err := x.Ready(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Pause pauses the named views (all if none) and waits until the batch each
// is mapping is done. Pauses are counted: a view runs again when Resume was
// called as often as Pause.
func (c *Core) Pause(ctx context.Context, names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for i, x := range xs {
		if err := x.Pause(ctx); err != nil {
			for _, y := range xs[:i] {
				y.Resume()
			}
			return err
		}
	}
	return nil
}

// Resume undoes one Pause of the named views (all if none).
func (c *Core) Resume(names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		x.Resume()
	}
	return nil
}

// Name returns the view's name.
func (x *Index) Name() string { return x.name }

func (x *Index) wakeUp() {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// changedLocked wakes everyone waiting on the index's state.
func (x *Index) changedLocked() {
	close(x.changed)
	x.changed = make(chan struct{})
}

// Ready waits until the view has indexed every entry present when Ready
// was called; see Core.Ready.
func (x *Index) Ready(ctx context.Context) error {
	w := &readyWaiter{pending: map[string][]span{}, done: make(chan struct{})}
	for _, t := range presentNow(x.core.Feeds()) {
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
			return fmt.Errorf("kappa: view %q: %w", x.name, err)
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
			return fmt.Errorf("kappa: view %q: ready: %w", x.name, ctx.Err())
		case <-x.core.done:
			return fmt.Errorf("kappa: view %q: ready: %w", x.name, ErrClosed)
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
			for _, s := range spans {
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
	var out []feedTarget
	for _, f := range feeds {
		t := feedTarget{key: string(f.Key())}
		n := f.Len()
		for s := f.NextPresent(0); s < n; {
			e := f.NextMissing(s)
			t.spans = append(t.spans, span{s, e})
			s = f.NextPresent(e)
		}
		if len(t.spans) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// Pause stops the view after the batch it is mapping; see Core.Pause.
func (x *Index) Pause(ctx context.Context) error {
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
			return fmt.Errorf("kappa: view %q: pause: %w", x.name, ctx.Err())
		case <-x.core.done:
			x.Resume()
			return fmt.Errorf("kappa: view %q: pause: %w", x.name, ErrClosed)
		}
		x.mu.Lock()
	}
	x.mu.Unlock()
	return nil
}

// Resume undoes one Pause. It also restarts a view that stopped on an
// error, retrying the batch that failed.
func (x *Index) Resume() {
	x.mu.Lock()
	if x.paused > 0 {
		x.paused--
	}
	x.err = nil
	x.changedLocked()
	x.mu.Unlock()
	x.wakeUp()
}

// Status returns the view's progress.
func (x *Index) Status() IndexStatus {
	feeds := x.core.Feeds()
	x.mu.Lock()
	defer x.mu.Unlock()
	st := IndexStatus{Indexed: x.indexed, Err: x.err}
	for _, f := range feeds {
		st.Total += f.Downloaded()
	}
	switch {
	case x.err != nil:
		st.State = "error"
	case x.paused > 0 && !x.busy:
		st.State = "paused"
	case !x.loaded:
		st.State = "starting"
	case x.busy || st.Indexed < st.Total:
		st.State = "indexing"
	default:
		st.State = "idle"
	}
	return st
}

func (x *Index) report(err error) {
	x.mu.Lock()
	x.err = err
	x.changedLocked()
	x.mu.Unlock()
	x.core.report(fmt.Errorf("kappa: view %q: %w", x.name, err))
}

// run is the view's goroutine: load progress, then map batches until there
// is no work, and sleep until a feed changes.
func (x *Index) run() {
	defer x.core.wg.Done()
	defer func() {
		x.mu.Lock()
		for _, p := range x.feeds {
			if p.cancel != nil {
				p.cancel()
			}
		}
		x.mu.Unlock()
	}()
	for {
		if x.ready() {
			x.drain()
		}
		select {
		case <-x.wake:
		case <-x.core.done:
			return
		}
	}
}

// ready reports whether the view may index: loaded, not paused, no error.
func (x *Index) ready() bool {
	x.mu.Lock()
	loaded, stopped := x.loaded, x.paused > 0 || x.err != nil
	x.mu.Unlock()
	if stopped {
		return false
	}
	if loaded {
		return true
	}
	if err := x.load(); err != nil {
		x.report(err)
		return false
	}
	return true
}

// load reads stored progress; with none, or from another version, it wipes
// the view.
func (x *Index) load() error {
	var st *indexState
	if x.states != nil {
		b, err := x.states.FetchState()
		if err != nil {
			return fmt.Errorf("fetch state: %w", err)
		}
		if len(b) > 0 {
			if st, err = decodeIndexState(b); err != nil {
				x.core.report(fmt.Errorf("kappa: view %q: stored state unreadable, rebuilding: %w", x.name, err))
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
	x.stored = st.feeds
	x.loaded = true
	x.changedLocked()
	x.mu.Unlock()
	return nil
}

func (x *Index) knownFeeds() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.feeds)
}

// syncFeedsLocked picks up feeds added to the database since last time.
func (x *Index) syncFeedsLocked(feeds []*Feed) {
	if len(feeds) <= len(x.feeds) {
		return
	}
	for _, f := range feeds[len(x.feeds):] {
		p := &feedProgress{feed: f, key: string(f.Key())}
		if spans, ok := x.stored[p.key]; ok {
			p.spans = spans
			for _, s := range spans {
				p.n += s.end - s.start
			}
			x.indexed += p.n
			delete(x.stored, p.key)
		}
		p.cancel = f.Subscribe(x.wake)
		x.feeds = append(x.feeds, p)
		x.byKey[p.key] = p
	}
}

// drain maps batches until there is no work or the view is stopped.
func (x *Index) drain() {
	for {
		var feeds []*Feed
		if n, closed := x.core.feedCount(); closed {
			return
		} else if n > x.knownFeeds() {
			feeds = x.core.Feeds()
		}
		x.mu.Lock()
		if x.paused > 0 || x.err != nil {
			x.mu.Unlock()
			return
		}
		if feeds != nil {
			x.syncFeedsLocked(feeds)
		}
		p, start, end := x.pickLocked()
		if p == nil {
			x.checkWaitersLocked("") // idle
			x.changedLocked()
			x.mu.Unlock()
			return
		}
		x.busy = true
		x.mu.Unlock()

		err := x.mapBatch(p, start, end)

		x.mu.Lock()
		x.busy = false
		if x.paused > 0 {
			x.changedLocked() // Pause waits for the batch to end
		}
		x.mu.Unlock()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			x.report(err)
			return
		}
	}
}

// pickLocked chooses the next batch, taking turns between feeds.
func (x *Index) pickLocked() (*feedProgress, uint64, uint64) {
	n := len(x.feeds)
	for k := range n {
		i := (x.next + k) % n
		p := x.feeds[i]
		if p.broken || p.n >= p.feed.Downloaded() {
			continue
		}
		if start, end := p.nextRun(x.maxBatch); start < end {
			x.next = (i + 1) % n
			return p, start, end
		}
	}
	return nil, 0, 0
}

// mapBatch reads entries [start, end) of p's feed, maps them and stores the
// progress.
func (x *Index) mapBatch(p *feedProgress, start, end uint64) error {
	values, err := p.feed.GetBatch(context.Background(), start, end)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return err
		}
		x.mu.Lock()
		p.broken = true
		x.mu.Unlock()
		x.core.report(fmt.Errorf("kappa: view %q: feed %x skipped: %w", x.name, p.feed.Key()[:4], err))
		return nil
	}
	key := p.feed.Key()
	entries := make([]Entry, len(values))
	for i, v := range values {
		entries[i] = Entry{Key: key, Seq: start + uint64(i), Value: v, enc: x.core.enc}
	}
	if err := x.view.Map(entries); err != nil {
		return fmt.Errorf("map %d entries of feed %x from %d: %w", len(entries), key[:4], start, err)
	}
	// Progress counts once it is stored: the state written includes the
	// batch, and only then does the batch count for Ready.
	if x.states != nil {
		x.mu.Lock()
		st := x.stateLocked()
		next := &feedProgress{spans: slices.Clone(p.spans)}
		next.add(span{start, end})
		st.feeds[p.key] = next.spans
		state := st.encode()
		x.mu.Unlock()
		if err := x.states.StoreState(state); err != nil {
			return fmt.Errorf("store state: %w", err)
		}
	}
	// Indexed runs before Ready waiters see the batch, as the seed's
	// 'indexed' event fired before 'ready'.
	if n, ok := x.view.(IndexedNotifier); ok {
		n.Indexed(entries)
	}
	x.mu.Lock()
	p.add(span{start, end})
	x.indexed += end - start
	x.checkWaitersLocked(p.key)
	x.mu.Unlock()
	return nil
}

func (x *Index) stateLocked() *indexState {
	st := &indexState{version: x.version, feeds: make(map[string][]span, len(x.feeds)+len(x.stored))}
	for k, s := range x.stored {
		st.feeds[k] = s
	}
	for _, p := range x.feeds {
		if len(p.spans) > 0 {
			st.feeds[p.key] = p.spans
		}
	}
	return st
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
	for _, a := range p.spans {
		if a.start <= s.start && s.end <= a.end {
			return true
		}
	}
	return false
}

// add merges a newly indexed span.
func (p *feedProgress) add(s span) {
	p.n += s.end - s.start
	i, _ := slices.BinarySearchFunc(p.spans, s.start, func(a span, v uint64) int { return cmpU64(a.start, v) })
	p.spans = slices.Insert(p.spans, i, s)
	// Merge with neighbours that touch.
	out := p.spans[:0]
	for _, a := range p.spans {
		if len(out) > 0 && out[len(out)-1].end >= a.start {
			out[len(out)-1].end = max(out[len(out)-1].end, a.end)
			continue
		}
		out = append(out, a)
	}
	p.spans = out
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

// indexState is a view's stored progress: the view's version and, per
// feed key, the indexed ranges.
//
// Encoding: "KIX1" ‖ uvarint(version) ‖ uvarint(feeds) ‖ per feed: key(32)
// ‖ uvarint(spans) ‖ per span: uvarint(start − previous end) ‖
// uvarint(length) ‖ CRC-32C of all before, big-endian. Feeds are sorted by
// key, spans ascending, disjoint and not touching, non-empty.
type indexState struct {
	version uint64
	feeds   map[string][]span
}

var magicIndexState = []byte("KIX1")

func (st *indexState) encode() []byte {
	keys := make([]string, 0, len(st.feeds))
	for k := range st.feeds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := append([]byte(nil), magicIndexState...)
	b = binary.AppendUvarint(b, st.version)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = append(b, k...)
		spans := st.feeds[k]
		b = binary.AppendUvarint(b, uint64(len(spans)))
		var prev uint64
		for _, s := range spans {
			b = binary.AppendUvarint(b, s.start-prev)
			b = binary.AppendUvarint(b, s.end-s.start)
			prev = s.end
		}
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errBadState = errors.New("kappa: bad index state")

func decodeIndexState(b []byte) (*indexState, error) {
	if len(b) < len(magicIndexState)+4 || string(b[:4]) != string(magicIndexState) {
		return nil, fmt.Errorf("%w: no magic", errBadState)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadState)
	}
	r := body[4:]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, fmt.Errorf("%w: truncated", errBadState)
		}
		r = r[n:]
		return v, nil
	}
	st := &indexState{feeds: map[string][]span{}}
	var err error
	if st.version, err = next(); err != nil {
		return nil, err
	}
	nfeeds, err := next()
	if err != nil {
		return nil, err
	}
	if nfeeds > uint64(len(r))/33 {
		return nil, fmt.Errorf("%w: %d feeds in %d bytes", errBadState, nfeeds, len(r))
	}
	prevKey := ""
	for range nfeeds {
		if len(r) < PublicKeySize {
			return nil, fmt.Errorf("%w: truncated key", errBadState)
		}
		key := string(r[:PublicKeySize])
		r = r[PublicKeySize:]
		if key <= prevKey && prevKey != "" {
			return nil, fmt.Errorf("%w: keys out of order", errBadState)
		}
		prevKey = key
		nspans, err := next()
		if err != nil {
			return nil, err
		}
		if nspans == 0 || nspans > uint64(len(r))/2 {
			return nil, fmt.Errorf("%w: %d spans in %d bytes", errBadState, nspans, len(r))
		}
		spans := make([]span, 0, nspans)
		var prev uint64
		for i := range nspans {
			gap, err := next()
			if err != nil {
				return nil, err
			}
			n, err := next()
			if err != nil {
				return nil, err
			}
			if (i > 0 && gap == 0) || n == 0 || gap > maxTreeLength || n > maxTreeLength || prev+gap+n > maxTreeLength {
				return nil, fmt.Errorf("%w: bad span", errBadState)
			}
			s := span{prev + gap, prev + gap + n}
			spans = append(spans, s)
			prev = s.end
		}
		st.feeds[key] = spans
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errBadState, len(r))
	}
	return st, nil
}
