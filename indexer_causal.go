package kappa

import (
	"fmt"
)

// Causal views: a view that opts in gets each entry only after every entry
// it causally follows.

// CausalViewer is implemented by views that want causal delivery: a view
// whose Causal returns true gets an entry only after its own feed's
// predecessors and every Pos in its Deps were given to Map (transitively,
// then, every entry it causally follows, across all feeds).
//
// The contract of View holds, with these changes:
//   - Per feed, delivery is contiguous from entry 0: an entry not held
//     (a sparse replica's hole, an entry found damaged) stalls the feed's
//     later entries until it comes.
//   - A batch holds entries of one feed and is cut before the first entry
//     whose Deps are not all delivered yet. The feed waits until they are
//     (or until it grows, for a hole); the view goes on with every other
//     feed, taking turns between feeds as for any view.
//   - A dependency that never comes stalls only the feed that names it,
//     from that entry on, and whatever depends on that: an entry not held
//     (or of a feed not in the database), a Pos at or past its feed's
//     length, a malformed context (the entry itself never comes), a cycle
//     between writers that name each other's future. Index.Status lists in
//     Waiting what each stalled feed waits on; nothing loops or spins: the
//     view sleeps until a feed grows, a feed is added, or a dependency is
//     delivered.
//   - Ready (Index.Ready, Core.Ready) waits for every entry present at the
//     call except those that wait, directly or through other stalled
//     feeds, on a dependency that is not held (not held, past its feed's
//     length, of a feed not in the database), on a malformed context, on a
//     cycle, or on a feed that could not be read: the waits that
//     Status reports as dead. An entry that waits on one that is held
//     and on its way is waited for. Ready never waits for an entry that no
//     delivery can release.
//   - Progress (as StateStorer stores it) is a prefix of each feed, so a
//     view restarted from stored progress goes on under the same rule. A
//     causal view whose stored progress is not a prefix of some feed (it
//     was stored while the view was not causal, under the same version) is
//     cleared and rebuilt from the first entry.
//
// Causal is asked once, when Use starts the view.
type CausalViewer interface {
	Causal() bool
}

// Wait is what the next entry of a stalled feed waits on, for a causal
// view (see CausalViewer and IndexStatus.Waiting).
type Wait struct {
	Feed []byte // the feed whose next entry waits
	Seq  uint64 // that entry
	// On is the dependency it waits for: a Pos of its Deps that is not
	// delivered to the view yet; the entry itself (Feed, Seq) when it is
	// not held or its context is malformed.
	On Pos
	// Reason says why, for people: "not held", "past the feed's end",
	// "feed not held", "malformed context", "cycle", "feed unreadable",
	// "not delivered yet", or for a dependency that waits itself "waits
	// on feed <key>, entry <seq>: <its reason>".
	Reason string
	// Dead is set when nothing present can release the wait (every reason
	// but "not delivered yet" and what waits on it): Ready does not wait
	// for the entry.
	Dead bool
}

// causalWait is the dependency a causal view's feed waits on: a Pos of the
// Deps of its next entry (seq) that is not delivered yet, or the entry
// itself when its context is malformed.
type causalWait struct {
	seq       uint64
	on        Pos
	malformed bool
	deps      []Pos // the entry's Deps; on is deps[at]: those before are delivered
	at        int
}

// delivered returns how many entries of p's feed a causal view was given:
// the end of the span that starts at 0.
func (p *feedProgress) delivered() uint64 {
	if len(p.spans) > 0 && p.spans[0].start == 0 {
		return p.spans[0].end
	}
	return 0
}

// savedPrefix is delivered for the progress stored.
func (p *feedProgress) savedPrefix() uint64 {
	if len(p.saved) > 0 && p.saved[0].start == 0 {
		return p.saved[0].end
	}
	return 0
}

// pickCausalLocked is pickLocked for a causal view: the entries from the
// first not delivered up to the first not held, if the feed does not wait.
func (x *Index) pickCausalLocked() (*feedProgress, uint64, uint64) {
	for {
		p := x.next()
		if p == nil {
			return nil, 0, 0
		}
		if p.ahead > 0 || p.broken || p.cwait != nil {
			continue // a waiting feed is queued again when released
		}
		start := p.delivered()
		end := min(p.feed.NextMissing(start), start+uint64(x.maxBatch))
		if start < end {
			return p, start, end
		}
		// A hole (or nothing new): the feed's change queues it again.
	}
}

