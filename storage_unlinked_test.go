package kappa

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// A database directory deleted while open: an Append (with sync) fails with
// an error wrapping fs.ErrNotExist and acknowledges nothing, and so do
// later ones.
func TestAppendFailsOnceTheDatabaseDirectoryIsDeleted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := mustWriter(t, c, "w")
	mustAppend(t, w, "before")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if seq, err := w.Append([]byte("after")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("append %d after the directory was deleted: seq %d, %v; want an error wrapping fs.ErrNotExist", i, seq, err)
		}
		if w.Len() != 1 {
			t.Fatalf("length %d after a failed append, want 1", w.Len())
		}
	}
	if _, err := c.Writer("other"); err == nil {
		t.Fatal("a new writer was added to a deleted database")
	}
}

// A DirStorage file whose directory was deleted fails its Sync.
func TestDirStorageSyncFailsOnceTheDirectoryIsDeleted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := storageMustOpen(t, s, "feeds/0/data", true)
	defer f.Close()
	storageMustSync(t, f)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("lost"), 0); err != nil {
		t.Fatal(err) // the descriptor still takes writes
	}
	if err := f.Sync(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("sync of a file whose directory was deleted: %v, want an error wrapping fs.ErrNotExist", err)
	}
}
