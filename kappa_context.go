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
// its head Pos{G, h-1}, left out when a context w recorded since the
// database was opened named G at h-1 or more; then reduced by the causal
// index (causalIndex.reduce): a head that w's own last entry, or another
// head, already follows is left out too. A writer that has seen many feeds
// change thus records only the heads that nothing else it names covers
// (one, if they all follow one another). A head the index cannot tell
// about yet (its causal past is not all held, or the rebuild after open
// has not reached it) is kept: the context is then larger, never wrong.
// With no other feed it returns nil at once.
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
	if len(ctx) == 0 {
		return nil
	}
	heads := c.causal.deps(ctx)
	kept := c.causal.index.reduce(c.causal.num(w.key), w.Len(), heads)
	if len(kept) == len(heads) {
		return ctx
	}
	out := ctx[:0] // reduce keeps heads in their order
	j := 0
	for i, h := range heads {
		if j < len(kept) && kept[j] == h {
			out = append(out, ctx[i])
			j++
		}
	}
	return out
}

// contextLost is the feedConfig's contextLost: a commit of w that recorded
// a context failed, so w's memory of what it named is dropped (its next
// context names every head again).
func (c *Core) contextLost(w *Feed) {
	c.contexts.mu.Lock()
	delete(c.contexts.named, w)
	c.contexts.mu.Unlock()
}
