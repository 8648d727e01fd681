package kappa

import "sync"

// contextMemory is what a Core remembers, since it was opened, of the
// causal contexts its writers recorded: for each writer, the highest entry
// of each other feed that its contexts named. A writer's next context
// leaves out the feeds whose head it already named (its own previous entry
// follows them).
type contextMemory struct {
	mu    sync.Mutex
	named map[*Feed]map[string]uint64 // writer → feed key → highest Seq named
}

// writerNamed returns the map of what writer w named, made on first use.
// Only w's commits (under its writeMu) use it.
func (m *contextMemory) writerNamed(w *Feed) map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	named := m.named[w]
	if named == nil {
		if m.named == nil {
			m.named = make(map[*Feed]map[string]uint64)
		}
		named = make(map[string]uint64)
		m.named[w] = named
	}
	return named
}

// appendContext is the causal context of writer w's next Append call (the
// feedConfig's context), called at commit under w's writeMu: for each other
// feed G of the database whose contiguous held prefix has h > 0 entries,
// Pos{G, h-1}, left out when a context w recorded since the database was
// opened named G at h-1 or more. With no other feed it returns nil at once.
//
// The heads are not reduced (a head that another head follows is kept):
// that needs the causal index.
func (c *Core) appendContext(w *Feed) []Pos {
	c.mu.RLock()
	feeds := c.feeds // only ever appended to: the first len(feeds) stay
	c.mu.RUnlock()
	if len(feeds) < 2 {
		return nil
	}
	named := c.contexts.writerNamed(w)
	var ctx []Pos
	for _, g := range feeds {
		if g == w {
			continue
		}
		h := min(g.NextMissing(0), g.Len())
		if h == 0 {
			continue
		}
		key := g.Key()
		if s, ok := named[string(key)]; ok && s >= h-1 {
			continue
		}
		named[string(key)] = h - 1
		ctx = append(ctx, Pos{Feed: key, Seq: h - 1})
	}
	return ctx
}

// contextLost is the feedConfig's contextLost: a commit of w that recorded
// a context failed, so w's memory of what it named is dropped (its next
// context names every head again).
func (c *Core) contextLost(w *Feed) {
	c.contexts.mu.Lock()
	delete(c.contexts.named, w)
	c.contexts.mu.Unlock()
}
