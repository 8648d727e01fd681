package kappa

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// memStorageContent returns the content of name in m, and whether it exists.
func memStorageContent(m *MemStorage, name string) (string, bool) {
	b, ok := m.fileBytes(name)
	return string(b), ok
}

func TestMemStorageCrashCloneWithoutRandKeepsExactlySyncedData(t *testing.T) {
	m := NewMemStorage()
	synced := storageMustOpen(t, m, "synced", true)
	storageMustWriteAt(t, synced, "durable", 0)
	if err := synced.Sync(); err != nil {
		t.Fatal(err)
	}
	storageMustWriteAt(t, synced, "D", 0)
	storageMustWriteAt(t, synced, " and more", 7)
	if err := synced.Truncate(3); err != nil {
		t.Fatal(err)
	}
	shrunk := storageMustOpen(t, m, "shrunk", true)
	storageMustWriteAt(t, shrunk, "0123456789", 0)
	storageMustSync(t, shrunk)
	storageMustTruncate(t, shrunk, 2)
	storageMustTruncate(t, shrunk, 20)
	storageMustWriteAt(t, shrunk, "zz", 30)
	never := storageMustOpen(t, m, "never/synced", true)
	storageMustWriteAt(t, never, "gone", 0)

	c := m.crashClone(nil)
	if got, ok := memStorageContent(c, "synced"); got != "durable" {
		t.Errorf("synced = %q (exists %v), want %q", got, ok, "durable")
	}
	if got, _ := memStorageContent(c, "shrunk"); got != "0123456789" {
		t.Errorf("shrunk = %q, want %q", got, "0123456789")
	}
	if _, ok := memStorageContent(c, "never/synced"); ok {
		t.Error("a file never synced survived crashClone(nil)")
	}
	if got := c.names(); !slices.Equal(got, []string{"shrunk", "synced"}) {
		t.Errorf("clone names %q", got)
	}
	// The original is unchanged.
	if got, _ := memStorageContent(m, "synced"); got != "Dur" {
		t.Errorf("original synced = %q, want %q", got, "Dur")
	}
}

// memRefOp is an operation of the reference model that
// TestMemStorageCrashCloneLeavesAStateBetweenSyncedAndCurrent checks
// crashClone against.
type memRefOp struct {
	truncate bool
	off      int // write offset or new size
	data     string
}

func (op memRefOp) apply(b []byte) []byte {
	if op.truncate {
		nb := make([]byte, op.off)
		copy(nb, b)
		return nb
	}
	if end := op.off + len(op.data); end > len(b) {
		nb := make([]byte, end)
		copy(nb, b)
		b = nb
	}
	copy(b[op.off:], op.data)
	return b
}

