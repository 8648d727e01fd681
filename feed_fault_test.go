package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// errInjected is the failure a faultStorage injects: a full disk.
var errInjected = fmt.Errorf("injected: %w", syscall.ENOSPC)

// faultStorage wraps a Storage and fails the operations armed, each once:
// the next WriteAt, Truncate or Sync (op "write", "truncate" or "sync") of
// a file whose name ends in /file (or is file). A failed write first lands
// half of its bytes, as a write that ran out of space part way does; a
// failed truncate or sync does nothing.
type faultStorage struct {
	Storage
	mem    *MemStorage // the Storage, if it is one
	mu     sync.Mutex
	faults [][2]string // file, op
	fired  int
}

func newMemFaultStorage() *faultStorage {
	m := NewMemStorage()
	return &faultStorage{Storage: m, mem: m}
}

func (s *faultStorage) Open(name string, create bool) (File, error) {
	f, err := s.Storage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: f, name: name, s: s}, nil
}

// arm makes the next op on a file named …/file fail.
func (s *faultStorage) arm(file, op string) {
	s.mu.Lock()
	s.faults = append(s.faults, [2]string{file, op})
	s.mu.Unlock()
}

// disarm cancels the failures that have not happened, and reports whether
// any did.
func (s *faultStorage) disarm() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	return s.fired > 0
}

func (s *faultStorage) fire(name, op string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, ft := range s.faults {
		if ft[1] == op && (strings.HasSuffix(name, "/"+ft[0]) || name == ft[0]) {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			s.fired++
			return true
		}
	}
	return false
}

type faultFile struct {
	File
	name string
	s    *faultStorage
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.s.fire(f.name, "write") {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, fmt.Errorf("write %s: %w", f.name, errInjected)
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Truncate(size int64) error {
	if f.s.fire(f.name, "truncate") {
		return fmt.Errorf("truncate %s: %w", f.name, errInjected)
	}
	return f.File.Truncate(size)
}

func (f *faultFile) Sync() error {
	if f.s.fire(f.name, "sync") {
		return fmt.Errorf("sync %s: %w", f.name, errInjected)
	}
	return f.File.Sync()
}

// faultValue is the value of entry seq in these tests.
func faultValue(seq uint64) []byte { return []byte(fmt.Sprintf("entry %d of the feed", seq)) }

// faultAppend appends n entries to f after its acked ones; it returns the new
// number of acknowledged entries, and the error. A refused append must say
// why, and a failed one must leave the length alone.
func faultAppend(t *testing.T, f *Feed, acked uint64, n int) (uint64, error) {
	t.Helper()
	before := f.Len()
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = faultValue(before + uint64(i))
	}
	seq, err := f.Append(vals...)
	if err != nil {
		if f.Len() != before {
			t.Fatalf("a failed append changed the length from %d to %d", before, f.Len())
		}
		return acked, err
	}
	if seq != before {
		t.Fatalf("append returned %d, want %d", seq, before)
	}
	return before + uint64(n), nil
}

// checkFaultFeed opens the feed of prefix from s and checks that it holds
// at least the acked entries, each as written and verified, and that it
// takes a new append.
// With noRepair, opening must find nothing to repair: a failed write was
// undone.
func checkFaultFeed(t *testing.T, s Storage, prefix string, acked uint64, noRepair bool, where string) {
	t.Helper()
	var repairs []Repair
	f, err := OpenFeed(s, prefix, &FeedOptions{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatalf("%s: reopen: %v", where, err)
	}
	defer f.Close()
	if noRepair && len(repairs) > 0 {
		t.Fatalf("%s: a failed write was not undone: reopening repaired %v", where, repairs)
	}
	checkFaultEntries(t, f, acked, where)
	if _, err := f.Append(faultValue(f.Len())); err != nil {
		t.Fatalf("%s: append after reopen: %v", where, err)
	}
}

func checkFaultEntries(t *testing.T, f *Feed, acked uint64, where string) {
	t.Helper()
	n := f.Len()
	if n < acked {
		t.Fatalf("%s: length %d, %d entries were acknowledged", where, n, acked)
	}
	if n == 0 {
		return
	}
	vals, err := f.GetBatch(context.Background(), 0, n)
	if err != nil {
		t.Fatalf("%s: read back: %v", where, err)
	}
	for i, v := range vals {
		if string(v) != string(faultValue(uint64(i))) {
			t.Fatalf("%s: entry %d is %q", where, i, v)
		}
	}
	length, sig := f.Signature()
	if err := f.Verify(length, sig); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
}

// checkAfterFault checks the feed of prefix in s as it is (with noRepair,
// finding nothing to repair), and as a crash now could leave it.
func checkAfterFault(t *testing.T, s *MemStorage, prefix string, acked uint64, noRepair bool, where string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(where)), 7))
	clones := []*MemStorage{s.crashClone(nil)}
	for range 32 {
		clones = append(clones, s.crashClone(rng))
	}
	checkFaultFeed(t, s, prefix, acked, noRepair, where+", reopened")
	for i, c := range clones {
		checkFaultFeed(t, c, prefix, acked, false, fmt.Sprintf("%s, after crash %d", where, i))
	}
}

