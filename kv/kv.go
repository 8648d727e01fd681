// Package kv is a multi-writer key-value view of a kappa database, with
// visible forks.
//
// Every writer puts and deletes keys by appending entries to its own feed
// (see the entry format in record.go: a small JSON object valid under every
// value encoding). Get returns a key's current versions: every value for
// the key that no later value for the key causally follows, in the causal
// order the database records (each Append names what its writer had seen;
// see kappa's doc/CAUSAL.md). One version means agreement; two or more mean
// concurrent edits, a fork, which the application sees and resolves by
// writing a new value after seeing them: that entry follows both and
// replaces them.
//
// Applying an entry E for key k removes every current version V of k that
// happened before E, and adds E unless a current version happened after E
// (which causal delivery rules out). The result is the set of maximal
// entries for k in causal order, so two replicas that hold the same entries
// give identical answers whatever order the entries arrived in, and
// applying an entry again changes nothing.
//
// The view is durable: its data and the indexer's progress live in one
// append-only file under the directory given to Open, written together
// with one fsync per record, so every entry is applied exactly once across
// crashes (see log.go for the file's layout).
package kv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	kappa "github.com/kappa-db/kappa-go"
)

// Version is one current version of a key.
type Version struct {
	Pos     kappa.Pos // the entry that wrote it
	Value   []byte    // the value put; nil for a Delete
	Deleted bool      // the entry deleted the key (a tombstone)
}

// viewVersion is the version of the view's data, given to Core.Use: a new
// version rebuilds the view from the first entry.
const viewVersion = 1

// KV is a key-value view. Its methods are safe for concurrent use.
type KV struct {
	core  *kappa.Core
	name  string
	ord   orderer
	index *kappa.Index

	mu      sync.RWMutex
	data    map[string][]Version // current versions, sorted by (Feed, Seq)
	live    int64                // bytes a snapshot of data takes
	pending []op                 // changes since the last record
	sorted  []string             // the keys in order, when !dirty
	dirty   bool
	log     *logFile
	state   []byte // the last progress stored
	closed  bool
}

// Open opens (creating) the key-value view named name of core, keeping its
// data under dir, and starts it (Core.Use with name). A view is installed
// for the life of the Core: open it once per Core.
func Open(core *kappa.Core, name string, dir string) (*KV, error) {
	if core == nil {
		return nil, fmt.Errorf("kv: open %q: %w: no database", name, kappa.ErrInvalidValue)
	}
	s := &KV{core: core, name: name, ord: core, data: map[string][]Version{}, dirty: true}
	l, state, err := openLog(dir, s.replayOp)
	if err != nil {
		return nil, fmt.Errorf("kv: open %q: %w", name, err)
	}
	s.log, s.state = l, state
	x, err := core.Use(name, viewVersion, s)
	if err != nil {
		l.close()
		return nil, fmt.Errorf("kv: open %q: %w", name, err)
	}
	s.index = x
	return s, nil
}

// Put appends an entry setting key to value to writer w. The key must be
// valid UTF-8. The view shows it once it has indexed it (see Ready).
func (s *KV) Put(w *kappa.Feed, key string, value []byte) error {
	return s.append(w, record{key: key, value: value})
}

// Delete appends an entry deleting key to writer w: a tombstone, which
// stays a version until a later Put replaces it.
func (s *KV) Delete(w *kappa.Feed, key string) error {
	return s.append(w, record{key: key, deleted: true})
}

func (s *KV) append(w *kappa.Feed, r record) error {
	b, err := encodeRecord(r)
	if err != nil {
		return err
	}
	if _, err := w.Append(b); err != nil {
		return fmt.Errorf("kv: put %q: %w", r.key, err)
	}
	return nil
}

// Get returns the current versions of key, sorted by (Feed, Seq): none if
// the key was never written, one if the writers agree, two or more for a
// fork. A deleted key has a version with Deleted set. The slices returned
// are the caller's.
func (s *KV) Get(key string) ([]Version, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("kv: get: %w", kappa.ErrClosed)
	}
	vs := s.data[key]
	if len(vs) == 0 {
		return nil, nil
	}
	out := make([]Version, len(vs))
	for i, v := range vs {
		out[i] = Version{Pos: kappa.Pos{Feed: slices.Clone(v.Pos.Feed), Seq: v.Pos.Seq}, Value: slices.Clone(v.Value), Deleted: v.Deleted}
	}
	return out, nil
}

