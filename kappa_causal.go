package kappa

import (
	"context"
	"fmt"
	"sync"
)

// The Core's causal index (causal_index.go) and how it is fed.
//
// Numbers. The index names feeds by dense ints. A Core numbers its feeds
// in its feed order at open (the order of Feeds), then every key when it is
// first seen: a feed added later, or a key that a context names but the
// database does not hold (a placeholder). A placeholder's number is the
// one its feed gets if it arrives, so the segments that name it wait in
// the index and are indexed when that feed's entries are added. Numbers
// live as long as the opened Core (one int and one map entry per key).
//
// Feeding. Every Append call adds one segment (its entries, the first one
// following the call's context) and every Put one per run of its blocks
// cut before each block that carries a context; both before the entries
// are published, so that a view that reads them finds them indexed once
// their causal past is. A malformed context is the dependency that never
// comes (neverDep): that entry and its feed's later ones stay Unknown.
//
// Rebuild. At open a goroutine adds the held entries of every loaded feed,
// reading their blocks in steps of at most causalRebuildStep entries (and
// causalRebuildBytes) per feed in turn, so that one huge feed does not hold
// up the others; Open does not wait for it, Close does. Until it has added
// an entry, Compare of it says Unknown.

const (
	causalRebuildStep  = 4096    // entries read of one feed per step of the rebuild
	causalRebuildBytes = 1 << 20 // bytes read of one feed per step (at least one entry)
)

// causalState is a Core's causal index and the numbers of its feeds.
type causalState struct {
	mu   sync.RWMutex
	nums map[string]int // feed key → its number in the index
	next int            // the next number given

	index causalIndex

	rebuilt chan struct{} // closed when the rebuild after open is over
	wg      sync.WaitGroup
	// pending: feeds (by number) whose entries held at open the rebuild
	// has not all added yet. Guarded by mu.
	pending map[int]bool
}

// rebuilding reports whether the rebuild after open has not yet added
// every entry feed n held at open.
func (s *causalState) rebuilding(n int) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pending[n]
}

// rebuiltFeed records that feed n's entries held at open are all added.
func (s *causalState) rebuiltFeed(n int) {
	s.mu.Lock()
	delete(s.pending, n)
	s.mu.Unlock()
}

