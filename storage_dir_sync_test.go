package kappa

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// syncTrace records the events of a DirStorage (see DirStorage.trace).
type syncTrace struct {
	mu  sync.Mutex
	evs []dirEvent
}

func traceDir(t *testing.T, s *DirStorage) *syncTrace {
	tr := new(syncTrace)
	s.trace = func(e dirEvent) {
		tr.mu.Lock()
		tr.evs = append(tr.evs, e)
		tr.mu.Unlock()
	}
	return tr
}

// take returns the events since the last take.
func (tr *syncTrace) take() []dirEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	evs := tr.evs
	tr.evs = nil
	return evs
}

// traceIndex returns the index of the first (or, with last, the last) event
// of evs in [from, to) with op on name, or -1.
func traceIndex(evs []dirEvent, op, name string, last bool) int {
	found := -1
	for i, e := range evs {
		if e.Op == op && e.Name == name {
			if !last {
				return i
			}
			found = i
		}
	}
	return found
}

// requireSyncedBefore checks that each of files was written, and fsynced
// (or fdatasynced) after its last write or truncate and before event limit.
func requireSyncedBefore(t *testing.T, evs []dirEvent, limit int, what string, files ...string) {
	t.Helper()
	for _, file := range files {
		lw := max(traceIndex(evs[:limit], "write", file, true), traceIndex(evs[:limit], "truncate", file, true))
		if lw < 0 {
			t.Fatalf("%s: %s was not written before event %d:\n%s", what, file, limit, formatTrace(evs))
		}
		if !slices.ContainsFunc(evs[lw:limit], func(e dirEvent) bool { return isSync(e) && e.Name == file }) {
			t.Fatalf("%s: %s was not fsynced after its last write (event %d) and before event %d:\n%s", what, file, lw, limit, formatTrace(evs))
		}
	}
}

// requireDirsSynced checks that the directory holding each file created,
// and each directory made, was fsynced after it and before event limit,
// and that no directory was fsynced more often than entries were made in
// it.
func requireDirsSynced(t *testing.T, evs []dirEvent, root string, limit int, what string) {
	t.Helper()
	made := map[string]int{}
	for i, e := range evs {
		var parent string
		switch e.Op {
		case "create":
			parent = filepath.Dir(filepath.Join(root, filepath.FromSlash(e.Name)))
		case "mkdir":
			parent = filepath.Dir(e.Name)
		default:
			continue
		}
		made[parent]++
		if i >= limit || traceIndex(evs[i:limit], "syncdir", parent, false) < 0 {
			t.Fatalf("%s: directory %s not fsynced after %s %s (event %d) and before event %d:\n%s", what, parent, e.Op, e.Name, i, limit, formatTrace(evs))
		}
	}
	synced := map[string]int{}
	for _, e := range evs {
		if e.Op == "syncdir" {
			synced[e.Name]++
		}
	}
	for dir, n := range synced {
		if n > made[dir] {
			t.Fatalf("%s: directory %s fsynced %d times, %d entries were made in it:\n%s", what, dir, n, made[dir], formatTrace(evs))
		}
	}
}

// isSync reports whether e is a file's fsync or fdatasync.
func isSync(e dirEvent) bool { return e.Op == "sync" || e.Op == "datasync" }

// requireJournaledAppend checks the events of a small synced append to
// the feed under prefix: one journal record written first, fsynced after
// it (the append's only sync), and its data, tree and signature record
// written after the journal record, the signature record last of them.
func requireJournaledAppend(t *testing.T, evs []dirEvent, prefix, what string) {
	t.Helper()
	jw := traceIndex(evs, "write", prefix+"journal", false)
	if jw < 0 || traceIndex(evs, "write", prefix+"journal", true) != jw {
		t.Fatalf("%s: not one journal record written:\n%s", what, formatTrace(evs))
	}
	// The journal record first; then data, tree and the signature
	// record, the signature after both, while the journal syncs.
	var at [3]int
	for k, file := range []string{"data", "tree", "signatures"} {
		if i := traceIndex(evs[:jw], "write", prefix+file, false); i >= 0 {
			t.Fatalf("%s: %s written before the journal record:\n%s", what, file, formatTrace(evs))
		}
		if at[k] = traceIndex(evs, "write", prefix+file, false); at[k] < 0 {
			t.Fatalf("%s: %s not written:\n%s", what, file, formatTrace(evs))
		}
	}
	if at[2] < at[0] || at[2] < at[1] {
		t.Fatalf("%s: the signature record written before the data and tree records:\n%s", what, formatTrace(evs))
	}
	syncs := 0
	for i, e := range evs {
		if !isSync(e) {
			continue
		}
		syncs++
		if e.Name != prefix+"journal" || i < jw {
			t.Fatalf("%s: event %d syncs %s; the only sync must be the journal's, after its record:\n%s", what, i, e.Name, formatTrace(evs))
		}
	}
	if syncs != 1 {
		t.Fatalf("%s: %d syncs, want 1 (the journal's):\n%s", what, syncs, formatTrace(evs))
	}
}

