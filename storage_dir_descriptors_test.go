package kappa

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

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
