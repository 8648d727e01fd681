//go:build unix

package kappa

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// withUmask022 runs the test under umask 022, as most users have it.
func withUmask022(t *testing.T) {
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })
}

func requireMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s has mode %v, want %v", path, got, want)
	}
}

func TestNewDatabaseIsPrivateUnderUmask022(t *testing.T) {
	withUmask022(t)
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	mustAppend(t, w, "x")
	src := newFeed(t, NewMemStorage(), nil)
	if _, err := c.AddFeed(src.Key()); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	requireMode(t, dir, 0o700)
	requireMode(t, filepath.Join(dir, "feeds"), 0o700)
	requireMode(t, filepath.Join(dir, "feeds", "0"), 0o700)
	for _, name := range []string{"kappa", "manifest", "LOCK", "feeds/0/key", "feeds/0/data", "feeds/0/signatures", "feeds/1/key"} {
		requireMode(t, filepath.Join(dir, filepath.FromSlash(name)), 0o600)
	}
}

func TestOpenTightensAnExistingDatabaseAndReportsIt(t *testing.T) {
	withUmask022(t)
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, mustWriter(t, c, "w"), "x")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// As an older version left it.
	for path, mode := range map[string]fs.FileMode{
		dir:                                     0o755,
		filepath.Join(dir, "kappa"):             0o644,
		filepath.Join(dir, "feeds", "0", "key"): 0o644,
		filepath.Join(dir, "manifest"):          0o644,
	} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	var repairs []Repair
	c, err = Open(dir, &Options{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	requireMode(t, dir, 0o700)
	requireMode(t, filepath.Join(dir, "kappa"), 0o600)
	requireMode(t, filepath.Join(dir, "feeds", "0", "key"), 0o600)
	reported := map[string]bool{}
	for _, r := range repairs {
		if !strings.Contains(r.Reason, "permissions") {
			t.Fatalf("unexpected repair %v", r)
		}
		reported[r.File] = true
		// The modes as ls shows them: a directory's with its d.
		want := "-rw-r--r-- tightened to -rw-------"
		if r.File == "." {
			want = "drwxr-xr-x tightened to drwx------"
		}
		if !strings.Contains(r.Reason, want) {
			t.Errorf("repair %v does not say %q", r, want)
		}
	}
	for _, name := range []string{".", "kappa", "feeds/0/key"} {
		if !reported[name] {
			t.Fatalf("tightening %s was not reported: %v", name, repairs)
		}
	}
	if got := c.Repairs(); len(got) != len(repairs) {
		t.Fatalf("Repairs() = %v, OnRepair saw %v", got, repairs)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Once private, opening changes nothing.
	repairs = nil
	c, err = Open(dir, &Options{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(repairs) > 0 {
		t.Fatalf("opening a private database repaired %v", repairs)
	}
}
