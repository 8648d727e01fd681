package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// tornDB is a database on disk that the last process left needing every
// kind of repair opening makes: torn tails in a writer's files, a replica's
// bitfield page that fails its checksum, a torn manifest record.
type tornDB struct {
	dir     string
	writer  []byte   // alice's key
	values  [][]byte // alice's entries
	replica []byte   // the replica's key
	rvalues [][]byte // the source's entries; the replica holds all but 3
}

// buildTornDB writes the database in a new directory and tears it.
func buildTornDB(t *testing.T) *tornDB {
	t.Helper()
	db := &tornDB{dir: filepath.Join(t.TempDir(), "db")}
	c, err := Open(db.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "alice")
	for i := range 5 {
		v := []byte(fmt.Sprintf("alice %d", i))
		if _, err := w.Append(v); err != nil {
			t.Fatal(err)
		}
		db.values = append(db.values, v)
	}
	db.writer = w.Key()
	src, err := OpenFeed(NewMemStorage(), "src/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := range 6 {
		v := []byte(fmt.Sprintf("source %d", i))
		if _, err := src.Append(v); err != nil {
			t.Fatal(err)
		}
		db.rvalues = append(db.rvalues, v)
	}
	db.replica = src.Key()
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	damagePut(t, src, r, 0, 3)
	damagePut(t, src, r, 4, 6)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	appendTo := func(name string, b []byte) {
		f, err := os.OpenFile(filepath.Join(db.dir, name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	appendTo("feeds/0/signatures", bytes.Repeat([]byte{7}, 30)) // a torn record
	appendTo("feeds/0/tree", bytes.Repeat([]byte{7}, 11))
	appendTo("feeds/0/data", []byte("torn"))
	appendTo("manifest", make([]byte, 20)) // a torn third record
	// A bit past the replica's length: its page fails its checksum.
	f, err := os.OpenFile(filepath.Join(db.dir, "feeds/1/bitfield"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x80}, headerSize+100); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return db
}

// check checks that c holds the database's entries, as opening leaves it.
func (db *tornDB) check(t *testing.T, c *Core) {
	t.Helper()
	ctx := ctxT(t)
	w := c.FindWriter("alice")
	if w == nil || !bytes.Equal(w.Key(), db.writer) {
		t.Fatalf("writer alice: %v", w)
	}
	got, err := w.GetBatch(ctx, 0, w.Len())
	if err != nil || !slices.EqualFunc(got, db.values, bytes.Equal) {
		t.Fatalf("alice holds %q, %v; want %q", got, err, db.values)
	}
	r := c.Feed(db.replica)
	if r == nil {
		t.Fatal("the replica is not loaded")
	}
	if r.Len() != 6 || r.Downloaded() != 5 || r.Has(3) {
		t.Fatalf("replica: length %d, %d held, has 3: %v; want 6, 5, false", r.Len(), r.Downloaded(), r.Has(3))
	}
	for seq, v := range db.rvalues {
		if seq == 3 {
			continue
		}
		if got, err := r.Get(ctx, uint64(seq)); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("replica entry %d: %q, %v; want %q", seq, got, err, v)
		}
	}
	if n := len(c.Feeds()); n != 2 {
		t.Fatalf("%d feeds, want 2", n)
	}
	if d := c.Damaged(); len(d) != 0 {
		t.Fatalf("damage: %v", d)
	}
}

// dirState is every file and directory under a directory: content, mode
// and modification time.
type dirState map[string]string

func snapshotDir(t *testing.T, dir string) dirState {
	t.Helper()
	out := dirState{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		state := fmt.Sprintf("%v %v", fi.Mode(), fi.ModTime().UnixNano())
		if !d.IsDir() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			state += fmt.Sprintf(" %x", b)
		}
		out[path] = state
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (before dirState) check(t *testing.T, after dirState, what string) {
	t.Helper()
	for name, s := range before {
		if after[name] != s {
			t.Errorf("%s changed %s", what, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			t.Errorf("%s created %s", what, name)
		}
	}
}

// copyDir copies the files under src to dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func repairStrings(rs []Repair) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	slices.Sort(out)
	return out
}

func TestReadOnlyOpenReportsRepairsAndChangesNoFile(t *testing.T) {
	db := buildTornDB(t)
	twin := filepath.Join(t.TempDir(), "twin")
	copyDir(t, db.dir, twin)
	before := snapshotDir(t, db.dir)
	if !canMtimeChange(t, db.dir) {
		t.Log("the file system's mtimes are coarse: contents are compared, mtimes may not tell")
	}

	var onRepair []Repair
	var mu sync.Mutex
	c, err := Open(db.dir, &Options{ReadOnly: true, OnRepair: func(r Repair) {
		mu.Lock()
		onRepair = append(onRepair, r)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	db.check(t, c)
	roRepairs := repairStrings(c.Repairs())
	if !slices.Equal(roRepairs, repairStrings(onRepair)) {
		t.Errorf("Repairs %q, OnRepair got %q", roRepairs, repairStrings(onRepair))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	before.check(t, snapshotDir(t, db.dir), "a read-only open")

	// A writable open makes the repairs the read-only one reported, and
	// loads the same state.
	w, err := Open(twin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	db.check(t, w)
	// (The copy's files have the modes copyDir gave them: the permissions
	// the writable open tightens are not the read-only open's business.)
	made := slices.DeleteFunc(repairStrings(w.Repairs()), func(s string) bool { return strings.Contains(s, "permissions") })
	if !slices.Equal(roRepairs, made) {
		t.Errorf("read-only open reported repairs\n%q\na writable open made\n%q", roRepairs, made)
	}
	for _, want := range []string{"manifest", "feeds/0/signatures", "feeds/0/tree", "feeds/0/data", "feeds/1/bitfield"} {
		if !slices.ContainsFunc(made, func(s string) bool { return strings.HasPrefix(s, want+" ") || strings.HasPrefix(s, want+":") }) {
			t.Errorf("no repair of %s in %q: the database was not torn as meant", want, made)
		}
	}
}

// canMtimeChange reports whether a write in dir changes a file's mtime
// visibly (file systems with a coarse clock may not).
func canMtimeChange(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(p, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	for range 1000 {
		if err := os.WriteFile(p, []byte("b"), 0o644); err != nil {
			t.Fatal(err)
		}
		if fi2, _ := os.Stat(p); !fi2.ModTime().Equal(fi.ModTime()) {
			return true
		}
	}
	return false
}

// writeRecorder is a Storage that records every change made through it.
type writeRecorder struct {
	Storage
	mu      sync.Mutex
	changes []string
}

func (w *writeRecorder) record(op, name string) {
	w.mu.Lock()
	w.changes = append(w.changes, op+" "+name)
	w.mu.Unlock()
}

func (w *writeRecorder) Open(name string, create bool) (File, error) {
	f, err := w.Storage.Open(name, false)
	if create && errors.Is(err, fs.ErrNotExist) {
		w.record("create", name)
		f, err = w.Storage.Open(name, true)
	}
	if err != nil {
		return nil, err
	}
	return &recordedFile{File: f, w: w, name: name}, nil
}

func (w *writeRecorder) Remove(name string) error {
	w.record("remove", name)
	return w.Storage.Remove(name)
}

type recordedFile struct {
	File
	w    *writeRecorder
	name string
}

func (f *recordedFile) WriteAt(p []byte, off int64) (int, error) {
	f.w.record("write", f.name)
	return f.File.WriteAt(p, off)
}

func (f *recordedFile) Truncate(size int64) error {
	f.w.record("truncate", f.name)
	return f.File.Truncate(size)
}

func (f *recordedFile) Sync() error {
	f.w.record("sync", f.name)
	return f.File.Sync()
}

// sumStateView is a view that stores its progress (in memory).
type sumStateView struct {
	sumView
	state []byte
}

func (v *sumStateView) FetchState() ([]byte, error) { return v.state, nil }
func (v *sumStateView) StoreState(s []byte) error   { v.state = s; return nil }

func TestReadOnlyCoreWritesNothingAndRefusesWrites(t *testing.T) {
	db := buildTornDB(t)
	// The storage is writable: only the database's own rule keeps it from
	// writing.
	s, err := OpenDir(db.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec := &writeRecorder{Storage: s}
	c, err := New(rec, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	db.check(t, c)
	if len(c.Repairs()) == 0 {
		t.Error("no repair reported")
	}

	alice := c.FindWriter("alice")
	if _, err := alice.Append([]byte("x")); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Append: %v, want ErrReadOnly", err)
	}
	if f, err := c.Writer("alice"); err != nil || f != alice {
		t.Errorf("Writer of an existing writer: %v, %v", f, err)
	}
	if _, err := c.Writer("bob"); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Writer creating a feed: %v, want ErrReadOnly", err)
	}
	if f, err := c.AddFeed(db.replica); err != nil || f != c.Feed(db.replica) {
		t.Errorf("AddFeed of a feed held: %v, %v", f, err)
	}
	kp := mustKeyPair(t)
	if _, err := c.AddFeeds(db.replica, kp.PublicKey); !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddFeeds with a new feed: %v, want ErrReadOnly", err)
	}
	// A proof that verifies against the replica.
	p, err := proofSource(t, db).Proof(0, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Feed(db.replica).Put(p); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Put: %v, want ErrReadOnly", err)
	}
	a, b := net.Pipe()
	defer b.Close()
	if err := c.Replicate(ctxT(t), a, true, nil); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Replicate: %v, want ErrReadOnly", err)
	}
	if _, err := c.Use("stored", 1, &sumStateView{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Use of a view that stores state: %v, want ErrReadOnly", err)
	}
	if _, err := c.Use("cleared", 1, &kvView{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Use of a view that clears its index: %v, want ErrReadOnly", err)
	}
	// A view in memory runs.
	var n int
	var nmu sync.Mutex
	mustUse(t, c, "count", 1, viewFunc(func(es []Entry) error {
		nmu.Lock()
		n += len(es)
		nmu.Unlock()
		return nil
	}))
	if err := c.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	nmu.Lock()
	if n != 10 {
		t.Errorf("the view mapped %d entries, want 10", n)
	}
	nmu.Unlock()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.changes) > 0 {
		t.Errorf("a read-only database changed its storage: %q", rec.changes)
	}
}

// proofSource returns db's replica in a writable copy of the database, to
// take proofs from.
func proofSource(t *testing.T, db *tornDB) *Feed {
	t.Helper()
	twin := filepath.Join(t.TempDir(), "twin")
	copyDir(t, db.dir, twin)
	c, err := Open(twin, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.Feed(db.replica)
}

func TestReadOnlyOpensShareTheDirectoryAndExcludeAWriter(t *testing.T) {
	db := buildTornDB(t)
	r1, err := Open(db.dir, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(db.dir, &Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("a second read-only open: %v", err)
	}
	db.check(t, r2)
	if _, err := Open(db.dir, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("a writer while readers hold the directory: %v, want ErrLocked", err)
	}
	r1.Close()
	if _, err := Open(db.dir, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("a writer while a reader holds the directory: %v, want ErrLocked", err)
	}
	r2.Close()
	w, err := Open(db.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(db.dir, &Options{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Fatalf("a reader while a writer holds the directory: %v, want ErrLocked", err)
	}
	w.Close()
	r3, err := Open(db.dir, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	r3.Close()
}

func TestReadOnlyOpenWhereThereIsNoDatabase(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := Open(missing, &Options{ReadOnly: true})
	if !errors.Is(err, ErrReadOnly) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read-only open of a missing directory: %v, want ErrReadOnly and fs.ErrNotExist", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the directory was created: %v", err)
	}
	empty := t.TempDir()
	_, err = Open(empty, &Options{ReadOnly: true})
	if !errors.Is(err, ErrReadOnly) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read-only open of an empty directory: %v, want ErrReadOnly and fs.ErrNotExist", err)
	}
	if names, _ := os.ReadDir(empty); len(names) != 0 {
		t.Errorf("files were created: %v", names)
	}
	// A creation torn before the key was written.
	s := NewMemStorage()
	f, err := s.Open(fileDB, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := New(s, &Options{ReadOnly: true}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only open of a torn creation: %v, want ErrReadOnly", err)
	}
	if names := s.names(); len(names) != 1 {
		t.Errorf("files after: %q", names)
	}
	// A feed alone whose key file is torn, given no key.
	s = NewMemStorage()
	if f, err := s.Open("f/key", true); err != nil {
		t.Fatal(err)
	} else {
		f.WriteAt([]byte("KAPPA"), 0)
		f.Close()
	}
	if _, err := OpenFeed(s, "f/", &FeedOptions{ReadOnly: true}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only OpenFeed of a torn key file without a key: %v, want ErrReadOnly", err)
	}
	// A feed alone, with or without keys.
	kp := mustKeyPair(t)
	for _, o := range []FeedOptions{{}, {Key: kp.PublicKey}, {SecretKey: kp.SecretKey}} {
		s = NewMemStorage()
		o.ReadOnly = true
		if _, err := OpenFeed(s, "f/", &o); !errors.Is(err, ErrReadOnly) {
			t.Errorf("read-only OpenFeed where there is none (key %v, secret %v): %v, want ErrReadOnly", o.Key != nil, o.SecretKey != nil, err)
		}
		if names := s.names(); len(names) != 0 {
			t.Errorf("files after: %q", names)
		}
	}
}

func TestReadOnlyOpenOfATornReplicaCreation(t *testing.T) {
	// A replica created without sync whose files a crash left short or
	// missing.
	src, err := OpenFeed(NewMemStorage(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	made := NewMemStorage()
	r, err := OpenFeed(made, "r/", &FeedOptions{Key: src.Key()})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	keyRecord, _ := made.fileBytes("r/key")
	dataHdr, treeHdr := encodeHeader(magicData, 0), encodeHeader(magicTree, nodeSize)
	for _, tc := range []struct {
		what    string
		files   map[string][]byte
		repairs int
	}{
		// Opening would write the key file again, and the missing
		// files' headers.
		{"key torn", map[string][]byte{"r/key": []byte("KAPPAKEY"), "r/data": dataHdr[:], "r/tree": treeHdr[:]}, 1},
		// Opening would cut data's torn header and write it again.
		{"headers torn", map[string][]byte{"r/key": keyRecord, "r/data": []byte("KAP")}, 1},
		// A Core's replica whose files never became durable: its
		// manifest record has the key that opening writes again.
		{"no files", map[string][]byte{}, 0},
	} {
		s := NewMemStorage()
		for name, b := range tc.files {
			f, err := s.Open(name, true)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(b, 0)
			f.Close()
		}
		before := memSnapshot(s)
		rec := &writeRecorder{Storage: s}
		var repairs []Repair
		r, err := OpenFeed(rec, "r/", &FeedOptions{ReadOnly: true, Key: src.Key(), rewriteKey: true, OnRepair: func(rp Repair) { repairs = append(repairs, rp) }})
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if r.Len() != 0 || r.Downloaded() != 0 || !bytes.Equal(r.Key(), src.Key()) {
			t.Errorf("%s: length %d, %d held, key %x", tc.what, r.Len(), r.Downloaded(), r.Key()[:4])
		}
		// A file held in memory in place of one opening would write
		// stays the feed's file.
		for i := range r.lazy {
			if i == lazyJrn {
				continue // a replica has no journal
			}
			if size, err := r.lazy[i].Size(); err != nil || size != headerSize {
				t.Errorf("%s: %s holds %d bytes, %v; want its header", tc.what, lazyFileNames[i], size, err)
			}
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if len(rec.changes) > 0 {
			t.Errorf("%s: changes %q", tc.what, rec.changes)
		}
		after := memSnapshot(s)
		if len(after) != len(before) {
			t.Errorf("%s: files before %d, after %d", tc.what, len(before), len(after))
		}
		for name, b := range before {
			if !bytes.Equal(after[name], b) {
				t.Errorf("%s: %s changed", tc.what, name)
			}
		}
		if len(repairs) != tc.repairs {
			t.Errorf("%s: repairs %v, want %d", tc.what, repairs, tc.repairs)
		}
	}
}

func TestReadOnlyOpenOfADirectoryWithoutLock(t *testing.T) {
	db := buildTornDB(t)
	// Where LOCK's existence is the lock, a writer removed it on close.
	if err := os.Remove(filepath.Join(db.dir, storageLockName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	before := snapshotDir(t, db.dir)
	c, err := Open(db.dir, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.check(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	before.check(t, snapshotDir(t, db.dir), "a read-only open")
}

func TestReadOnlyDirectoryOnAReadOnlyMode(t *testing.T) {
	if runtime.GOOS == "windows" || os.Geteuid() == 0 {
		t.Skip("file modes do not stop this user from writing")
	}
	db := buildTornDB(t)
	t.Cleanup(func() { chmodTree(t, db.dir, true) })
	for _, withLock := range []bool{true, false} {
		if !withLock {
			// As on a mount of a copy that never had one.
			chmodTree(t, db.dir, true)
			if err := os.Remove(filepath.Join(db.dir, storageLockName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
		}
		chmodTree(t, db.dir, false)
		before := snapshotDir(t, db.dir)
		if c, err := Open(db.dir, nil); err == nil {
			c.Close()
			t.Fatal("a writable open of a read-only directory succeeded")
		}
		c, err := Open(db.dir, &Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("LOCK present %v: %v", withLock, err)
		}
		db.check(t, c)
		c2, err := Open(db.dir, &Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("LOCK present %v: a second read-only open: %v", withLock, err)
		}
		c2.Close()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		before.check(t, snapshotDir(t, db.dir), "a read-only open")
	}
}

// chmodTree makes the files and directories under dir writable or not.
func chmodTree(t *testing.T, dir string, writable bool) {
	t.Helper()
	var paths []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, path)
		}
		return nil
	})
	if !writable {
		slices.Reverse(paths) // contents before their directory
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		mode := fi.Mode().Perm() &^ 0o222
		if writable {
			mode |= 0o200
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadOnlyStorageRefusesChanges(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Open("a/b", true)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("hello"), 0)
	f.Close()
	s.Close()
	before := snapshotDir(t, dir)

	ro, err := OpenDir(dir, &DirOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Open("a/c", true); !errors.Is(err, ErrReadOnly) {
		t.Errorf("creating a file: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Open("a/c", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("opening a missing file: %v, want fs.ErrNotExist", err)
	}
	f, err = ro.Open("a/b", true)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "hello" {
		t.Errorf("read %q, %v", buf, err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt: %v, want ErrReadOnly", err)
	}
	if err := f.Truncate(1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Truncate: %v, want ErrReadOnly", err)
	}
	if err := ro.Remove("a/b"); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Remove: %v, want ErrReadOnly", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	before.check(t, snapshotDir(t, dir), "a read-only storage")
	if _, err := OpenDir(filepath.Join(dir, "none"), &DirOptions{ReadOnly: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read-only OpenDir of a missing directory: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the directory was created: %v", err)
	}
}

func TestReadOnlyOpenOfADatabaseWithoutManifest(t *testing.T) {
	// The manifest's creation was torn: missing, or its header cut.
	for _, size := range []int64{-1, 0, 5} {
		s := NewMemStorage()
		c, err := New(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if size < 0 {
			s.Remove(fileManifest)
		} else {
			f, _ := s.Open(fileManifest, false)
			f.Truncate(size)
			f.Close()
		}
		before := memSnapshot(s)
		rec := &writeRecorder{Storage: s}
		c, err = New(rec, &Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("manifest size %d: %v", size, err)
		}
		if n := len(c.Feeds()); n != 0 {
			t.Errorf("manifest size %d: %d feeds", size, n)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if len(rec.changes) > 0 || len(memSnapshot(s)) != len(before) {
			t.Errorf("manifest size %d: changes %q", size, rec.changes)
		}
	}
}

// A crash can leave whole records of zeros at the end of a writer's
// signatures file and of the manifest (the files grew, their bytes never
// landed): torn tails, which a writable open cuts. A read-only open reports
// the cuts as repairs to make, and Verify finds no problem in them, before
// and after a writable open made the cuts. (The writer appends without
// sync, so that no journal tells what its last append wrote.)
func TestReadOnlyVerifyTakesWholeTornRecordsForRepairs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	for i := range 7 {
		if _, err := w.Append(fmt.Appendf(nil, "value %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{"feeds/0/signatures": sigRecordSize, "manifest": manifestRecord} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for i, readOnly := range []bool{true, false, true} {
		c, err := Open(dir, &Options{ReadOnly: readOnly})
		if err != nil {
			t.Fatal(err)
		}
		var problems []string
		st, err := c.Verify(ctxT(t), &VerifyOptions{OnDamage: func(d Damage) { problems = append(problems, d.Error()) }})
		if err != nil {
			t.Fatal(err)
		}
		if st.Problems != 0 || st.Signatures != 7 || st.Entries != 7 {
			t.Errorf("read-only %v: verify found %d problems %q, %d signatures, %d entries; want none, 7, 7", readOnly, st.Problems, problems, st.Signatures, st.Entries)
		}
		if i == 0 {
			repairs := strings.Join(repairStrings(c.Repairs()), "\n")
			for _, want := range []string{"feeds/0/signatures", "manifest"} {
				if !strings.Contains(repairs, want) {
					t.Errorf("read-only %v: no repair of %s reported: %s", readOnly, want, repairs)
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