// requireCheckpoint checks a checkpoint of the feed under prefix in evs:
// data, tree and signatures fsynced before the journal is cut to its
// header; the cut fsynced before the base record is written, which is
// fsynced after.
func requireCheckpoint(t *testing.T, evs []dirEvent, prefix, what string) {
	t.Helper()
	cut := traceIndex(evs, "truncate", prefix+"journal", false)
	if cut < 0 {
		t.Fatalf("%s: the journal was not cut:\n%s", what, formatTrace(evs))
	}
	for _, file := range []string{"data", "tree", "signatures"} {
		if traceIndex(evs[:cut], "sync", prefix+file, false) < 0 {
			t.Fatalf("%s: %s not fsynced before the journal was cut:\n%s", what, file, formatTrace(evs))
		}
	}
	base := traceIndex(evs[cut:], "write", prefix+"journal", false)
	if base < 0 || !slices.ContainsFunc(evs[cut:cut+base], func(e dirEvent) bool { return isSync(e) && e.Name == prefix+"journal" }) {
		t.Fatalf("%s: the journal's cut not fsynced before its base record was written:\n%s", what, formatTrace(evs))
	}
	if !slices.ContainsFunc(evs[cut+base:], func(e dirEvent) bool { return isSync(e) && e.Name == prefix+"journal" }) {
		t.Fatalf("%s: the base record not fsynced:\n%s", what, formatTrace(evs))
	}
}

func formatTrace(evs []dirEvent) string {
	var b strings.Builder
	for i, e := range evs {
		fmt.Fprintf(&b, "\t%d %s %s\n", i, e.Op, e.Name)
	}
	return b.String()
}

// requireNewDatabase checks the trace of New making a database in root
// (with OpenDir's mkdir of root first): its files and directory are durable
// before New returns, and it made no directory inside its own.
func requireNewDatabase(t *testing.T, evs []dirEvent, root string) {
	t.Helper()
	requireSyncedBefore(t, evs, len(evs), "new database", "kappa", "manifest")
	requireDirsSynced(t, evs, root, len(evs), "new database")
	if slices.ContainsFunc(evs[1:], func(e dirEvent) bool { return e.Op == "mkdir" }) {
		t.Fatalf("new database made directories inside its own:\n%s", formatTrace(evs))
	}
}

// requireCheckpointThenAppend checks the trace of an append of feeds/0 that
// found its journal full: the checkpoint (see requireCheckpoint), then,
// after the journal's new base record is synced, the append, journaled.
func requireCheckpointThenAppend(t *testing.T, evs []dirEvent) {
	t.Helper()
	requireCheckpoint(t, evs, "feeds/0/", "checkpoint")
	cut := traceIndex(evs, "truncate", "feeds/0/journal", false)
	base := cut + traceIndex(evs[cut:], "datasync", "feeds/0/journal", false)
	requireJournaledAppend(t, evs[base+1:], "feeds/0/", "append after the checkpoint")
}

// requireNewWriter checks the trace of Writer making the first writer
// (feeds/0): its files and directories are durable before its manifest
// record is written, which is durable before Writer returns; its journal
// exists, its directory entry durable, before that record.
func requireNewWriter(t *testing.T, evs []dirEvent, root string) {
	t.Helper()
	rec := traceIndex(evs, "write", "manifest", false)
	if rec < 0 {
		t.Fatalf("new writer: no manifest record written:\n%s", formatTrace(evs))
	}
	requireSyncedBefore(t, evs, rec, "new writer, before its manifest record", "feeds/0/key", "feeds/0/data", "feeds/0/tree", "feeds/0/signatures")
	requireDirsSynced(t, evs, root, rec, "new writer, before its manifest record")
	requireSyncedBefore(t, evs, len(evs), "new writer", "manifest")

	// The writer's journal exists, its directory entry durable, before its
	// manifest record.
	requireSyncedBefore(t, evs, rec, "new writer, before its manifest record", "feeds/0/journal")
}

