package kappa

import (
	"errors"
	"fmt"
)

// Draining: reading batches ahead, mapping them in turn, grouping their
// progress.

// Batches drain reads ahead of the one it maps: at most batchesAhead, and
// (by the feeds' mean entry size) about bytesAhead bytes, though always
// one. A new view over many small feeds spends most of its time opening
// and reading files, and a view of one long feed checking its entries
// against their leaves, which up to readers goroutines then do side by
// side, in the order drain maps them. Unless the view is causal, several
// batches of one feed are read at once (see feedProgress.ahead).
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
	gen        uint64 // the feed's gen when it was picked
	share      bool   // no other batch is read beside it: see Feed.scanBatch
	values     [][]byte
	err        error
	done       chan struct{} // closed once read
}

func (b *batchRead) read() {
	b.values, b.err = b.p.feed.scanBatch(b.start, b.end, b.share)
	close(b.done)
}

// readAll reads the batches of jobs in order, until it is closed.
func readAll(jobs <-chan *batchRead) {
	for b := range jobs {
		b.read()
	}
}

// drain maps batches until there is no work or the view is stopped. It
// reads the next few batches (of other feeds, or of the same one) while
// it maps one. With StateStorer, progress is stored for a group of batches
// at once (see groupLimitLocked): the state names every feed, so storing
// it after each batch would cost work in proportion to all feeds for every
// batch.
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
		b.p.doneAheadLocked()
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
		p.ahead++
		p.from = end
		b := &batchRead{p: p, start: start, end: end, gen: p.gen, share: len(d.ahead) == 0, done: make(chan struct{})}
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
		if !x.causal {
			x.queue(p, false) // for its next batch, after the other feeds'
		}
	}
}

// doneAheadLocked counts a batch of p read ahead as taken off the queue of
// batches: mapped or dropped. Once none is left, the next batch is looked
// for from the progress again, which finds entries passed over meanwhile.
func (p *feedProgress) doneAheadLocked() {
	p.ahead--
	if p.ahead == 0 {
		p.from = 0
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
	x.checkAllWaitsLocked() // idle
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
	x.mu.Lock()
	stale := b.gen != b.p.gen
	if stale {
		b.p.doneAheadLocked()
	}
	x.mu.Unlock()
	if stale {
		// Read after a batch of the feed that ended early: its turn
		// comes again, after the entries before it.
		x.queue(b.p, false)
		return true
	}
	var m *mappedBatch
	var err error
	if x.causal {
		m, err = x.mapCausal(b)
	} else {
		m, err = x.mapBatch(b)
	}
	x.mu.Lock()
	b.p.doneAheadLocked()
	if m == nil || m.end < b.end {
		// The batches of the feed read after this one are dropped.
		b.p.gen++
		b.p.from = 0
	}
	if m != nil && m.end > m.start {
		// The feed's next batch starts past this one, but the
		// batch counts (for Ready and Status) only once commit
		// stored it.
		m.p.spans = m.p.with(span{m.start, m.end})
		if x.causal {
			x.releaseLocked(m.p)
		}
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
		x.checkWaitsLocked(b.p)
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
	if x.causal {
		return x.pickCausalLocked()
	}
	for {
		p := x.next()
		if p == nil {
			return nil, 0, 0
		}
		// Entries held count, damaged or not: one indexed before it
		// was found damaged still counts in p.n.
		if p.broken || p.n >= p.feed.heldCount() {
			continue
		}
		// Past the batches read ahead, if any.
		if start, end := p.nextRun(p.from, x.maxBatch); start < end {
			return p, start, end
		}
		// Nothing (or nothing past the batches read ahead, and the feed
		// is queued again once they are mapped).
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
	if b.err != nil {
		return nil, x.skipUnread(b)
	}
	p, start, values := b.p, b.start, b.values
	key := p.feed.Key()
	// A damaged entry ends the batch early (see Feed.scanBatch): it is
	// reported, and left out of the view until it heals.
	m := &mappedBatch{p: p, start: start, end: start + uint64(len(values))}
	entries := make([]Entry, 0, len(values))
	code := x.enc.code()
	for i, b := range values {
		deps, v, _ := decodeBlock(b, key)
		entries = append(entries, Entry{Key: key, Seq: start + uint64(i), Value: v, Deps: deps, enc: code})
	}
	if err := x.mapEntries(m, key, entries); err != nil {
		return nil, err
	}
	return m, nil
}

// skipUnread handles a batch whose read failed: ErrClosed is returned,
// any other error is reported and the feed skipped (drain releases the
// Ready calls waiting for it).
func (x *Index) skipUnread(b *batchRead) error {
	if errors.Is(b.err, ErrClosed) {
		return b.err
	}
	x.host.report(fmt.Errorf("view %q: feed %x skipped: %w", x.name, b.p.feed.Key()[:4], b.err))
	x.mu.Lock()
	b.p.broken = true
	x.mu.Unlock()
	return nil
}

// mapEntries leaves out the entries whose value fails the encoding
// (recorded in m.bad), gives the rest to Map, and keeps them in m for
// IndexedNotifier.
func (x *Index) mapEntries(m *mappedBatch, key []byte, entries []Entry) error {
	// Values the feed's writer checked before signing them are not
	// checked again.
	if checked := m.p.feed.checkedBelow(x.enc); x.enc != Binary && m.end > checked {
		kept := entries[:0]
		for _, e := range entries {
			if e.Seq < checked {
				kept = append(kept, e)
				continue
			}
			if err := x.enc.check(e.Value); err != nil {
				m.bad = append(m.bad, fmt.Errorf("view %q: feed %x entry %d left out: %w", x.name, key[:4], e.Seq, err))
				continue
			}
			kept = append(kept, e)
		}
		entries = kept
	}
	if len(entries) > 0 {
		if err := x.view.Map(entries); err != nil {
			return fmt.Errorf("map %d entries of feed %x from %d: %w", len(entries), key[:4], m.start, err)
		}
	}
	if _, ok := x.view.(IndexedNotifier); ok {
		m.entries = entries
		for _, e := range entries {
			m.bytes += uint64(len(e.Value))
		}
	}
	return nil
}
