package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
)

// newStorageFunc returns a new, empty Storage that the test may close; the
// suite closes it at cleanup otherwise.
type newStorageFunc func(t *testing.T) Storage

// newDirStorageFunc returns a constructor of DirStorages with opts, each in a
// new temporary directory and closed at cleanup.
func newDirStorageFunc(opts *DirOptions) newStorageFunc {
	return func(t *testing.T) Storage {
		t.Helper()
		s, err := OpenDir(t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func newMemStorageForTest(t *testing.T) Storage { return NewMemStorage() }

func TestDirStorageConformance(t *testing.T) {
	testStorageConformance(t, newDirStorageFunc(nil))
}

// With a single descriptor every operation on another file evicts one, so
// the suite runs through the reopen and eviction paths.
func TestDirStorageConformanceWithOneOpenFile(t *testing.T) {
	testStorageConformance(t, newDirStorageFunc(&DirOptions{MaxOpenFiles: 1}))
}

func TestMemStorageConformance(t *testing.T) {
	testStorageConformance(t, newMemStorageForTest)
}

// testStorageConformance checks the behaviour every Storage must have.
func testStorageConformance(t *testing.T, newStorage newStorageFunc) {
	for _, c := range storageConformance {
		t.Run(c.name, func(t *testing.T) { c.test(t, newStorage) })
	}
}

// storageConformance is the conformance suite: each subtest by its name, run
// with the constructor of the Storage under test.
var storageConformance = []struct {
	name string
	test func(t *testing.T, newStorage newStorageFunc)
}{
	{"ConcurrentOpensOfANewNameShareOneFile", conformConcurrentOpensOfANewNameShareOneFile},
	{"OpensRacingRemovesLeaveNoStaleFile", conformOpensRacingRemovesLeaveNoStaleFile},
	{"WritesReadBackAtTheirOffsets", conformWritesReadBackAtTheirOffsets},
	{"ReadPastEndReturnsEOF", conformReadPastEndReturnsEOF},
	{"SparseWriteFillsGapWithZeros", conformSparseWriteFillsGapWithZeros},
	{"TruncateShrinksAndGrowsWithZeros", conformTruncateShrinksAndGrowsWithZeros},
	{"SizeFollowsWritesAndTruncates", conformSizeFollowsWritesAndTruncates},
	{"OpenMissingWithoutCreateIsNotExist", conformOpenMissingWithoutCreateIsNotExist},
	{"ReopenedFileSeesData", conformReopenedFileSeesData},
	{"TwoFilesOnOneNameShareContent", conformTwoFilesOnOneNameShareContent},
	{"RemoveDeletesFile", conformRemoveDeletesFile},
	{"BadNamesAreRejected", conformBadNamesAreRejected},
	{"NegativeOffsetsAreRejected", conformNegativeOffsetsAreRejected},
	{"NameCannotBeFileAndDirectory", conformNameCannotBeFileAndDirectory},
	{"ClosedStorageReturnsErrClosed", conformClosedStorageReturnsErrClosed},
	{"ClosedFileReturnsErrClosed", conformClosedFileReturnsErrClosed},
	{"ConcurrentReadsAndWritesAreSafe", conformConcurrentReadsAndWritesAreSafe},
}

// conformConcurrentOpensOfANewNameShareOneFile checks that Files opened at once
// on a name that did not exist all reach the same file: each writes its own
// byte and every one of them reads back all the bytes.
func conformConcurrentOpensOfANewNameShareOneFile(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	const workers = 8
	names := []string{"n/a", "n/b", "m/c", "d"}
	files := make([][]File, len(names))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, name := range names {
		for range workers {
			wg.Go(func() {
				f, err := s.Open(name, true)
				if err != nil {
					t.Errorf("Open(%q): %v", name, err)
					return
				}
				mu.Lock()
				files[i] = append(files[i], f)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	for i, fs := range files {
		for k, f := range fs {
			storageMustWriteAt(t, f, string(rune('A'+k)), int64(k))
		}
		for _, f := range fs {
			if got, want := storageReadAll(t, f), "ABCDEFGH"[:len(fs)]; got != want {
				t.Errorf("%s reads %q through one of its Files, want %q", names[i], got, want)
			}
		}
	}
}

// conformOpensRacingRemovesLeaveNoStaleFile checks that Opens and writes racing
// Removes of the same name fail with fs.ErrNotExist or not at all, and that
// once the last Remove returns the name is gone and a new file on it starts
// empty.
func conformOpensRacingRemovesLeaveNoStaleFile(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	const workers, rounds = 4, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range rounds {
				f, err := s.Open("x/f", true)
				if err != nil {
					t.Errorf("Open: %v", err)
					return
				}
				// The file may be removed at any point: then its
				// Files fail with fs.ErrNotExist, and nothing else.
				if _, err := f.WriteAt([]byte{byte(w)}, int64(w)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("WriteAt: %v", err)
				}
				if err := f.Close(); err != nil && !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Close: %v", err)
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			if err := s.Remove("x/f"); err != nil {
				t.Errorf("Remove: %v", err)
			}
		}
	})
	wg.Wait()
	if err := s.Remove("x/f"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("x/f", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after the last Remove: %v, want fs.ErrNotExist", err)
	}
	f := storageMustOpen(t, s, "x/f", true)
	if got := storageReadAll(t, f); got != "" {
		t.Fatalf("a file created after the last Remove holds %q", got)
	}
}

// conformWritesReadBackAtTheirOffsets checks that writes, overlapping ones too,
// read back at the offsets they were written to.
func conformWritesReadBackAtTheirOffsets(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "hello", 0)
	storageMustWriteAt(t, f, "world", 5)
	storageMustWriteAt(t, f, "XY", 3)
	if got := storageReadAll(t, f); got != "helXYworld" {
		t.Fatalf("content %q, want %q", got, "helXYworld")
	}
	buf := make([]byte, 4)
	n, err := f.ReadAt(buf, 4)
	if err != nil || n != 4 || string(buf) != "Ywor" {
		t.Fatalf("ReadAt(4 bytes, 4) = %d, %v, %q; want 4, nil, %q", n, err, buf[:n], "Ywor")
	}
}

// conformReadPastEndReturnsEOF checks that a read reaching past the end of a
// file returns what there is with io.EOF, and that a read ending exactly at the
// end returns no error.
func conformReadPastEndReturnsEOF(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	buf := make([]byte, 10)
	if n, err := f.ReadAt(buf, 0); n != 0 || err != io.EOF {
		t.Fatalf("read of empty file = %d, %v; want 0, io.EOF", n, err)
	}
	storageMustWriteAt(t, f, "hello", 0)
	n, err := f.ReadAt(buf, 2)
	if n != 3 || err != io.EOF || string(buf[:n]) != "llo" {
		t.Fatalf("partial read = %d, %v, %q; want 3, io.EOF, %q", n, err, buf[:n], "llo")
	}
	for _, off := range []int64{5, 6, 1 << 40} {
		if n, err := f.ReadAt(buf, off); n != 0 || err != io.EOF {
			t.Fatalf("read at %d of 5-byte file = %d, %v; want 0, io.EOF", off, n, err)
		}
	}
	if n, err := f.ReadAt(buf[:5], 0); n != 5 || err != nil {
		t.Fatalf("exact read to the end = %d, %v; want 5, nil", n, err)
	}
}

// conformSparseWriteFillsGapWithZeros checks that a write past the end of a
// file fills the gap with zeros.
func conformSparseWriteFillsGapWithZeros(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "ab", 0)
	storageMustWriteAt(t, f, "z", 6)
	if got, want := storageReadAll(t, f), "ab\x00\x00\x00\x00z"; got != want {
		t.Fatalf("content %q, want %q", got, want)
	}
}

// conformTruncateShrinksAndGrowsWithZeros checks that Truncate shrinks a file,
// and grows it with zeros rather than with the bytes it cut before.
func conformTruncateShrinksAndGrowsWithZeros(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "0123456789", 0)
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if got := storageReadAll(t, f); got != "0123" {
		t.Fatalf("after shrink: %q, want %q", got, "0123")
	}
	if err := f.Truncate(8); err != nil {
		t.Fatal(err)
	}
	// The cut bytes must not come back.
	if got, want := storageReadAll(t, f), "0123\x00\x00\x00\x00"; got != want {
		t.Fatalf("after grow: %q, want %q", got, want)
	}
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	storageMustWriteAt(t, f, "x", 2)
	if got, want := storageReadAll(t, f), "\x00\x00x"; got != want {
		t.Fatalf("after truncate to 0 and write: %q, want %q", got, want)
	}
}

// conformSizeFollowsWritesAndTruncates checks that Size follows writes past the
// end and truncates, and that writes inside the file and empty writes leave it
// unchanged.
func conformSizeFollowsWritesAndTruncates(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageWantSize(t, f, 0)
	storageMustWriteAt(t, f, "abc", 0)
	storageWantSize(t, f, 3)
	storageMustWriteAt(t, f, "d", 99)
	storageWantSize(t, f, 100)
	storageMustWriteAt(t, f, "e", 10)
	storageWantSize(t, f, 100)
	if err := f.Truncate(7); err != nil {
		t.Fatal(err)
	}
	storageWantSize(t, f, 7)
	if n, err := f.WriteAt(nil, 50); n != 0 || err != nil {
		t.Fatalf("empty write = %d, %v; want 0, nil", n, err)
	}
	storageWantSize(t, f, 7)
}

// conformOpenMissingWithoutCreateIsNotExist checks that opening a missing file
// without create fails with an error wrapping fs.ErrNotExist that names the
// file.
func conformOpenMissingWithoutCreateIsNotExist(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	for _, name := range []string{"missing", "no/such/dir/file"} {
		f, err := s.Open(name, false)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Open(%q, false) = %v, %v; want an error wrapping fs.ErrNotExist", name, f, err)
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name the file %q", err, name)
		}
	}
}

// conformReopenedFileSeesData checks that a file closed after a Sync reads back
// its data when it is opened again.
func conformReopenedFileSeesData(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "feeds/0/tree", true)
	storageMustWriteAt(t, f, "persist", 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g := storageMustOpen(t, s, "feeds/0/tree", false)
	if got := storageReadAll(t, g); got != "persist" {
		t.Fatalf("reopened content %q, want %q", got, "persist")
	}
}

// conformTwoFilesOnOneNameShareContent checks that two Files open on one name
// see each other's writes, and that closing one leaves the other usable.
func conformTwoFilesOnOneNameShareContent(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	g := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "from f", 0)
	if got := storageReadAll(t, g); got != "from f" {
		t.Fatalf("second File reads %q, want %q", got, "from f")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	storageMustWriteAt(t, g, "G", 0)
	if got := storageReadAll(t, g); got != "Grom f" {
		t.Fatalf("after closing the first File: %q, want %q", got, "Grom f")
	}
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read on closed File: %v, want ErrClosed", err)
	}
}

// conformRemoveDeletesFile checks that Remove deletes a file: it cannot be
// opened, its open Files fail with fs.ErrNotExist yet close cleanly, removing a
// missing file is no error, and a file created again on the name starts empty.
func conformRemoveDeletesFile(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "dir/a", true)
	storageMustWriteAt(t, f, "data", 0)
	if err := s.Remove("dir/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("dir/a", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Remove: %v, want fs.ErrNotExist", err)
	}
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read on a removed File: %v, want fs.ErrNotExist", err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("write on a removed File: %v, want fs.ErrNotExist", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close of a removed File: %v", err)
	}
	for _, name := range []string{"dir/a", "never", "no/such/file"} {
		if err := s.Remove(name); err != nil {
			t.Fatalf("Remove(%q) of a missing file: %v", name, err)
		}
	}
	g := storageMustOpen(t, s, "dir/a", true)
	if got := storageReadAll(t, g); got != "" {
		t.Fatalf("recreated file holds %q, want it empty", got)
	}
}