func TestMemStorageCrashCloneLeavesAStateBetweenSyncedAndCurrent(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	storageMustWriteAt(t, f, "0123456789", 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	ops := []memRefOp{
		{off: 2, data: "abc"},
		{off: 10, data: "XYZ"},
		{off: 13, data: "Q"}, // an append right after an append
		{off: 14, data: "RS"},
		{truncate: true, off: 6},
		{off: 9, data: "zz"},
		{truncate: true, off: 14},
		{off: 1, data: "w"},
	}
	// Every state a crash may leave: a prefix of the operations, the last
	// write possibly torn.
	allowed := map[string]bool{}
	state := []byte("0123456789")
	allowed[string(state)] = true
	for _, op := range ops {
		if !op.truncate {
			for n := range len(op.data) {
				allowed[string(memRefOp{off: op.off, data: op.data[:n]}.apply(bytes.Clone(state)))] = true
			}
		}
		state = op.apply(state)
		allowed[string(state)] = true
		if op.truncate {
			if err := f.Truncate(int64(op.off)); err != nil {
				t.Fatal(err)
			}
		} else {
			storageMustWriteAt(t, f, op.data, int64(op.off))
		}
	}
	current := string(state)
	if got := storageReadAll(t, f); got != current {
		t.Fatalf("current content %q, want %q", got, current)
	}
	g := storageMustOpen(t, m, "g", true)
	storageMustWriteAt(t, g, "synced", 0)
	storageMustSync(t, g)

	seen := map[string]int{}
	for seed := range uint64(1000) {
		c := m.crashClone(rand.New(rand.NewPCG(seed, 2)))
		got, ok := memStorageContent(c, "f")
		if !ok || !allowed[got] {
			t.Fatalf("seed %d: crash left f = %q (exists %v), not a state between synced and current", seed, got, ok)
		}
		seen[got]++
		if got, _ := memStorageContent(c, "g"); got != "synced" {
			t.Fatalf("seed %d: synced file g = %q, want %q", seed, got, "synced")
		}
	}
	if seen["0123456789"] == 0 {
		t.Error("no crash left only the synced state")
	}
	if seen[current] == 0 {
		t.Error("no crash kept every unsynced operation")
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct crash states in 1000 tries", len(seen))
	}
	if got := storageReadAll(t, f); got != current {
		t.Fatalf("crashClone changed the original: %q", got)
	}
}

func TestMemStorageBoundsTheUnsyncedLogOfRepeatedOverwrites(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	durable := bytes.Repeat([]byte("d"), 4096)
	if _, err := f.WriteAt(durable, 0); err != nil {
		t.Fatal(err)
	}
	storageMustSync(t, f)
	n := f.(*memFile).n
	block := make([]byte, 4096)
	collapses := 0
	for i := range 2000 { // 8 MiB of overwrites
		block[0] = byte(i)
		if _, err := f.WriteAt(block, int64(i%2)*2048); err != nil {
			t.Fatal(err)
		}
		logBytes := 0
		for _, op := range n.pending {
			logBytes += memOpSize + len(op.old)
		}
		if logBytes > 2*memLogSlack+2*len(n.data) {
			t.Fatalf("after %d overwrites the unsynced log holds %d bytes in %d operations for a %d-byte file",
				i+1, logBytes, len(n.pending), len(n.data))
		}
		if len(n.pending) == 1 {
			collapses++
			if collapses == 2 {
				break // stop right after a collapse: a crash leaves durable or current
			}
		}
	}
	if collapses < 2 {
		t.Fatalf("the log collapsed %d times in 8 MiB of overwrites of a 6 KiB file", collapses)
	}
	current := storageReadAll(t, f)
	if got, _ := memStorageContent(m.crashClone(nil), "f"); got != string(durable) {
		t.Fatalf("crashClone(nil) after collapsing the log lost the durable content: %d bytes", len(got))
	}
	seen := map[string]bool{}
	for seed := range uint64(50) {
		got, _ := memStorageContent(m.crashClone(rand.New(rand.NewPCG(seed, 4))), "f")
		if got != string(durable) && got != current {
			t.Fatalf("seed %d: crash left neither the durable nor the current content", seed)
		}
		seen[got] = true
	}
	if len(seen) != 2 {
		t.Errorf("crashes left %d distinct states, want durable and current", len(seen))
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, _ := memStorageContent(m.crashClone(nil), "f"); got != current {
		t.Fatal("Sync after collapsing the log did not make the current content durable")
	}
}

func TestMemStorageCrashCloneMayDropFilesNeverSynced(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "new", true)
	storageMustWriteAt(t, f, "data", 0)
	present, absent := 0, 0
	for seed := range uint64(100) {
		c := m.crashClone(rand.New(rand.NewPCG(seed, 3)))
		got, ok := memStorageContent(c, "new")
		if !ok {
			absent++
			continue
		}
		present++
		if !strings.HasPrefix("data", got) {
			t.Fatalf("seed %d: new = %q, want a prefix of %q", seed, got, "data")
		}
	}
	if present == 0 || absent == 0 {
		t.Errorf("file never synced: present %d times, absent %d times in 100 crashes; want both", present, absent)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, ok := memStorageContent(m.crashClone(nil), "new"); got != "data" {
		t.Errorf("after Sync: %q (exists %v), want %q", got, ok, "data")
	}
}

func TestMemStorageCrashCloneIsIndependentOfOriginal(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	storageMustWriteAt(t, f, "abc", 0)
	storageMustSync(t, f)
	c := m.crashClone(nil)
	cf := storageMustOpen(t, c, "f", false)
	storageMustWriteAt(t, cf, "CLONE", 0)
	storageMustWriteAt(t, f, "orig", 0)
	if got := storageReadAll(t, f); got != "orig" {
		t.Errorf("original reads %q, want %q", got, "orig")
	}
	if got := storageReadAll(t, cf); got != "CLONE" {
		t.Errorf("clone reads %q, want %q", got, "CLONE")
	}
	// The clone starts with everything durable and nothing injected.
	if got, _ := memStorageContent(c.crashClone(nil), "f"); got != "abc" {
		t.Errorf("clone's durable content %q, want %q", got, "abc")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Errorf("closing the clone broke the original: %v", err)
	}
}

func TestMemStorageRemoveIsDurable(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	storageMustWriteAt(t, f, "abc", 0)
	storageMustSync(t, f)
	if err := m.Remove("f"); err != nil {
		t.Fatal(err)
	}
	if _, ok := memStorageContent(m.crashClone(rand.New(rand.NewPCG(1, 1))), "f"); ok {
		t.Error("removed file came back after a crash")
	}
}

func TestMemStorageClosedCanStillCrashClone(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	storageMustWriteAt(t, f, "abc", 0)
	storageMustSync(t, f)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	c := m.crashClone(nil)
	g, err := c.Open("f", false)
	if err != nil {
		t.Fatalf("clone of a closed storage is not usable: %v", err)
	}
	if got := storageReadAll(t, g); got != "abc" {
		t.Errorf("clone reads %q, want %q", got, "abc")
	}
}

func TestMemStorageFailNextWriteFailsOnceWithoutEffect(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	g := storageMustOpen(t, m, "g", true)
	storageMustWriteAt(t, f, "abc", 0)
	injected := errors.New("disk full")
	m.failNextWrite(injected)
	if n, err := g.WriteAt([]byte("xyz"), 0); !errors.Is(err, injected) || n != 0 {
		t.Fatalf("first write after failNextWrite = %d, %v; want 0 and the injected error", n, err)
	}
	if got := storageReadAll(t, g); got != "" {
		t.Fatalf("failed write changed g to %q", got)
	}
	storageMustWriteAt(t, f, "A", 0)
	if got := storageReadAll(t, f); got != "Abc" {
		t.Fatalf("write after the failed one: %q, want %q", got, "Abc")
	}
	m.failNextWrite(injected)
	m.failNextWrite(nil)
	storageMustWriteAt(t, f, "B", 0)
}

func TestMemStorageFailNextSyncFailsOnceWithoutEffect(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "f", true)
	storageMustWriteAt(t, f, "abc", 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	storageMustWriteAt(t, f, "XYZ", 0)
	injected := errors.New("EIO")
	m.failNextSync(injected)
	if err := f.Sync(); !errors.Is(err, injected) {
		t.Fatalf("first Sync after failNextSync = %v; want the injected error", err)
	}
	if got, _ := memStorageContent(m.crashClone(nil), "f"); got != "abc" {
		t.Fatalf("failed Sync made %q durable, want %q still", got, "abc")
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	if got, _ := memStorageContent(m.crashClone(nil), "f"); got != "XYZ" {
		t.Fatalf("after a good Sync durable content is %q, want %q", got, "XYZ")
	}
}

func TestMemStorageExposesAndReplacesFileBytes(t *testing.T) {
	m := NewMemStorage()
	f := storageMustOpen(t, m, "b/f", true)
	storageMustOpen(t, m, "a", true)
	storageMustWriteAt(t, f, "hello", 0)
	if got := m.names(); !slices.Equal(got, []string{"a", "b/f"}) {
		t.Errorf("names() = %q", got)
	}
	b, ok := m.fileBytes("b/f")
	if !ok || string(b) != "hello" {
		t.Fatalf("fileBytes = %q, %v", b, ok)
	}
	b[0] = 'J' // a copy
	if got := storageReadAll(t, f); got != "hello" {
		t.Fatalf("changing fileBytes' result changed the file: %q", got)
	}
	if _, ok := m.fileBytes("missing"); ok {
		t.Error("fileBytes of a missing file reported it exists")
	}
	m.setFileBytes("b/f", []byte("jello"))
	if got := storageReadAll(t, f); got != "jello" {
		t.Errorf("open File reads %q after setFileBytes, want %q", got, "jello")
	}
	if got, _ := memStorageContent(m.crashClone(nil), "b/f"); got != "jello" {
		t.Errorf("setFileBytes content is not durable: %q", got)
	}
	m.setFileBytes("c", []byte("new"))
	if got, ok := memStorageContent(m.crashClone(nil), "c"); got != "new" {
		t.Errorf("setFileBytes of a new file: %q (exists %v)", got, ok)
	}
	m.setFileBytes("../bad", []byte("x"))
	m.setFileBytes("a/under-a-file", []byte("x"))
	if got := m.names(); !slices.Equal(got, []string{"a", "b/f", "c"}) {
		t.Errorf("names() after setFileBytes = %q", got)
	}
}
