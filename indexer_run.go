package kappa

import (
	"fmt"
	"slices"
)

// The view's goroutine: loading its progress, following the host's feeds,
// and queueing the feeds that have work.

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
	if x.causal {
		// Compare in Map must know every entry the view is given.
		select {
		case <-x.host.causalRebuilt():
		case <-done:
			return
		}
	}
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
	if x.causal && !rebuild {
		for _, spans := range st.feeds {
			if len(spans) > 1 || (len(spans) == 1 && spans[0].start != 0) {
				x.host.report(fmt.Errorf("view %q: stored progress is not a prefix of every feed, as a causal view's is; rebuilding the view from the first entry", x.name))
				x.mu.Lock()
				x.rebuild = true
				x.mu.Unlock()
				return x.load(true)
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
		if x.causal {
			x.resetWaitsLocked()
		}
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
		if len(x.waiters) > 0 {
			x.matchWaitsLocked(p)
		}
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