// conformBadNamesAreRejected checks that Open and Remove refuse names that are
// not clean relative slash-separated paths, or that are the reserved top-level
// LOCK, with fs.ErrInvalid and without creating anything.
func conformBadNamesAreRejected(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	bad := []string{"", ".", "..", "/a", "a/", "a//b", "./a", "a/.", "a/../b", "../a", "a/..", `a\b`, "a\x00b", "LOCK", "lock", "LOCK/x"}
	for _, name := range bad {
		if f, err := s.Open(name, true); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("Open(%q, true) = %v, %v; want an error wrapping fs.ErrInvalid", name, f, err)
		}
		if err := s.Remove(name); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("Remove(%q) = %v; want an error wrapping fs.ErrInvalid", name, err)
		}
	}
	for _, name := range []string{"a", "b"} {
		if _, err := s.Open(name, false); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("bad names created %q (Open: %v)", name, err)
		}
	}
	storageMustOpen(t, s, "dir/LOCK", true) // only the top-level name is reserved
}

// conformNegativeOffsetsAreRejected checks that ReadAt, WriteAt and Truncate
// refuse a negative offset with fs.ErrInvalid and leave the file unchanged.
func conformNegativeOffsetsAreRejected(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "abc", 0)
	if _, err := f.ReadAt(make([]byte, 1), -1); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("ReadAt(-1) = %v, want fs.ErrInvalid", err)
	}
	if _, err := f.WriteAt([]byte("x"), -1); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("WriteAt(-1) = %v, want fs.ErrInvalid", err)
	}
	if err := f.Truncate(-1); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("Truncate(-1) = %v, want fs.ErrInvalid", err)
	}
	if got := storageReadAll(t, f); got != "abc" {
		t.Fatalf("content %q after rejected calls, want %q", got, "abc")
	}
}

