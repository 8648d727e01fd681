package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// newStorageFunc returns a new, empty Storage that the test may close; the
// suite closes it at cleanup otherwise.
type newStorageFunc func(t *testing.T) Storage

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
	t.Run("ConcurrentOpensOfANewNameShareOneFile", func(t *testing.T) {
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
	})

	t.Run("OpensRacingRemovesLeaveNoStaleFile", func(t *testing.T) {
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
	})

	t.Run("WritesReadBackAtTheirOffsets", func(t *testing.T) {
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
	})

	t.Run("ReadPastEndReturnsEOF", func(t *testing.T) {
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
	})

	t.Run("SparseWriteFillsGapWithZeros", func(t *testing.T) {
		s := newStorage(t)
		f := storageMustOpen(t, s, "a", true)
		storageMustWriteAt(t, f, "ab", 0)
		storageMustWriteAt(t, f, "z", 6)
		if got, want := storageReadAll(t, f), "ab\x00\x00\x00\x00z"; got != want {
			t.Fatalf("content %q, want %q", got, want)
		}
	})

	t.Run("TruncateShrinksAndGrowsWithZeros", func(t *testing.T) {
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
	})

	t.Run("SizeFollowsWritesAndTruncates", func(t *testing.T) {
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
	})

	t.Run("OpenMissingWithoutCreateIsNotExist", func(t *testing.T) {
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
	})

	t.Run("ReopenedFileSeesData", func(t *testing.T) {
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
	})

	t.Run("TwoFilesOnOneNameShareContent", func(t *testing.T) {
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
	})

	t.Run("RemoveDeletesFile", func(t *testing.T) {
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
	})

	t.Run("BadNamesAreRejected", func(t *testing.T) {
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
	})

	t.Run("NegativeOffsetsAreRejected", func(t *testing.T) {
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
	})

	t.Run("NameCannotBeFileAndDirectory", func(t *testing.T) {
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
	})

	t.Run("ClosedStorageReturnsErrClosed", func(t *testing.T) {
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
	})

	t.Run("ClosedFileReturnsErrClosed", func(t *testing.T) {
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
	})

	t.Run("ConcurrentReadsAndWritesAreSafe", func(t *testing.T) {
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
	})
}

func storageMustOpen(t testing.TB, s Storage, name string, create bool) File {
	t.Helper()
	f, err := s.Open(name, create)
	if err != nil {
		t.Fatalf("Open(%q, %v): %v", name, create, err)
	}
	return f
}

func storageMustWriteAt(t *testing.T, f File, data string, off int64) {
	t.Helper()
	n, err := f.WriteAt([]byte(data), off)
	if err != nil || n != len(data) {
		t.Fatalf("WriteAt(%q, %d) = %d, %v", data, off, n, err)
	}
}

