package kappa

import (
	"context"
	"fmt"
)

// Views: a Core is the host of its views' indexes (see indexer.go).
var _ indexHost = (*Core)(nil)

// closing returns a channel closed when Close begins: views stop.
func (c *Core) closing() <-chan struct{} { return c.done }

// valueEncoding returns the stored value encoding.
func (c *Core) valueEncoding() Encoding { return c.enc }

// waitViews waits until every view's goroutine has returned; Close calls
// it once c.done is closed.
func (c *Core) waitViews() {
	c.mu.RLock()
	xs := c.viewList
	c.mu.RUnlock()
	for _, x := range xs {
		x.wait()
	}
}

// Use installs a view called name at a version. If the view's stored
// progress was made by another version, the view is wiped (ClearIndex) and
// rebuilt from the first entry. The view starts indexing at once, in its own
// goroutine; Ready waits for it.
func (c *Core) Use(name string, version int, view View) (*Index, error) {
	if view == nil || version < 0 {
		return nil, fmt.Errorf("use %q: %w: need a view and a version >= 0", name, ErrInvalidValue)
	}
	if c.opts.ReadOnly {
		_, stores := view.(StateStorer)
		_, clears := view.(IndexClearer)
		if stores || clears {
			return nil, fmt.Errorf("use %q: %w: the view stores state or clears its index", name, ErrReadOnly)
		}
	}
	x := newIndex(c, name, uint64(version), view)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("use %q: %w", name, ErrClosed)
	}
	if c.views[name] != nil {
		return nil, fmt.Errorf("use %q: %w", name, ErrViewExists)
	}
	c.views[name] = x
	c.viewList = append(c.viewList, x)
	x.start() // under c.mu, so Close waits for it
	return x, nil
}

// Index returns the index of the view called name, or nil.
func (c *Core) Index(name string) *Index {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.views[name]
}

// indexes returns the named views, all if none.
func (c *Core) indexes(names []string) ([]*Index, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("views: %w", ErrClosed)
	}
	if len(names) == 0 {
		return append([]*Index(nil), c.viewList...), nil
	}
	out := make([]*Index, len(names))
	for i, n := range names {
		if out[i] = c.views[n]; out[i] == nil {
			return nil, fmt.Errorf("view %q: %w", n, ErrNoView)
		}
	}
	return out, nil
}

// Ready waits until the named views (all if none) have indexed every entry
// that was present when Ready was called (a causal view: but those that
// wait on a dependency no delivery can release; see CausalViewer). It
// returns at once for a paused view, and a view's error if it stopped on
// one (see Retry).
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
// called as often as Pause. If Pause fails, it undoes the pauses it made.
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

// Resume undoes one Pause of the named views (all if none). It does not
// restart a view that stopped on an error: see Retry.
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

// Retry restarts the named views (all if none) that stopped on an error,
// retrying what failed; see Index.Retry.
func (c *Core) Retry(names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		if err := x.Retry(); err != nil {
			return err
		}
	}
	return nil
}