// conformNameCannotBeFileAndDirectory checks that a name used as a file cannot
// be opened as a directory nor a directory opened or removed as a file, and
// that such failures name the file.
func conformNameCannotBeFileAndDirectory(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	// The storages agree on no sentinel for these (DirStorage
	// returns the system's ENOTDIR or EISDIR), so the check is that
	// the call fails and names the file.
	storageMustOpen(t, s, "a", true)
	if _, err := s.Open("a/b", true); err == nil || !strings.Contains(err.Error(), "a/b") {
		t.Errorf("Open(a/b) under the file a: %v; want an error naming a/b", err)
	}
	storageMustOpen(t, s, "d/e", true)
	if _, err := s.Open("d", true); err == nil || !strings.Contains(err.Error(), "d") {
		t.Errorf("Open(d) of a directory: %v; want an error naming d", err)
	}
	if err := s.Remove("d"); err == nil || !strings.Contains(err.Error(), "d") {
		t.Errorf("Remove(d) of a directory: %v; want an error naming d", err)
	}
	if _, err := s.Open("d/e", false); err != nil {
		t.Errorf("d/e after Remove(d): %v", err)
	}
}

// conformClosedStorageReturnsErrClosed checks that once a Storage is closed
// every call on it and on its Files returns ErrClosed.
func conformClosedStorageReturnsErrClosed(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, f, "abc", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checks := map[string]error{
		"Close again": s.Close(),
		"Remove":      s.Remove("a"),
		"Truncate":    f.Truncate(1),
		"Sync":        f.Sync(),
	}
	_, checks["Open"] = s.Open("a", true)
	_, checks["ReadAt"] = f.ReadAt(make([]byte, 1), 0)
	_, checks["WriteAt"] = f.WriteAt([]byte("x"), 0)
	_, checks["Size"] = f.Size()
	checks["File.Close"] = f.Close()
	for op, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s on closed storage: %v, want ErrClosed", op, err)
		}
	}
}

