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
		if x.causal {
			if x.causalReadyLocked(p, spans) {
				delete(w.pending, k)
			}
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
