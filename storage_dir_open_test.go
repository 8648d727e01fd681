package kappa

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

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