// mapCausal is mapBatch for a causal view: it cuts b before the first entry
// whose context is malformed or names an entry not delivered yet, maps the
// entries before, and makes the feed wait on what stopped it.
func (x *Index) mapCausal(b *batchRead) (*mappedBatch, error) {
	if b.err != nil {
		return nil, x.skipUnread(b)
	}
	p, start, values := b.p, b.start, b.values
	key := p.feed.Key()
	entries := make([]Entry, 0, len(values))
	code := x.enc.code()
	var wait *causalWait
	x.mu.Lock()
	for i, blk := range values {
		seq := start + uint64(i)
		deps, v, malformed := decodeBlock(blk, key)
		if malformed {
			wait = &causalWait{seq: seq, on: Pos{Feed: key, Seq: seq}, malformed: true}
		}
		if at := x.undeliveredLocked(deps, 0); at < len(deps) {
			wait = &causalWait{seq: seq, on: deps[at], deps: deps, at: at}
		}
		if wait != nil {
			values = values[:i]
			break
		}
		entries = append(entries, Entry{Key: key, Seq: seq, Value: v, Deps: deps, enc: code})
	}
	x.mu.Unlock()
	m := &mappedBatch{p: p, start: start, end: start + uint64(len(values))}
	if err := x.mapEntries(m, key, entries); err != nil {
		return nil, err
	}
	if wait != nil {
		// Only once Map took the entries before it: after Map's error the
		// batch is mapped again, from its start.
		x.mu.Lock()
		p.cwait = wait
		if !wait.malformed {
			x.blockLocked(p)
		}
		x.mu.Unlock()
	}
	return m, nil
}

// releaseLocked queues the feeds that waited on an entry of p that is now
// delivered.
func (x *Index) releaseLocked(p *feedProgress) {
	ws := x.blocked[p.key]
	if len(ws) == 0 {
		return
	}
	n := p.delivered()
	kept := ws[:0]
	for _, q := range ws {
		w := q.cwait
		if w == nil || w.malformed || string(w.on.Feed) != p.key {
			continue // released or reset since
		}
		if w.on.Seq >= n {
			kept = append(kept, q)
			continue
		}
		// The next Pos of the entry's Deps not delivered, if any: the
		// entry's context is looked at once in all, however long.
		if w.at = x.undeliveredLocked(w.deps, w.at+1); w.at < len(w.deps) {
			w.on = w.deps[w.at]
			if string(w.on.Feed) == p.key {
				kept = append(kept, q) // cannot happen: keys differ
				continue
			}
			x.blockLocked(q)
			continue
		}
		q.cwait = nil
		x.queue(q, false)
	}
	clear(ws[len(kept):])
	if len(kept) == 0 {
		delete(x.blocked, p.key)
	} else {
		x.blocked[p.key] = kept
	}
}

// undeliveredLocked returns the index of the first Pos of deps from i on
// that is not delivered to the view, or len(deps).
func (x *Index) undeliveredLocked(deps []Pos, i int) int {
	for ; i < len(deps); i++ {
		if q := x.byKey[string(deps[i].Feed)]; q == nil || q.delivered() <= deps[i].Seq {
			break
		}
	}
	return i
}

// blockLocked makes p wait on the feed its cwait names.
func (x *Index) blockLocked(p *feedProgress) {
	if x.blocked == nil {
		x.blocked = make(map[string][]*feedProgress)
	}
	k := string(p.cwait.on.Feed)
	x.blocked[k] = append(x.blocked[k], p)
}

// resetWaitsLocked forgets every wait (progress was reset or went back):
// the feeds are looked at again when next picked.
func (x *Index) resetWaitsLocked() {
	for _, p := range x.feeds {
		if p.cwait != nil {
			p.cwait = nil
			x.queue(p, false)
		}
	}
	x.blocked = nil
}