// requireLargeAppend checks the trace of an append of feeds/0 that is not
// journaled: data, tree and signatures durable before the journal is cut,
// the cut durable before the signature record, which is durable before the
// journal's new base record, which is durable before Append returns.
func requireLargeAppend(t *testing.T, evs []dirEvent) {
	t.Helper()
	sig := traceIndex(evs, "write", "feeds/0/signatures", false)
	cut := traceIndex(evs, "truncate", "feeds/0/journal", false)
	base := traceIndex(evs, "write", "feeds/0/journal", false)
	if sig < 0 || cut < 0 || !(cut < sig && sig < base) {
		t.Fatalf("large append: want the journal cut, then the signature record, then the base record:\n%s", formatTrace(evs))
	}
	requireSyncedBefore(t, evs, cut, "large append, before the journal is cut", "feeds/0/data", "feeds/0/tree")
	if traceIndex(evs[:cut], "sync", "feeds/0/signatures", false) < 0 {
		t.Fatalf("large append: the signatures not fsynced before the journal was cut:\n%s", formatTrace(evs))
	}
	requireSyncedBefore(t, evs, sig, "large append, before its signature record", "feeds/0/journal")
	requireSyncedBefore(t, evs, base, "large append, before the journal's base record", "feeds/0/signatures")
	requireSyncedBefore(t, evs, len(evs), "large append", "feeds/0/journal")
}

// requireFirstPut checks the trace of the first Put of the replica feeds/1:
// data, tree and key durable before the bitfield; the bitfield durable
// before the signature record, which is durable before Put returns. It
// returns the index of the signature record's write.
func requireFirstPut(t *testing.T, evs []dirEvent) (sig int) {
	t.Helper()
	bits := traceIndex(evs, "write", "feeds/1/bitfield", false)
	sig = traceIndex(evs, "write", "feeds/1/signatures", false)
	if bits < 0 || sig < 0 {
		t.Fatalf("put: no bitfield or no signature write:\n%s", formatTrace(evs))
	}
	requireSyncedBefore(t, evs, bits, "put, before the bitfield", "feeds/1/data", "feeds/1/tree")
	if traceIndex(evs[:bits], "sync", "feeds/1/key", false) < 0 {
		t.Fatalf("put: the new replica's key file was not fsynced before the bitfield:\n%s", formatTrace(evs))
	}
	requireSyncedBefore(t, evs, sig, "put, before the signature record", "feeds/1/bitfield")
	requireSyncedBefore(t, evs, len(evs), "put", "feeds/1/signatures")
	return sig
}