// num returns key's number, giving it the next one if it has none.
func (s *causalState) num(key []byte) int {
	if n, ok := s.lookup(key); ok {
		return n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.numLocked(key)
}

func (s *causalState) numLocked(key []byte) int {
	if n, ok := s.nums[string(key)]; ok {
		return n
	}
	if s.nums == nil {
		s.nums = make(map[string]int)
	}
	n := s.next
	s.nums[string(key)] = n
	s.next++
	return n
}

// lookup returns key's number, if it has one.
func (s *causalState) lookup(key []byte) (int, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.nums[string(key)]
	return n, ok
}

// deps returns the index's deps of a context (numbering the keys it names).
func (s *causalState) deps(ctx []Pos) []dep {
	if len(ctx) == 0 {
		return nil
	}
	d := make([]dep, len(ctx))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range ctx {
		d[i] = dep{feed: s.numLocked(p.Feed), seq: p.Seq}
	}
	return d
}

// causalStored is the feedConfig's stored hook: it adds the segment
// start..end-1 of f, whose first block (or prefix) is first, to the index.
func (c *Core) causalStored(f *Feed, start, end uint64, first []byte) {
	k := c.causal.num(f.key)
	var deps []dep
	if len(first) == 0 || first[0] != 0 {
		ctx, _, malformed := decodeBlock(first, f.key)
		if malformed {
			deps = []dep{neverDep}
		} else {
			deps = c.causal.deps(ctx)
		}
	}
	c.causal.index.add(k, start, end, deps)
}

// storedBlocksWriteLocked tells f's Core (the stored hook) of the blocks of
// a Put, entries start on, cut into runs before each block that carries a
// context (or is malformed: its first byte is not 0).
func (f *Feed) storedBlocksWriteLocked(start uint64, blocks [][]byte) {
	if f.cfg.stored == nil || len(blocks) == 0 {
		return
	}
	from := 0
	for i := 1; i <= len(blocks); i++ {
		if i == len(blocks) || len(blocks[i]) == 0 || blocks[i][0] != 0 {
			f.cfg.stored(f, start+uint64(from), start+uint64(i), blocks[from])
			from = i
		}
	}
}

// startCausal numbers the loaded feeds in feed order and starts the
// rebuild of the index from their held entries (see above).
func (c *Core) startCausal() {
	c.mu.RLock()
	feeds := append([]*Feed(nil), c.feeds...)
	c.mu.RUnlock()
	c.causal.mu.Lock()
	c.causal.pending = map[int]bool{}
	c.causal.mu.Unlock()
	for _, f := range feeds {
		n := c.causal.num(f.key)
		if f.Len() > 0 {
			c.causal.mu.Lock()
			c.causal.pending[n] = true
			c.causal.mu.Unlock()
		}
	}
	c.causal.rebuilt = make(chan struct{})
	c.causal.wg.Add(1)
	go func() {
		defer c.causal.wg.Done()
		defer close(c.causal.rebuilt)
		c.rebuildCausal(feeds)
	}()
}

// rebuildCausal adds the entries each feed held at open, a step of each
// feed in turn, until done or the Core closes.
func (c *Core) rebuildCausal(feeds []*Feed) {
	next := make([]uint64, len(feeds)) // where each feed's next step starts
	ends := make([]uint64, len(feeds)) // each feed's length at open
	for i, f := range feeds {
		ends[i] = f.Len()
	}
	for active := true; active; {
		active = false
		for i, f := range feeds {
			select {
			case <-c.done:
				return
			default:
			}
			if next[i] >= ends[i] {
				continue
			}
			next[i] = c.rebuildStep(f, next[i], ends[i])
			if next[i] >= ends[i] {
				c.causal.rebuiltFeed(c.causal.num(f.key))
			}
			active = active || next[i] < ends[i]
		}
	}
}

// rebuildStep adds a step of f's held entries from seq on (below end), and
// returns where the next step starts.
func (c *Core) rebuildStep(f *Feed, seq, end uint64) uint64 {
	if plain := min(f.plain.Load(), end); seq < plain {
		// Blocks its writer appended without a context: nothing to
		// read, each follows the one before it.
		c.causal.index.add(c.causal.num(f.key), seq, plain, nil)
		if causalRebuildStepped != nil {
			causalRebuildStepped(f, seq, plain)
		}
		return plain
	}
	seq = f.NextPresent(seq)
	if seq >= end {
		return end
	}
	stop := min(f.NextMissing(seq), end, seq+causalRebuildStep)
	if stop <= seq {
		return seq + 1 // damaged since: skip it
	}
	blocks, err := intactPrefix(f.readRangeQuiet(seq, stop, causalRebuildBytes))
	if err != nil || len(blocks) == 0 {
		return seq + 1 // unreadable: that entry stays out of the index
	}
	f.storedBlocksCausal(c, seq, blocks)
	if causalRebuildStepped != nil {
		causalRebuildStepped(f, seq, seq+uint64(len(blocks)))
	}
	return seq + uint64(len(blocks))
}

// causalRebuildStepped, if set, is told of each step of a rebuild (a test
// hook; set it before Open).
var causalRebuildStepped func(f *Feed, start, end uint64)

// storedBlocksCausal is storedBlocksWriteLocked for the rebuild, which
// does not hold writeMu (the index takes its own lock).
func (f *Feed) storedBlocksCausal(c *Core, start uint64, blocks [][]byte) {
	from := 0
	for i := 1; i <= len(blocks); i++ {
		if i == len(blocks) || len(blocks[i]) == 0 || blocks[i][0] != 0 {
			c.causalStored(f, start+uint64(from), start+uint64(i), blocks[from])
			from = i
		}
	}
}

// causalReady waits until the rebuild of the causal index after open has
// added every entry held at open (Compare then answers for them as for
// entries stored since), ctx ends, or the Core closes.
func (c *Core) causalReady(ctx context.Context) error {
	select {
	case <-c.causal.rebuilt:
		return nil
	case <-c.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Compare tells how entries a and b of the database are related in causal
// order (see Order): Before if a happened before b, After if b happened
// before a, Concurrent if neither, Same if they are one entry. It is exact.
// It returns Unknown while one of them, or an entry in the causal past of
// one of them, is not held, or has a malformed context on the way, or is
// not indexed yet: after Open, a goroutine indexes the entries held, and
// until it reaches them they are Unknown (Ready does not wait for it);
// entries appended or received since are indexed as they are stored.
//
// Compare takes no lock a view holds and costs two binary searches: it is
// meant to be called inside Map. It returns an error only for a Pos whose
// Feed is not 32 bytes (ErrInvalidKey) or a closed database (ErrClosed).
func (c *Core) Compare(a, b Pos) (Order, error) {
	if len(a.Feed) != 32 || len(b.Feed) != 32 {
		return Unknown, fmt.Errorf("compare: %w: feed keys of %d and %d bytes, want 32", ErrInvalidKey, len(a.Feed), len(b.Feed))
	}
	select {
	case <-c.done:
		return Unknown, fmt.Errorf("compare: %w", ErrClosed)
	default:
	}
	fa, ok := c.causal.lookup(a.Feed)
	if !ok {
		return Unknown, nil
	}
	fb, ok := c.causal.lookup(b.Feed)
	if !ok {
		return Unknown, nil
	}
	return c.causal.index.compare(pos{fa, a.Seq}, pos{fb, b.Seq}), nil
}