// waitOfLocked tells what p's next entry waits on, if it waits: the direct
// wait (seq, on), and the reason, following the chain of stalled feeds to
// tell whether it is dead (nothing present can release it).
func (x *Index) waitOfLocked(p *feedProgress) (Wait, bool) {
	seq, on, reason, dead, next, ok := x.stepLocked(p)
	if !ok {
		return Wait{}, false
	}
	w := Wait{Feed: []byte(p.key), Seq: seq, On: on, Reason: reason, Dead: dead}
	if next == nil {
		return w, true
	}
	// on is held but not delivered and its feed is stalled before it:
	// follow the chain (each feed waits on at most one thing).
	seen := map[*feedProgress]bool{p: true}
	for q := next; ; {
		if seen[q] {
			w.Reason, w.Dead = "cycle", true
			return w, true
		}
		seen[q] = true
		qs, _, r, d, n, ok := x.stepLocked(q)
		if !ok {
			return w, true // q goes on: "not delivered yet"
		}
		if n == nil {
			w.Reason = fmt.Sprintf("waits on feed %x, entry %d: %s", q.key[:min(4, len(q.key))], qs, r)
			w.Dead = d
			return w, true
		}
		q = n
	}
}

// stepLocked is one step of waitOfLocked: what p's next entry waits on
// directly. next is the feed that holds the dependency and is itself
// stalled before it (the chain goes on there); else reason and dead are
// final.
func (x *Index) stepLocked(p *feedProgress) (seq uint64, on Pos, reason string, dead bool, next *feedProgress, ok bool) {
	if p.feed == nil {
		return 0, Pos{}, "", false, nil, false
	}
	d := p.delivered()
	if p.broken {
		return d, Pos{Feed: []byte(p.key), Seq: d}, "feed unreadable", true, nil, true
	}
	w := p.cwait
	if w == nil {
		if p.hasHoleLocked() {
			return d, Pos{Feed: []byte(p.key), Seq: d}, "not held", true, nil, true
		}
		return 0, Pos{}, "", false, nil, false
	}
	seq, on = w.seq, w.on
	if w.malformed {
		return seq, on, "malformed context", true, nil, true
	}
	g := x.byKey[string(on.Feed)]
	switch {
	case g == nil || g.feed == nil:
		return seq, on, "feed not held", true, nil, true
	case g.delivered() > on.Seq:
		return seq, on, "not delivered yet", false, nil, true // released at once
	case on.Seq >= g.feed.Len():
		return seq, on, "past the feed's end", true, nil, true
	case !g.feed.Has(on.Seq):
		return seq, on, "not held", true, nil, true
	}
	if g.broken || g.cwait != nil || g.hasHoleLocked() {
		return seq, on, "not delivered yet", false, g, true
	}
	return seq, on, "not delivered yet", false, nil, true
}

// hasHoleLocked reports whether p's next entry to deliver is not held while
// a later one is.
func (p *feedProgress) hasHoleLocked() bool {
	d, f := p.delivered(), p.feed
	return d < f.Len() && !f.Has(d) && f.NextPresent(d) < f.Len()
}

// causalStatusLocked fills in st.Waiting, and the state: a causal view
// whose every entry left waits on a dead dependency is idle.
func (x *Index) causalStatusLocked(st *IndexStatus) {
	var stalled uint64
	for _, p := range x.feeds {
		w, ok := x.waitOfLocked(p)
		if !ok {
			continue
		}
		st.Waiting = append(st.Waiting, w)
		if w.Dead {
			if h := p.feed.Downloaded(); h > p.n {
				stalled += h - p.n
			}
		}
	}
	if st.State == ViewIndexing && !x.busy && st.Indexed+stalled >= st.Total {
		st.State = ViewIdle
	}
}

// causalReadyLocked reports whether a Ready call waiting for the entries
// spans of p may stop waiting for p: they are delivered and stored, or the
// feed is stalled on a dead wait and what comes before it is stored.
func (x *Index) causalReadyLocked(p *feedProgress, spans []span) bool {
	if p.broken {
		return true
	}
	saved := p.savedPrefix()
	if len(spans) == 0 || saved >= spans[len(spans)-1].end {
		return true
	}
	w, ok := x.waitOfLocked(p)
	return ok && w.Dead && saved >= w.Seq
}