func storageMustSync(t testing.TB, f File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

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

func storageWantSize(t *testing.T, f File, want int64) {
	t.Helper()
	got, err := f.Size()
	if err != nil || got != want {
		t.Fatalf("Size() = %d, %v; want %d", got, err, want)
	}
}

func TestOpenDirSecondOpenIsLockedUntilClose(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := OpenDir(dir, nil)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second OpenDir = %v, %v; want ErrLocked", s2, err)
	}
	want := "open storage " + dir + ": kappa: database is locked: held by another OpenDir in this process"
	if err.Error() != want {
		t.Errorf("second OpenDir: %q\nwant %q", err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatalf("OpenDir after Close: %v", err)
	}
	if err := s3.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLockHelperProcess is run as a child process by
// TestOpenDirIsLockedAgainstOtherProcesses.
func TestLockHelperProcess(t *testing.T) {
	dir := os.Getenv("KAPPA_TEST_LOCK_DIR")
	if dir == "" {
		t.Skip("helper for TestOpenDirIsLockedAgainstOtherProcesses")
	}
	s, err := OpenDir(dir, nil)
	switch {
	case errors.Is(err, ErrLocked):
		fmt.Println("RESULT locked:", err)
	case err != nil:
		fmt.Println("RESULT error", err)
	case s.Close() != nil:
		fmt.Println("RESULT error closing")
	default:
		fmt.Println("RESULT opened")
	}
}

func TestOpenDirIsLockedAgainstOtherProcesses(t *testing.T) {
	switch runtime.GOOS {
	case "js", "wasip1", "ios", "android":
		t.Skip("cannot start a child process here")
	}
	dir := t.TempDir()
	child := func() string {
		cmd := exec.CommandContext(ctxT(t), os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.v")
		cmd.Env = childEnv("KAPPA_TEST_LOCK_DIR=" + dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		for line := range strings.Lines(string(out)) {
			if r, ok := strings.CutPrefix(line, "RESULT "); ok {
				return strings.TrimSpace(r)
			}
		}
		t.Fatalf("child printed no result:\n%s", out)
		return ""
	}
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "locked: open storage " + dir + ": kappa: database is locked: held by another process"
	if got := child(); !strings.HasPrefix(got, want) {
		t.Errorf("child OpenDir while we hold the lock: %s\nwant %s", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := child(); got != "opened" {
		t.Errorf("child OpenDir after Close: %s, want opened", got)
	}
}

func TestOpenDirSeesItsOwnLockThroughAnotherPath(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = OpenDir(link, nil)
	if !errors.Is(err, ErrLocked) || !strings.HasSuffix(err.Error(), ": held by another OpenDir in this process") {
		t.Fatalf("OpenDir through a symbolic link: %v; want ErrLocked held in this process", err)
	}
}

func TestOpenDirCreatesMissingDirectoryAndReportsAbsolutePath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x", "y")
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("directory not created: %v", err)
	}
	// Its parents' entries wait for the first Sync.
	if len(s.rootSync) != 2 {
		t.Errorf("directories to sync for the root: %q, want the parents of x and y", s.rootSync)
	}
	f := storageMustOpen(t, s, "f", true)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if s.rootSync != nil {
		t.Errorf("root directories still pending after a Sync: %q", s.rootSync)
	}
}

func TestOpenDirRejectsNegativeMaxOpenFiles(t *testing.T) {
	s, err := OpenDir(t.TempDir(), &DirOptions{MaxOpenFiles: -1})
	if !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("OpenDir with MaxOpenFiles -1 = %v, %v; want fs.ErrInvalid", s, err)
	}
	if _, err := OpenDir("", nil); !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("OpenDir of an empty path: %v; want fs.ErrInvalid", err)
	}
}

func TestDirStorageDataPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := storageMustOpen(t, s, "feeds/0/data", true)
	storageMustWriteAt(t, f, "kept", 0)
	unsynced := storageMustOpen(t, s, "feeds/1/data", true)
	storageMustWriteAt(t, unsynced, "also kept", 3)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := storageReadAll(t, storageMustOpen(t, s, "feeds/0/data", false)); got != "kept" {
		t.Errorf("feeds/0/data = %q after reopen, want %q", got, "kept")
	}
	if got := storageReadAll(t, storageMustOpen(t, s, "feeds/1/data", false)); got != "\x00\x00\x00also kept" {
		t.Errorf("feeds/1/data = %q after reopen, want %q", got, "\x00\x00\x00also kept")
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

// storageOpenFDs counts this process's open descriptors, or returns -1 where it
// cannot.
func storageOpenFDs(t *testing.T) int {
	if runtime.GOOS != "linux" {
		return -1
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries) - 1 // the directory being read
}

func TestDirStorageBoundsOpenDescriptorsUnderManyFiles(t *testing.T) {
	const max = 64
	files := 3000
	if testing.Short() {
		files = 500 // still eight times the descriptors allowed
	}
	before := storageOpenFDs(t)
	s, err := OpenDir(t.TempDir(), &DirOptions{MaxOpenFiles: max})
	if err != nil {
		t.Fatal(err)
	}
	const slack = 1 + 4 // the lock file, and runtime descriptors
	check := func(when string) {
		t.Helper()
		s.mu.Lock()
		cached := s.cached
		s.mu.Unlock()
		if cached > max {
			t.Fatalf("%s: %d descriptors cached, limit %d", when, cached, max)
		}
		if before >= 0 {
			if now := storageOpenFDs(t); now > before+max+slack {
				t.Fatalf("%s: %d descriptors open, started with %d, limit %d", when, now, before, max)
			}
		}
	}
	opened := make([]File, files)
	for i := range opened {
		opened[i] = storageMustOpen(t, s, fmt.Sprintf("feeds/%d/data", i), true)
		storageMustWriteAt(t, opened[i], fmt.Sprint("file ", i), 0)
		if i%500 == 0 {
			check(fmt.Sprint("after opening ", i+1))
		}
	}
	check("after opening all")
	for i, f := range opened {
		if got, want := storageReadAll(t, f), fmt.Sprint("file ", i); got != want {
			t.Fatalf("file %d reads %q, want %q", i, got, want)
		}
	}
	for i, f := range opened[:100] {
		if err := f.Sync(); err != nil {
			t.Fatalf("Sync of file %d: %v", i, err)
		}
	}
	check("after reading all")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if before >= 0 {
		if now := storageOpenFDs(t); now > before+4 {
			t.Fatalf("after Close: %d descriptors open, started with %d", now, before)
		}
	}
}

func TestDirStorageEvictedFileWithUnsyncedWritesReadsBack(t *testing.T) {
	s, err := OpenDir(t.TempDir(), &DirOptions{MaxOpenFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := storageMustOpen(t, s, "a", true)
	storageMustWriteAt(t, a, "unsynced data of a", 0)
	an := a.(*dirFile).n
	if !an.dirty.Load() {
		t.Fatal("a is not marked as having unsynced writes")
	}
	for _, name := range []string{"b", "c", "d"} {
		storageMustWriteAt(t, storageMustOpen(t, s, name, true), "x", 0)
	}
	s.mu.Lock()
	evicted, dirty := an.h == nil, an.dirty.Load()
	s.mu.Unlock()
	if !evicted {
		t.Fatal("a's descriptor is still cached after three other files were used")
	}
	if dirty {
		t.Error("a was evicted without syncing its writes")
	}
	if got := storageReadAll(t, a); got != "unsynced data of a" {
		t.Fatalf("a reads %q after eviction, want %q", got, "unsynced data of a")
	}
	storageMustWriteAt(t, a, "U", 0)
	if err := a.Sync(); err != nil {
		t.Fatalf("Sync after eviction: %v", err)
	}
	if onDisk, err := os.ReadFile(filepath.Join(s.Dir(), "a")); err != nil || string(onDisk) != "Unsynced data of a" {
		t.Fatalf("a on disk: %q, %v", onDisk, err)
	}
}

// Many goroutines on more files than descriptors: operations must never
// see a descriptor closed under them.
func TestDirStorageConcurrentUseUnderEviction(t *testing.T) {
	s, err := OpenDir(t.TempDir(), &DirOptions{MaxOpenFiles: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const nfiles, workers, rounds = 10, 8, 200
	files := make([]File, nfiles)
	for i := range files {
		files[i] = storageMustOpen(t, s, fmt.Sprint("f", i), true)
	}
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range rounds {
				f := files[r.IntN(nfiles)]
				off := int64(w * 8)
				want := []byte(fmt.Sprintf("%08d", i))
				if _, err := f.WriteAt(want, off); err != nil {
					errc <- err
					return
				}
				got := make([]byte, 8)
				if _, err := f.ReadAt(got, off); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(got, want) {
					errc <- fmt.Errorf("worker %d read %q, want %q", w, got, want)
					return
				}
				if i%50 == 0 {
					if err := f.Sync(); err != nil {
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached > 3 {
		t.Errorf("%d descriptors cached once idle, limit 3", s.cached)
	}
}

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

func benchmarkStorageReadWrite(b *testing.B, s Storage) {
	f := storageMustOpen(b, s, "bench", true)
	buf := make([]byte, 4096)
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		b.Fatal(err)
	}
	b.Run("ReadAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := f.ReadAt(buf, int64(i%256)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WriteAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ParallelReadAt4K", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 4096)
			for i := 0; pb.Next(); i++ {
				if _, err := f.ReadAt(buf, int64(i%256)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

func BenchmarkDirStorage(b *testing.B) {
	s, err := OpenDir(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchmarkStorageReadWrite(b, s)
}

func BenchmarkMemStorage(b *testing.B) {
	benchmarkStorageReadWrite(b, NewMemStorage())
}

// Files under many first-level directories (more than a DirStorage keeps
// open), created after the storage opened, land where their names say,
// read back, and leave no descriptor open after Close.
func TestDirStorageFilesUnderManyDirectoriesLeaveNoDescriptor(t *testing.T) {
	dir := t.TempDir()
	cycle := func(round int) {
		s, err := OpenDir(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 32 {
			name := fmt.Sprintf("d%d/sub/f%d", i, round)
			f := storageMustOpen(t, s, name, true)
			storageMustWriteAt(t, f, name, 0)
			if got := storageReadAll(t, f); got != name {
				t.Fatalf("%s reads %q", name, got)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for i := range 32 {
			name := fmt.Sprintf("d%d/sub/f%d", i, round)
			b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
			if err != nil || string(b) != name {
				t.Fatalf("%s on disk: %q, %v", name, b, err)
			}
		}
	}
	cycle(0) // the runtime's own descriptors are open after this
	before := storageOpenFDs(t)
	cycle(1)
	if now := storageOpenFDs(t); before >= 0 && now != before {
		t.Fatalf("after Close: %d descriptors open, %d before", now, before)
	}
}
