package kappa

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
)

// wantSet holds the ranges that calls wait for, by registration.
type wantSet struct {
	mu     sync.Mutex
	wanted map[uint64]span
	next   uint64
}

// changedChan returns the channel that the next change closes. Called with
// f.mu held, at least for reading: changes happen under the write lock.
func (f *Feed) changedChan() chan struct{} {
	if ch := f.changed.Load(); ch != nil {
		return *ch
	}
	ch := make(chan struct{})
	if f.changed.CompareAndSwap(nil, &ch) {
		return ch
	}
	return *f.changed.Load()
}

// subscriber is a Subscribe channel or an internal function.
type subscriber struct {
	id int
	c  chan<- struct{}
	fn func()
}

// notifyLocked signals every subscriber; f.mu is held.
func (f *Feed) notifyLocked() {
	for _, s := range f.subs {
		if s.fn != nil {
			s.fn()
			continue
		}
		select {
		case s.c <- struct{}{}:
		default:
		}
	}
}

// subscribe adds a subscriber and returns the function that removes it.
func (f *Feed) subscribe(sub subscriber) (cancel func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sub.id = int(f.nextSub)
	f.nextSub++
	f.subs = append(f.subs, sub)
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.subs = slices.DeleteFunc(f.subs, func(s subscriber) bool { return s.id == sub.id })
	}
}

// want records that [start, end) is wanted until the returned function is
// called, and signals the subscribers.
func (f *Feed) want(start, end uint64) (done func()) {
	wset := f.wants.Load()
	if wset == nil {
		f.wants.CompareAndSwap(nil, &wantSet{wanted: make(map[uint64]span)})
		wset = f.wants.Load()
	}
	wset.mu.Lock()
	id := wset.next
	wset.next++
	wset.wanted[id] = span{start, end}
	wset.mu.Unlock()
	f.signal()
	return func() {
		wset.mu.Lock()
		delete(wset.wanted, id)
		wset.mu.Unlock()
	}
}

// wantedRanges returns the ranges that calls are waiting for, sorted and
// merged.
func (f *Feed) wantedRanges() []span {
	wset := f.wants.Load()
	if wset == nil {
		return nil
	}
	wset.mu.Lock()
	out := make([]span, 0, len(wset.wanted))
	for _, w := range wset.wanted {
		out = append(out, w)
	}
	wset.mu.Unlock()
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	merged := out[:0]
	for _, w := range out {
		if n := len(merged); n > 0 && merged[n-1].end >= w.start {
			merged[n-1].end = max(merged[n-1].end, w.end)
			continue
		}
		merged = append(merged, w)
	}
	return merged
}

// signal wakes the subscribers without a change of state.
func (f *Feed) signal() {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.notifyLocked()
}

// Download fetches entries [start, end) of a replica from the peers it
// replicates with, and returns once they are all held locally, the context
// ends or the feed is closed. In a sparse database (Options.Sparse) this is
// how entries are asked for; in others every entry is fetched anyway. On a
// writable feed it returns at once, or ErrOutOfRange past its length.
func (f *Feed) Download(ctx context.Context, start, end uint64) error {
	if start > end || end > maxTreeLength {
		return f.opError(fmt.Sprintf("download [%d, %d)", start, end), ErrOutOfRange)
	}
	if start == end {
		return nil
	}
	return f.wait(ctx, start, end)
}

// subscribeFunc calls fn whenever Subscribe would signal. fn runs with the
// feed's lock held: it must not call the feed and must not block.
func (f *Feed) subscribeFunc(fn func()) (cancel func()) {
	return f.subscribe(subscriber{fn: fn})
}

// Subscribe asks for a signal on c whenever entries are appended to the
// feed or arrive from a peer, or a call starts waiting for entries a
// replica lacks. Sends never block: if c is full, a signal is
// already pending. Many feeds may share one channel. The returned function
// ends the subscription.
func (f *Feed) Subscribe(c chan<- struct{}) (cancel func()) {
	return f.subscribe(subscriber{c: c})
}
