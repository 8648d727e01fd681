package kappa

import (
	"context"
	"fmt"
	"math"
	"slices"
)

// Ready: waiting for a view to catch up with the entries present.

// Ready waits until the view has indexed every entry present when Ready
// was called (for a causal view, see CausalViewer); see Core.Ready. After
// the database closed it fails with ErrClosed.
func (x *Index) Ready(ctx context.Context) error {
	if err := x.closedErr("ready"); err != nil {
		return err
	}
	present := presentNow(x.host.Feeds())
	w := &readyWaiter{done: make(chan struct{})}
	x.mu.Lock()
	x.waiters = append(x.waiters, w)
	for i, t := range present {
		if len(t.spans) == 0 {
			continue
		}
		// The view's feeds are in the host's order, as presentNow's.
		var p *feedProgress
		if i < len(x.feeds) && x.feeds[i].feed == t.feed {
			p = x.feeds[i]
		} else {
			p = x.byKey[string(t.feed.Key())]
		}
		switch {
		case p == nil:
			// A feed the view is not told of yet: its wait moves to
			// its progress when it is (see addFeeds).
			if w.unmatched == nil {
				w.unmatched = make(map[string][]span)
			}
			w.unmatched[string(t.feed.Key())] = t.spans
		case x.loaded && x.readyForLocked(p, t.spans):
			continue
		default:
			w.waitLocked(p, t.spans)
		}
		w.left++
	}
	if w.left == 0 && x.loaded {
		w.releaseLocked()
	}
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.waiters = slices.DeleteFunc(x.waiters, func(v *readyWaiter) bool { return v == w })
		if !w.released {
			for _, p := range w.on {
				p.waits = slices.DeleteFunc(p.waits, func(fw feedWait) bool { return fw.w == w })
			}
		}
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

// readyWaiter is a Ready call: the number of feeds it still waits for,
// each in a feedWait on the feed's progress (on lists them), or in
// unmatched, by key, for a feed the view is not told of yet.
type readyWaiter struct {
	left      int
	on        []*feedProgress
	unmatched map[string][]span
	done      chan struct{} // closed when left is 0
	released  bool
}

// feedWait is a Ready call's wait for one feed: the ranges of its entries
// still to be indexed. A feed's progress holds the waits on it (waits), so
// that what a batch of the feed indexed is checked against them alone.
type feedWait struct {
	w     *readyWaiter
	spans []span
}

// waitLocked hangs w's wait for spans of p's feed on p.
func (w *readyWaiter) waitLocked(p *feedProgress, spans []span) {
	p.waits = append(p.waits, feedWait{w, spans})
	w.on = append(w.on, p)
}

// releaseLocked ends the wait of w: its Ready returns.
func (w *readyWaiter) releaseLocked() {
	w.released = true
	close(w.done)
}

// readyForLocked reports whether the view has indexed what Ready waits for
// of p's feed: the ranges spans, but for the entries found damaged, which
// are holes, or none if the feed broke. For a causal view, see
// causalReadyLocked.
func (x *Index) readyForLocked(p *feedProgress, spans []span) bool {
	if x.causal {
		return x.causalReadyLocked(p, spans)
	}
	// The feed's lock is taken for its damage only when the spans are
	// not all indexed.
	return p.broken || p.coversAll(spans) || p.coversAll(p.feed.withoutDamaged(spans))
}

// checkWaitsLocked drops the waits on p for which p is now indexed far
// enough, releasing each waiter with nothing left.
func (x *Index) checkWaitsLocked(p *feedProgress) {
	kept := p.waits[:0]
	for _, fw := range p.waits {
		if !x.readyForLocked(p, fw.spans) {
			kept = append(kept, fw)
			continue
		}
		if fw.w.left--; fw.w.left == 0 {
			fw.w.releaseLocked()
		}
	}
	clear(p.waits[len(kept):])
	p.waits = kept
}

// checkAllWaitsLocked checks the waits of every waiter: when the view is
// idle, as a feed found damaged or broken may leave nothing to index. A
// waiter that came before the view loaded its progress is released here
// if it waits for nothing.
func (x *Index) checkAllWaitsLocked() {
	for _, w := range x.waiters {
		for _, p := range w.on {
			if len(p.waits) > 0 {
				x.checkWaitsLocked(p)
			}
		}
		if w.left == 0 && !w.released {
			w.releaseLocked()
		}
	}
}

// matchWaitsLocked moves the waits for p's feed made before the view was
// told of it onto p.
func (x *Index) matchWaitsLocked(p *feedProgress) {
	for _, w := range x.waiters {
		if spans, ok := w.unmatched[p.key]; ok {
			delete(w.unmatched, p.key)
			w.waitLocked(p, spans)
		}
	}
	if x.loaded && len(p.waits) > 0 {
		x.checkWaitsLocked(p)
	}
}

type feedTarget struct {
	feed  *Feed
	spans []span
}

// presentNow lists, per feed, the ranges of entries present now; a feed
// without any has an empty list.
func presentNow(feeds []*Feed) []feedTarget {
	out := make([]feedTarget, len(feeds))
	for i, f := range feeds {
		out[i] = feedTarget{feed: f, spans: f.presentSpans(math.MaxUint64)}
	}
	return out
}