// TestDirStorageSyncsWhatTheWriteOrderNeeds records each write and fsync of
// a database on a real directory while it is created, a writer is added
// and appended to, and a replica is added and given a proof; and checks the
// durability rule of doc/FORMAT.md ("Write order") against them.
func TestDirStorageSyncsWhatTheWriteOrderNeeds(t *testing.T) {
	if !canSyncDir {
		t.Skip("directories cannot be fsynced here")
	}
	dir := filepath.Join(t.TempDir(), "db")
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tr := traceDir(t, s)
	root := s.Dir()

	// A new database: its files and directory are durable before New
	// returns.
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// OpenDir made the database's directory, before the trace was set.
	requireNewDatabase(t, append([]dirEvent{{"mkdir", root}}, tr.take()...), root)

	// A new writer: its files and directories are durable before its
	// manifest record is written, which is durable before Writer returns.
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	requireNewWriter(t, tr.take(), root)

	// Small appends with sync on: one journal record holding the data
	// and tree records, fsynced (fdatasync) before Append returns, the
	// append's only sync; the data, tree and signature records written
	// after it.
	for i := range 3 {
		what := fmt.Sprintf("append %d", i)
		if _, err := w.Append([]byte(what), []byte("and more")); err != nil {
			t.Fatal(err)
		}
		evs := tr.take()
		requireJournaledAppend(t, evs, "feeds/0/", what)
		requireDirsSynced(t, evs, root, len(evs), what)
	}

	// A checkpoint (here forced by a journal limit of one byte): data,
	// tree and signatures fsynced before the journal is cut; the journal
	// cut, and synced, before its base record is written; then the
	// append, journaled.
	w.writeMu.Lock()
	w.jrn.limit = 1
	w.writeMu.Unlock()
	if _, err := w.Append([]byte("after a full journal")); err != nil {
		t.Fatal(err)
	}
	requireCheckpointThenAppend(t, tr.take())

	// A large append (here any: no append is journaled): data, tree and
	// signatures durable before the journal is cut, the cut durable
	// before the signature record, which is durable before the journal's
	// new base record, which is durable before Append returns.
	w.writeMu.Lock()
	w.jrn.limit, w.jrn.maxAppend = 0, -1
	w.writeMu.Unlock()
	if _, err := w.Append([]byte("large")); err != nil {
		t.Fatal(err)
	}
	requireLargeAppend(t, tr.take())
	w.writeMu.Lock()
	w.jrn.maxAppend = 0
	w.writeMu.Unlock()

	// A new replica: its manifest record is durable before AddFeed
	// returns. (Its files are made durable by its first Put: its record
	// can write its key file again.)
	src := newFeed(t, NewMemStorage(), nil)
	for i := range 5 {
		mustAppend(t, src, fmt.Sprint(i))
	}
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	added := tr.take()
	requireSyncedBefore(t, added, len(added), "new replica", "manifest")

	// A put: data, tree and key durable before the bitfield; the
	// bitfield durable before the signature record, which is durable
	// before Put returns.
	p, err := src.Proof(0, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	evs := tr.take()
	sig := requireFirstPut(t, evs)
	// The replica's files, created by AddFeed, and their directories
	// are durable before its first signature record.
	both := append(added, evs...)
	requireDirsSynced(t, both, root, len(added)+sig, "new replica and its first put")
}

// Remove is durable when it returns: the directory that held the file is
// fsynced.
func TestDirStorageRemoveSyncsTheDirectory(t *testing.T) {
	if !canSyncDir {
		t.Skip("directories cannot be fsynced here")
	}
	s, err := OpenDir(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := storageMustOpen(t, s, "feeds/0/key", true)
	storageMustSync(t, f)
	f.Close()
	tr := traceDir(t, s)
	if err := s.Remove("feeds/0/key"); err != nil {
		t.Fatal(err)
	}
	evs := tr.take()
	if traceIndex(evs, "syncdir", filepath.Join(s.Dir(), "feeds", "0"), false) < 0 {
		t.Fatalf("remove did not fsync the file's directory:\n%s", formatTrace(evs))
	}
}

func TestDirStorageSyncMakesNewDirectoryEntriesDurableOnce(t *testing.T) {
	s, err := OpenDir(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := storageMustOpen(t, s, "a/b/c", true)
	p := s.dirSync["a/b/c"]
	want := []string{filepath.Join(s.dir, "a", "b"), filepath.Join(s.dir, "a"), s.dir}
	if p == nil || !slices.Equal(p.dirs, want) {
		t.Fatalf("directories to sync for a/b/c: %v, want %q", p, want)
	}
	g := storageMustOpen(t, s, "a/b/d", true)
	if p := s.dirSync["a/b/d"]; p == nil || !slices.Equal(p.dirs, want[:1]) {
		t.Fatalf("directories to sync for a/b/d: %v, want %q", p, want[:1])
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.dirSync["a/b/c"]; ok {
		t.Error("a/b/c still has directories to sync after Sync")
	}
	if _, ok := s.dirSync["a/b/d"]; !ok {
		t.Error("a/b/d lost its pending directory sync by another file's Sync")
	}
	// Reopening an existing file has nothing to sync.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	storageMustOpen(t, s, "a/b/d", false)
	if _, ok := s.dirSync["a/b/d"]; !ok {
		t.Error("a/b/d lost its pending directory sync by closing")
	}
	storageMustOpen(t, s, "a/b/c", false)
	if _, ok := s.dirSync["a/b/c"]; ok {
		t.Error("reopening a synced file made it pending again")
	}
}