// crashClones returns n states a crash now could leave m in, the first
// with nothing unsynced.
func crashClones(m *MemStorage, rng *rand.Rand, n int) []*MemStorage {
	clones := []*MemStorage{m.crashClone(nil)}
	for range n - 1 {
		clones = append(clones, m.crashClone(rng))
	}
	return clones
}

// The reproduction: a signature write that fails (a full disk)
// after ten entries, then an append of one that succeeds. The feed must
// load again with all eleven.
func TestFailedSignatureWriteThenSmallerAppendLeavesFeedLoadable(t *testing.T) {
	s := newMemFaultStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	acked, err := faultAppend(t, f, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	s.arm("signatures", "write")
	if acked, err = faultAppend(t, f, acked, 10); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append with the signature write failing: %v, want ENOSPC", err)
	}
	if acked, err = faultAppend(t, f, acked, 1); err != nil {
		t.Fatalf("append after the disk has room again: %v", err)
	}
	if acked != 11 {
		t.Fatalf("%d acknowledged, want 11", acked)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	checkAfterFault(t, s.mem, "f/", acked, true, "10, failed 10, 1")
}

// An append that failed to write is undone; the next append, of other
// values at the same place, signs the tree of the values it wrote, not of
// those that failed (an append hashes only the roots that changed since
// the last it hashed). Whether the feed syncs (small appends journaled) or
// not.
func TestAppendAfterAFailedOneSignsWhatItWrote(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		for _, file := range []string{"data", "tree", "signatures"} {
			for _, first := range []int{6, 7, 8} { // roots 2 (+1), 3 (+1, parents of older roots), 1 (+1)
				t.Run(fmt.Sprintf("NoSync %v, %s write fails after %d", noSync, file, first), func(t *testing.T) {
					s := newMemFaultStorage()
					f, err := OpenFeed(s, "f/", &FeedOptions{NoSync: noSync})
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					want := make([][]byte, first)
					for i := range want {
						want[i] = faultValue(uint64(i))
					}
					if _, err := f.Append(want...); err != nil {
						t.Fatal(err)
					}
					s.arm(file, "write")
					if _, err := f.Append([]byte("failed")); !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("append with the %s write failing: %v, want ENOSPC", file, err)
					}
					for i := range 3 {
						v := []byte(fmt.Sprintf("written %d", i))
						if _, err := f.Append(v); err != nil {
							t.Fatal(err)
						}
						want = append(want, v)
						length, sig := f.Signature()
						if err := f.Verify(length, sig); err != nil {
							t.Fatalf("after %d appends since the failure: %v", i+1, err)
						}
					}
					if err := f.Close(); err != nil {
						t.Fatal(err)
					}
					g, err := OpenFeed(s, "f/", &FeedOptions{OnRepair: func(r Repair) { t.Errorf("reopen repaired %v", r) }})
					if err != nil {
						t.Fatal(err)
					}
					defer g.Close()
					got, err := g.GetBatch(context.Background(), 0, g.Len())
					if err != nil {
						t.Fatal(err)
					}
					if len(got) != len(want) {
						t.Fatalf("reopened with %d entries, want %d", len(got), len(want))
					}
					for i := range want {
						if !bytes.Equal(got[i], want[i]) {
							t.Fatalf("entry %d is %q, want %q", i, got[i], want[i])
						}
					}
				})
			}
		}
	}
}