// Keys calls fn with each key from from on (from included), in key order
// (bytewise), until fn returns false. A key is listed if one of its
// current versions is not a Delete. Sorting is done when Keys runs after
// keys were added or removed; fn runs without the view's lock held.
func (s *KV) Keys(from string, fn func(key string) bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("kv: keys: %w", kappa.ErrClosed)
	}
	if s.dirty {
		s.sorted = s.sorted[:0]
		for k, vs := range s.data {
			for _, v := range vs {
				if !v.Deleted {
					s.sorted = append(s.sorted, k)
					break
				}
			}
		}
		slices.Sort(s.sorted)
		s.dirty = false
	}
	keys := s.sorted
	s.mu.Unlock()
	i, _ := slices.BinarySearch(keys, from)
	for _, k := range keys[i:] {
		if !fn(k) {
			return nil
		}
	}
	return nil
}

// Ready waits until the view has indexed every entry present when Ready was
// called (see Core.Ready).
func (s *KV) Ready(ctx context.Context) error {
	return s.index.Ready(ctx)
}

// Close pauses the view (waiting for the batch being mapped) and closes
// its file. The view stays installed in the Core, paused.
func (s *KV) Close() error {
	perr := s.index.Pause(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.log.close()
	if perr != nil && !errors.Is(perr, kappa.ErrClosed) && err == nil {
		err = fmt.Errorf("kv: close: %w", perr)
	}
	return err
}

var _ kappa.CausalViewer = (*KV)(nil)

// Causal reports that the view wants causal delivery (kappa.CausalViewer):
// it gets an entry only after every entry that entry causally follows.
func (s *KV) Causal() bool { return true }

// Map applies a batch of entries (kappa.View); the changes are written by
// the next StoreState, together with the progress.
func (s *KV) Map(entries []kappa.Entry) error {
	for _, e := range entries {
		r, ok := decodeRecord(e.Value)
		if !ok {
			continue
		}
		if err := s.apply(kappa.Pos{Feed: e.Key, Seq: e.Seq}, r); err != nil {
			return err
		}
	}
	return nil
}

// apply applies entry p, record r (see the package comment). Map is the
// only writer of data, so the versions read here stay current until apply
// changes them.
func (s *KV) apply(p kappa.Pos, r record) error {
	s.mu.RLock()
	vs := s.data[r.key]
	s.mu.RUnlock()
	var remove []Version
	for _, v := range vs {
		o, err := s.compare(v.Pos, p)
		if err != nil {
			return err
		}
		switch o {
		case kappa.Same, kappa.After:
			return nil // applied already, or a later version replaced it
		case kappa.Before:
			remove = append(remove, v)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	nv := make([]Version, 0, len(vs)+1-len(remove))
	for _, v := range vs {
		if slices.ContainsFunc(remove, func(x Version) bool { return samePos(x.Pos, v.Pos) }) {
			o := op{kind: opRemove, key: r.key, feed: v.Pos.Feed, seq: v.Pos.Seq}
			s.pending = append(s.pending, o)
			s.live -= int64(opSize(op{kind: opAdd, key: r.key, feed: v.Pos.Feed, seq: v.Pos.Seq, value: v.Value}))
			continue
		}
		nv = append(nv, v)
	}
	add := op{kind: opAdd, key: r.key, feed: p.Feed, seq: p.Seq, deleted: r.deleted, value: r.value}
	s.pending = append(s.pending, add)
	s.live += int64(opSize(add))
	nv = insertVersion(nv, Version{Pos: p, Value: r.value, Deleted: r.deleted})
	s.setLocked(r.key, vs, nv)
	return nil
}

// setLocked replaces key's versions old by nv, noting when the key list
// changes.
func (s *KV) setLocked(key string, old, nv []Version) {
	listed := func(vs []Version) bool {
		return slices.ContainsFunc(vs, func(v Version) bool { return !v.Deleted })
	}
	if listed(old) != listed(nv) {
		s.dirty = true
	}
	if len(nv) == 0 {
		delete(s.data, key)
		return
	}
	s.data[key] = nv
}

// compare tells how a and b are related. The view is causal: both
// entries and everything they follow were delivered, and a causal view
// starts only once the database's causal index holds every entry held at
// open, so Compare knows them; Unknown is an error (the batch is retried).
func (s *KV) compare(a, b kappa.Pos) (kappa.Order, error) {
	if string(a.Feed) == string(b.Feed) {
		return cmpOrder(a.Seq, b.Seq), nil
	}
	o, err := s.ord.Compare(a, b)
	if err == nil && o == kappa.Unknown {
		err = fmt.Errorf("kv: the order of %x/%d and %x/%d is unknown", a.Feed[:4], a.Seq, b.Feed[:4], b.Seq)
	}
	return o, err
}

// cmpOrder is the order of seqs a and b of one feed.
func cmpOrder(a, b uint64) kappa.Order {
	switch {
	case a < b:
		return kappa.Before
	case a > b:
		return kappa.After
	}
	return kappa.Same
}

func samePos(a, b kappa.Pos) bool { return a.Seq == b.Seq && string(a.Feed) == string(b.Feed) }

func cmpPos(a, b kappa.Pos) int {
	if c := strings.Compare(string(a.Feed), string(b.Feed)); c != 0 {
		return c
	}
	switch {
	case a.Seq < b.Seq:
		return -1
	case a.Seq > b.Seq:
		return 1
	}
	return 0
}

// insertVersion inserts v into vs, sorted by (Feed, Seq), unless there.
func insertVersion(vs []Version, v Version) []Version {
	i, found := slices.BinarySearchFunc(vs, v.Pos, func(x Version, p kappa.Pos) int { return cmpPos(x.Pos, p) })
	if found {
		return vs
	}
	return slices.Insert(vs, i, v)
}

// replayOp applies an op of the log at open.
func (s *KV) replayOp(o op) {
	p := kappa.Pos{Feed: slices.Clone(o.feed), Seq: o.seq}
	vs := s.data[o.key]
	a := op{kind: opAdd, key: o.key, feed: o.feed, seq: o.seq}
	switch o.kind {
	case opAdd:
		n := len(vs)
		vs = insertVersion(vs, Version{Pos: p, Value: slices.Clone(o.value), Deleted: o.deleted})
		if len(vs) > n {
			a.value = o.value
			s.live += int64(opSize(a))
		}
	case opRemove:
		i := slices.IndexFunc(vs, func(v Version) bool { return samePos(v.Pos, p) })
		if i < 0 {
			return
		}
		a.value = vs[i].Value
		s.live -= int64(opSize(a))
		vs = slices.Delete(vs, i, i+1)
	}
	if len(vs) == 0 {
		delete(s.data, o.key)
	} else {
		s.data[o.key] = vs
	}
}

// FetchState returns the progress stored with the data (kappa.StateStorer).
func (s *KV) FetchState() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.state) == 0 {
		return nil, nil
	}
	return slices.Clone(s.state), nil
}

// StoreState writes the changes mapped since the last call and the
// progress state as one record of the view's file, and fsyncs it
// (kappa.StateStorer). When the file has grown past twice the data it
// holds, it is compacted.
func (s *KV) StoreState(state []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("kv: store state: %w", kappa.ErrClosed)
	}
	if err := s.log.write(encodeLogRecord(s.pending, state)); err != nil {
		return err // pending stays: the next record carries it
	}
	s.pending = nil
	s.state = state
	if s.log.size > compactMin && s.log.size > 2*(s.live+int64(len(state))) {
		return s.compactLocked()
	}
	return nil
}

// compactLocked replaces the file by a snapshot of the data and state.
func (s *KV) compactLocked() error {
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var ops []op
	for _, k := range keys {
		for _, v := range s.data[k] {
			ops = append(ops, op{kind: opAdd, key: k, feed: v.Pos.Feed, seq: v.Pos.Seq, deleted: v.Deleted, value: v.Value})
		}
	}
	if err := s.log.replace(encodeLogRecord(ops, s.state)); err != nil {
		return fmt.Errorf("kv: compact: %w", err)
	}
	return nil
}

// ClearIndex wipes the view's data and progress (kappa.IndexClearer).
func (s *KV) ClearIndex() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("kv: clear: %w", kappa.ErrClosed)
	}
	if err := s.log.replace(nil); err != nil {
		return err
	}
	clear(s.data)
	s.pending, s.state, s.live, s.dirty = nil, nil, 0, true
	return nil
}

// MaxBatch is the view's batch size (kappa.MaxBatcher): each StoreState,
// after every batch (or a group of batches once the view's progress names
// 128 feeds or more: see kappa.StateStorer), appends a record to the file
// and fsyncs it.
func (s *KV) MaxBatch() int { return 1000 }