// conformClosedFileReturnsErrClosed checks that once a File is closed every
// call on it returns ErrClosed, while another File on the same name still reads
// the data.
func conformClosedFileReturnsErrClosed(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	f := storageMustOpen(t, s, "a", true)
	g := storageMustOpen(t, s, "a", false)
	storageMustWriteAt(t, f, "abc", 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	checks := map[string]error{
		"Close again": f.Close(),
		"Truncate":    f.Truncate(1),
		"Sync":        f.Sync(),
	}
	_, checks["ReadAt"] = f.ReadAt(make([]byte, 1), 0)
	_, checks["WriteAt"] = f.WriteAt([]byte("x"), 0)
	_, checks["Size"] = f.Size()
	for op, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s on closed File: %v, want ErrClosed", op, err)
		}
	}
	if got := storageReadAll(t, g); got != "abc" {
		t.Fatalf("other File on the name reads %q, want %q", got, "abc")
	}
}

// conformConcurrentReadsAndWritesAreSafe checks that goroutines writing,
// reading and syncing their own regions of a shared file and of their own
// files, at once, each read back what they wrote.
func conformConcurrentReadsAndWritesAreSafe(t *testing.T, newStorage newStorageFunc) {
	s := newStorage(t)
	const workers, blocks, blockSize = 8, 50, 64
	shared := storageMustOpen(t, s, "shared", true)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			own, err := s.Open(fmt.Sprintf("own/%d", w), true)
			if err != nil {
				errc <- err
				return
			}
			defer own.Close()
			for i := range blocks {
				block := bytes.Repeat([]byte{byte(w*blocks + i)}, blockSize)
				off := int64((i*workers + w) * blockSize)
				for _, f := range []File{shared, own} {
					if _, err := f.WriteAt(block, off); err != nil {
						errc <- err
						return
					}
					got := make([]byte, blockSize)
					if _, err := f.ReadAt(got, off); err != nil {
						errc <- err
						return
					}
					if !bytes.Equal(got, block) {
						errc <- fmt.Errorf("worker %d block %d read back wrong", w, i)
						return
					}
					if _, err := f.Size(); err != nil {
						errc <- err
						return
					}
				}
				if i%10 == 0 {
					if err := own.Sync(); err != nil {
						errc <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	storageWantSize(t, shared, workers*blocks*blockSize)
}

// storageMustOpen opens name in s and fails the test if it cannot.
func storageMustOpen(t testing.TB, s Storage, name string, create bool) File {
	t.Helper()
	f, err := s.Open(name, create)
	if err != nil {
		t.Fatalf("Open(%q, %v): %v", name, create, err)
	}
	return f
}

// storageMustWriteAt writes data at off in f and fails the test unless all of
// it was written.
func storageMustWriteAt(t *testing.T, f File, data string, off int64) {
	t.Helper()
	n, err := f.WriteAt([]byte(data), off)
	if err != nil || n != len(data) {
		t.Fatalf("WriteAt(%q, %d) = %d, %v", data, off, n, err)
	}
}

// storageMustSync syncs f and fails the test if it cannot.
func storageMustSync(t testing.TB, f File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// storageMustTruncate truncates f to size and fails the test if it cannot.
func storageMustTruncate(t testing.TB, f File, size int64) {
	t.Helper()
	if err := f.Truncate(size); err != nil {
		t.Fatalf("Truncate(%d): %v", size, err)
	}
}

// storageReadAll returns the file's whole content.
func storageReadAll(t *testing.T, f File) string {
	t.Helper()
	size, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	n, err := f.ReadAt(buf, 0)
	if n != len(buf) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt of whole %d-byte file = %d, %v", size, n, err)
	}
	return string(buf)
}

// storageWantSize fails the test unless f reports the size want.
func storageWantSize(t *testing.T, f File, want int64) {
	t.Helper()
	got, err := f.Size()
	if err != nil || got != want {
		t.Fatalf("Size() = %d, %v; want %d", got, err, want)
	}
}