// A write or sync failing in any file of a writer, on Append: the append
// fails, later appends succeed or are refused with the failure named, and
// the feed reopens, now or after a crash, with every acknowledged entry.
//
// Each in three modes: appends journaled (only the journal is synced on
// Append), appends journaled with a checkpoint before each (data, tree and
// signatures synced, the journal cut), and appends too large to journal
// (synced in place, then the journal cut).
func TestWriterWriteFaultsLoseNoAcknowledgedAppend(t *testing.T) {
	modes := []struct {
		name             string
		limit, maxAppend int
	}{{"journaled", 0, 0}, {"checkpoint each", 1, 0}, {"large", 0, -1}}
	for _, mode := range modes {
		for _, file := range []string{"data", "tree", "signatures", "journal"} {
			for _, op := range []string{"write", "sync"} {
				if mode.name == "journaled" && op == "sync" && file != "journal" {
					continue // synced only at checkpoints
				}
				for _, first := range []int{1, 7, 10} { // odd, even, and leaves of parents of older roots
					name := fmt.Sprintf("%s, %s %s after %d", mode.name, file, op, first)
					t.Run(name, func(t *testing.T) {
						testWriterWriteFault(t, name, file, op, first, int64(mode.limit), mode.maxAppend)
					})
				}
			}
		}
	}
}

func testWriterWriteFault(t *testing.T, name, file, op string, first int, limit int64, maxAppend int) {
	t.Helper()
	s := newMemFaultStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.writeMu.Lock()
	f.jrn.limit, f.jrn.maxAppend = limit, maxAppend
	f.writeMu.Unlock()
	acked, err := faultAppend(t, f, 0, first)
	if err != nil {
		t.Fatal(err)
	}
	s.arm(file, op)
	if acked, err = faultAppend(t, f, acked, 10); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append with a failing %s %s: %v, want ENOSPC", file, op, err)
	}
	checkFaultFeed(t, damageCopy(s.mem), "f/", acked, op == "write", name+", right after the failure")
	if op == "write" {
		// The failed append was undone durably: no crash now brings it
		// back.
		rng := rand.New(rand.NewPCG(uint64(first), 3))
		for i, c := range crashClones(s.mem, rng, 16) {
			g, err := OpenFeed(c, "f/", nil)
			if err != nil {
				t.Fatalf("crash %d right after the failure: %v", i, err)
			}
			if n := g.Len(); n != acked {
				t.Fatalf("crash %d right after the failure: length %d, want %d: the failed append came back", i, n, acked)
			}
			g.Close()
		}
	}
	refused := false
	for _, n := range []int{1, 3, 10, 2} {
		var err error
		acked, err = faultAppend(t, f, acked, n)
		if err != nil {
			// Refused: the error says so, and names
			// the failure.
			if !strings.Contains(err.Error(), "refused") || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("append after the failure: %v, want a refusal naming it", err)
			}
			refused = true
		} else if refused {
			t.Fatal("an append succeeded after one was refused")
		}
	}
	if op == "sync" && !refused {
		t.Fatal("appends after a failed sync were not refused")
	}
	if op == "write" && refused {
		t.Fatal("appends after a failed write that was undone were refused")
	}
	checkFaultEntries(t, f, acked, "same feed")
	checkAfterFault(t, s.mem, "f/", acked, op == "write", name)
}

// A failure creating a writer's key file fails the open; opening again
// creates the feed.
func TestWriterKeyFaultFailsOpenAndOpenAgainWorks(t *testing.T) {
	for _, op := range []string{"write", "sync"} {
		t.Run(op, func(t *testing.T) {
			s := newMemFaultStorage()
			s.arm("key", op)
			if f, err := OpenFeed(s, "f/", nil); err == nil {
				f.Close()
				t.Fatalf("open with a failing key %s succeeded", op)
			}
			if !s.disarm() {
				t.Fatal("the key file was not written")
			}
			f, err := OpenFeed(s, "f/", nil)
			if err != nil {
				t.Fatalf("open again: %v", err)
			}
			acked, err := faultAppend(t, f, 0, 3)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			checkAfterFault(t, s.mem, "f/", acked, false, "key "+op)
		})
	}
}

// faultProofs returns a writer's proofs of [0, 10), [10, 20) and [20, 30),
// each made when the writer's length was its end.
func faultProofs(t *testing.T) (*Feed, []*Proof) {
	t.Helper()
	w := newFeed(t, NewMemStorage(), nil)
	var proofs []*Proof
	for k := range 3 {
		if _, err := faultAppend(t, w, uint64(10*k), 10); err != nil {
			t.Fatal(err)
		}
		p, err := w.Proof(uint64(10*k), uint64(10*k+10), 0)
		if err != nil {
			t.Fatal(err)
		}
		proofs = append(proofs, p)
	}
	return w, proofs
}

