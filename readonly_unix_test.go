//go:build unix && !solaris && !aix

package kappa

import (
	"errors"
	"testing"
)

// Two locks taken in one process are two open file descriptions, which
// flock treats as it treats two processes: this tests the kernel's side,
// that OpenDir's own check of this process's locks would hide.
func TestSharedLocksCoexistAndExcludeTheExclusiveOne(t *testing.T) {
	dir := t.TempDir()
	w, err := lockDir(dir, false) // creates LOCK
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir, true); !errors.Is(err, ErrLocked) {
		t.Fatalf("a shared lock while a writer holds it: %v, want ErrLocked", err)
	}
	if err := w.unlock(); err != nil {
		t.Fatal(err)
	}
	r1, err := lockDir(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := lockDir(dir, true)
	if err != nil {
		t.Fatalf("a second shared lock: %v", err)
	}
	if r1.f == nil || r2.f == nil {
		t.Fatal("a shared lock on a directory with LOCK holds no lock")
	}
	if _, err := lockDir(dir, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("an exclusive lock while readers hold it: %v, want ErrLocked", err)
	}
	r1.unlock()
	if _, err := lockDir(dir, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("an exclusive lock while a reader holds it: %v, want ErrLocked", err)
	}
	r2.unlock()
	w, err = lockDir(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	w.unlock()
}
