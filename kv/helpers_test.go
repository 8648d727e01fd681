package kv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// testTimeout only turns a hang into a failure.
const testTimeout = 60 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openDB opens a directory database under dir/db.
func openDB(t testing.TB, dir string, opts *kappa.Options) *kappa.Core {
	t.Helper()
	c, err := kappa.Open(filepath.Join(dir, "db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// replica is one database with a kv view.
type replica struct {
	dir  string
	core *kappa.Core
	kv   *KV
}

func newReplica(t testing.TB, opts *kappa.Options) *replica {
	t.Helper()
	dir := t.TempDir()
	c := openDB(t, dir, opts)
	s, err := Open(c, "kv", filepath.Join(dir, "kv"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &replica{dir: dir, core: c, kv: s}
}

func (r *replica) writer(t testing.TB, name string) *kappa.Feed {
	t.Helper()
	w, err := r.core.Writer(name)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (r *replica) ready(t testing.TB) {
	t.Helper()
	if err := r.kv.Ready(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// sync runs one non-live replication session between a and b over a pipe;
// accept (nil: every feed) chooses the feeds b takes from a.
func syncPair(t testing.TB, a, b *kappa.Core, accept func(key []byte) bool) {
	t.Helper()
	ca, cb := net.Pipe()
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- b.Replicate(ctx, cb, false, &kappa.ReplicateOptions{Accept: accept}) }()
	if err := a.Replicate(ctx, ca, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// collect is a plain view that keeps every entry it is given.
type collect struct {
	mu      sync.Mutex
	entries []kappa.Entry
}

func (c *collect) Map(es []kappa.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range es {
		e.Value = bytes.Clone(e.Value)
		c.entries = append(c.entries, e)
	}
	return nil
}

// allEntries returns every entry of core (through a throwaway view).
func allEntries(t testing.TB, core *kappa.Core) []kappa.Entry {
	t.Helper()
	var c collect
	name := fmt.Sprintf("collect-%p", &c)
	if _, err := core.Use(name, 1, &c); err != nil {
		t.Fatal(err)
	}
	if err := core.Ready(testCtx(t), name); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.entries)
}

// model computes, by brute force, each key's current versions from
// entries: vector clocks from the Deps, then the maximal entries per key.
func model(t testing.TB, entries []kappa.Entry) map[string][]Version {
	t.Helper()
	type node struct {
		e  kappa.Entry
		vc map[string]uint64 // entries of each feed in the causal past, itself included
	}
	byFeed := map[string]map[uint64]*node{}
	for _, e := range entries {
		m := byFeed[string(e.Key)]
		if m == nil {
			m = map[uint64]*node{}
			byFeed[string(e.Key)] = m
		}
		m[e.Seq] = &node{e: e}
	}
	var clock func(f string, s uint64, depth int) map[string]uint64
	clock = func(f string, s uint64, depth int) map[string]uint64 {
		n := byFeed[f][s]
		if n == nil {
			t.Fatalf("model: entry %x/%d not held", f, s)
		}
		if n.vc != nil {
			return n.vc
		}
		if depth > 100000 {
			t.Fatal("model: too deep")
		}
		vc := map[string]uint64{f: s + 1}
		join := func(o map[string]uint64) {
			for k, v := range o {
				vc[k] = max(vc[k], v)
			}
		}
		if s > 0 {
			join(clock(f, s-1, depth+1))
		}
		for _, d := range n.e.Deps {
			join(clock(string(d.Feed), d.Seq, depth+1))
		}
		n.vc = vc
		return vc
	}
	before := func(a, b kappa.Entry) bool { // a happened before b
		return !(string(a.Key) == string(b.Key) && a.Seq == b.Seq) && a.Seq < clock(string(b.Key), b.Seq, 0)[string(a.Key)]
	}
	byKey := map[string][]kappa.Entry{}
	recs := map[*kappa.Entry]record{}
	for i := range entries {
		r, ok := decodeRecord(entries[i].Value)
		if !ok {
			continue
		}
		recs[&entries[i]] = r
		byKey[r.key] = append(byKey[r.key], entries[i])
	}
	out := map[string][]Version{}
	for k, es := range byKey {
		var vs []Version
		for _, e := range es {
			if slices.ContainsFunc(es, func(o kappa.Entry) bool { return before(e, o) }) {
				continue
			}
			r, _ := decodeRecord(e.Value)
			vs = append(vs, Version{Pos: kappa.Pos{Feed: e.Key, Seq: e.Seq}, Value: r.value, Deleted: r.deleted})
		}
		slices.SortFunc(vs, func(a, b Version) int { return cmpPos(a.Pos, b.Pos) })
		out[k] = vs
	}
	return out
}

// dump returns every key's versions held by s.
func dump(t testing.TB, s *KV) map[string][]Version {
	t.Helper()
	s.mu.RLock()
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		keys = append(keys, k)
	}
	s.mu.RUnlock()
	out := map[string][]Version{}
	for _, k := range keys {
		vs, err := s.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = vs
	}
	return out
}

func sameVersions(a, b []Version) bool {
	return slices.EqualFunc(a, b, func(x, y Version) bool {
		return samePos(x.Pos, y.Pos) && bytes.Equal(x.Value, y.Value) && x.Deleted == y.Deleted
	})
}

func equalDumps(t testing.TB, what string, got, want map[string][]Version) {
	t.Helper()
	for k, w := range want {
		if !sameVersions(got[k], w) {
			t.Errorf("%s: key %q: got %s, want %s", what, k, fmtVersions(got[k]), fmtVersions(w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: key %q: got %s, want none", what, k, fmtVersions(g))
		}
	}
}

func fmtVersions(vs []Version) string {
	var b bytes.Buffer
	for _, v := range vs {
		fmt.Fprintf(&b, "[%x/%d %q del=%v]", v.Pos.Feed[:4], v.Pos.Seq, v.Value, v.Deleted)
	}
	return b.String()
}