// checkFaultReplica opens the replica of prefix in s and checks that it
// holds the acknowledged entries, as written, and a length it can verify.
// With noRepair, opening must find nothing to repair.
func checkFaultReplica(t *testing.T, s Storage, key []byte, held []bool, length uint64, noRepair bool, where string) {
	t.Helper()
	var repairs []Repair
	r, err := OpenFeed(s, "r/", &FeedOptions{Key: key, OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatalf("%s: reopen: %v", where, err)
	}
	defer r.Close()
	if noRepair && len(repairs) > 0 {
		t.Fatalf("%s: a failed write was not undone: reopening repaired %v", where, repairs)
	}
	if r.Len() < length {
		t.Fatalf("%s: length %d, %d was acknowledged", where, r.Len(), length)
	}
	for i, h := range held {
		if !h {
			continue
		}
		if !r.Has(uint64(i)) {
			t.Fatalf("%s: acknowledged entry %d is missing", where, i)
		}
		if v, err := r.Get(context.Background(), uint64(i)); err != nil || string(v) != string(faultValue(uint64(i))) {
			t.Fatalf("%s: entry %d is %q, %v", where, i, v, err)
		}
	}
	if l, sig := r.Signature(); l > 0 {
		if err := r.Verify(l, sig); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
}

// A write or sync failing in any file of a replica, on Put: the put fails,
// later puts succeed or are refused with the failure named, and the replica
// reopens, now or after a crash, with every block a put acknowledged.
func TestReplicaWriteFaultsLoseNoAcknowledgedPut(t *testing.T) {
	w, proofs := faultProofs(t)
	// Orders of the three proofs: the second, failing, raises the length;
	// or it lies below the length that the first put set.
	orders := map[string][]int{"raising": {0, 1, 2}, "below": {2, 0, 1}}
	for _, file := range []string{"data", "tree", "bitfield", "signatures"} {
		for _, op := range []string{"write", "sync"} {
			for oname, order := range orders {
				if file == "signatures" && oname == "below" {
					continue // a put below the length writes no signature
				}
				name := fmt.Sprintf("%s %s %s", file, op, oname)
				t.Run(name, func(t *testing.T) {
					s := newMemFaultStorage()
					r, err := OpenFeed(s, "r/", &FeedOptions{Key: w.Key()})
					if err != nil {
						t.Fatal(err)
					}
					defer r.Close()
					held := make([]bool, 30)
					var length uint64
					put := func(k int) error {
						p := proofs[k]
						if err := r.Put(p); err != nil {
							return err
						}
						for i := range p.Blocks {
							held[p.Start+uint64(i)] = true
						}
						length = max(length, p.Length)
						return nil
					}
					if err := put(order[0]); err != nil {
						t.Fatal(err)
					}
					s.arm(file, op)
					if err := put(order[1]); !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("put with a failing %s %s: %v, want ENOSPC", file, op, err)
					}
					checkFaultReplica(t, damageCopy(s.mem), w.Key(), held, length, op == "write", name+", right after the failure")
					refused := false
					for _, k := range []int{order[1], order[2]} {
						if err := put(k); err != nil {
							if !strings.Contains(err.Error(), "refused") || !errors.Is(err, syscall.ENOSPC) {
								t.Fatalf("put after the failure: %v, want a refusal naming it", err)
							}
							refused = true
						}
					}
					if op == "sync" && !refused {
						t.Fatal("puts after a failed sync were not refused")
					}
					if op == "write" && refused {
						t.Fatal("puts after a failed write that was undone were refused")
					}
					rng := rand.New(rand.NewPCG(3, uint64(len(name))))
					clones := crashClones(s.mem, rng, 16)
					r.Close()
					checkFaultReplica(t, s.mem, w.Key(), held, length, op == "write", name+", reopened")
					for i, c := range clones {
						checkFaultReplica(t, c, w.Key(), held, length, false, fmt.Sprintf("%s, after crash %d", name, i))
					}
				})
			}
		}
	}
}

// A write or sync failing in a database's key or manifest file while a
// writer or replica is added: the add fails, the database keeps working
// (later adds succeed or are refused with the failure named), and it
// reopens, now or after a crash, with every acknowledged feed and entry.
func TestCoreWriteFaultsLoseNoAcknowledgedFeed(t *testing.T) {
	other := mustKeyPair(t)
	for _, file := range []string{"key", "manifest"} {
		for _, op := range []string{"write", "sync"} {
			for _, add := range []string{"writer", "replica"} {
				if file == "key" && op == "sync" && add == "replica" {
					continue // a new replica's key file is synced by its first put
				}
				name := fmt.Sprintf("%s %s %s", file, op, add)
				t.Run(name, func(t *testing.T) {
					s := newMemFaultStorage()
					c, err := New(s, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					a := mustWriter(t, c, "a")
					ackedA, err := faultAppend(t, a, 0, 5)
					if err != nil {
						t.Fatal(err)
					}
					addIt := func() (*Feed, error) {
						if add == "writer" {
							return c.Writer("b")
						}
						return c.AddFeed(other.PublicKey)
					}
					s.arm(file, op)
					if _, err := addIt(); !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("add with a failing %s %s: %v, want ENOSPC", file, op, err)
					}
					var ackedB uint64
					added := false
					b, err := addIt()
					switch {
					case err == nil:
						added = true
						if add == "writer" {
							if ackedB, err = faultAppend(t, b, 0, 4); err != nil {
								t.Fatalf("append to the writer added again: %v", err)
							}
						}
					case !strings.Contains(err.Error(), "refused") || !errors.Is(err, syscall.ENOSPC):
						t.Fatalf("add again: %v, want success or a refusal naming the failure", err)
					case op == "write" && file == "manifest":
						t.Fatalf("add again after an undone manifest write: %v", err)
					}
					if ackedA, err = faultAppend(t, a, ackedA, 2); err != nil {
						t.Fatalf("append to an existing writer after the failure: %v", err)
					}
					rng := rand.New(rand.NewPCG(5, uint64(len(name))))
					clones := crashClones(s.mem, rng, 16)
					if err := c.Close(); err != nil {
						t.Fatal(err)
					}
					for i, st := range append([]*MemStorage{s.mem}, clones...) {
						where := fmt.Sprintf("%s, storage %d", name, i)
						c2, err := New(st, nil)
						if err != nil {
							t.Fatalf("%s: reopen: %v", where, err)
						}
						if d := c2.Damaged(); len(d) > 0 {
							t.Fatalf("%s: damage after reopen: %v", where, d)
						}
						checkCoreWriter(t, c2, "a", ackedA, where)
						if added && add == "writer" {
							checkCoreWriter(t, c2, "b", ackedB, where)
						}
						if added && add == "replica" && c2.Feed(other.PublicKey) == nil {
							t.Fatalf("%s: the replica added is gone", where)
						}
						c2.Close()
					}
				})
			}
		}
	}
}

func checkCoreWriter(t *testing.T, c *Core, name string, acked uint64, where string) {
	t.Helper()
	f, err := c.Writer(name)
	if err != nil {
		t.Fatalf("%s: writer %s: %v", where, name, err)
	}
	checkFaultEntries(t, f, acked, where+", writer "+name)
}

// A manifest write that fails part way through the records of several new
// feeds is cut back: a later add of fewer feeds cannot leave a record of
// one that failed behind its own, to be loaded on the next open.
func TestFailedManifestWriteLeavesNoRecordOfFeedsNotAdded(t *testing.T) {
	s := newMemFaultStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := mustWriter(t, c, "a")
	k1, k2, k3, k4, k5 := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	s.arm("manifest", "write") // half of four records: two land whole
	if _, err := c.AddFeeds(k1.PublicKey, k2.PublicKey, k4.PublicKey, k5.PublicKey); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("add with the manifest write failing: %v, want ENOSPC", err)
	}
	if _, err := c.AddFeed(k3.PublicKey); err != nil {
		t.Fatalf("add after the failure: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2, err := New(s.mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var got []string
	for _, f := range c2.Feeds() {
		got = append(got, f.String()[:8])
	}
	want := []string{a.String()[:8], fmt.Sprintf("%x", k3.PublicKey)[:8]}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(c2.Damaged()) > 0 || len(c2.Repairs()) > 0 {
		t.Fatalf("reopened with feeds %v, damage %v, repairs %v; want feeds %v and nothing else", got, c2.Damaged(), c2.Repairs(), want)
	}
}

// When undoing a failed write fails too, the feed refuses appends until it
// is opened again: an append over a tree still holding the failed one's
// leaves would leave some of them behind it.
func TestFailedUndoRefusesAppendsUntilReopened(t *testing.T) {
	s := newMemFaultStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	acked, err := faultAppend(t, f, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	s.arm("signatures", "write")
	s.arm("tree", "truncate")
	if acked, err = faultAppend(t, f, acked, 10); !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "undo") {
		t.Fatalf("append with the signature write and the undo failing: %v, want ENOSPC, naming the undo", err)
	}
	if _, err = faultAppend(t, f, acked, 1); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("append after a failed undo: %v, want it refused", err)
	}
	f.Close()
	checkAfterFault(t, s.mem, "f/", acked, false, "failed undo")
}

// The reproduction on a real directory, through a database: the
// writer loads again with every acknowledged entry.
func TestFailedSignatureWriteOnADirectoryLeavesWriterLoadable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	ds, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &faultStorage{Storage: ds}
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	acked, err := faultAppend(t, w, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	s.arm("signatures", "write")
	if acked, err = faultAppend(t, w, acked, 10); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append with the signature write failing: %v, want ENOSPC", err)
	}
	if acked, err = faultAppend(t, w, acked, 1); err != nil {
		t.Fatalf("append after the disk has room again: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := c.Repairs(); len(r) > 0 {
		t.Fatalf("reopening repaired %v: the failed write was not undone", r)
	}
	checkCoreWriter(t, c, "w", acked, "reopened")
	if w, _ := c.Writer("w"); w.Len() != acked {
		t.Fatalf("length %d, want %d", w.Len(), acked)
	}
}

// A write or sync failing in a new database's kappa or manifest file fails
// New; opening again makes the database, which then keeps what it
// acknowledges across a crash.
func TestNewDatabaseFaultsFailNewAndOpenAgainWorks(t *testing.T) {
	for _, file := range []string{"kappa", "manifest"} {
		for _, op := range []string{"write", "sync"} {
			name := file + " " + op
			t.Run(name, func(t *testing.T) {
				s := newMemFaultStorage()
				s.arm(file, op)
				if c, err := New(s, nil); err == nil {
					c.Close()
					t.Fatalf("new database with a failing %s: no error", name)
				}
				if !s.disarm() {
					t.Fatalf("%s was not done", name)
				}
				c, err := New(s, nil)
				if err != nil {
					t.Fatalf("open again: %v", err)
				}
				key := c.SharedKey()
				acked, err := faultAppend(t, mustWriter(t, c, "a"), 0, 3)
				if err != nil {
					t.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(9, uint64(len(name))))
				clones := crashClones(s.mem, rng, 16)
				c.Close()
				for i, st := range append([]*MemStorage{s.mem}, clones...) {
					where := fmt.Sprintf("%s, storage %d", name, i)
					c2, err := New(st, nil)
					if err != nil {
						t.Fatalf("%s: reopen: %v", where, err)
					}
					if !bytes.Equal(c2.SharedKey(), key) {
						t.Fatalf("%s: the shared key changed", where)
					}
					checkCoreWriter(t, c2, "a", acked, where)
					c2.Close()
				}
			})
		}
	}
}

// A new replica's key file is synced by its first Put: that sync failing
// fails the Put, later ones are refused, and the database opens again, now
// or after a crash, with the replica and no damage.
func TestReplicaKeySyncFaultOnFirstPut(t *testing.T) {
	w, proofs := faultProofs(t)
	s := newMemFaultStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.AddFeed(w.Key())
	if err != nil {
		t.Fatal(err)
	}
	s.arm("key", "sync")
	if err := r.Put(proofs[0]); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("put with the key sync failing: %v, want ENOSPC", err)
	}
	if err := r.Put(proofs[0]); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("put after a failed sync: %v, want it refused", err)
	}
	clones := crashClones(s.mem, rand.New(rand.NewPCG(11, 12)), 16)
	c.Close()
	for i, st := range append([]*MemStorage{s.mem}, clones...) {
		c2, err := New(st, nil)
		if err != nil {
			t.Fatalf("storage %d: reopen: %v", i, err)
		}
		if d := c2.Damaged(); len(d) > 0 || c2.Feed(w.Key()) == nil {
			t.Fatalf("storage %d: damage %v, replica loaded: %v", i, d, c2.Feed(w.Key()) != nil)
		}
		// It takes the proof now.
		if err := c2.Feed(w.Key()).Put(proofs[0]); err != nil {
			t.Fatalf("storage %d: put after reopen: %v", i, err)
		}
		c2.Close()
	}
}
