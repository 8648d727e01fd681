package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// dirSnapshot is the content, mode and modification time of every file
// and directory under a directory.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[path] = fmt.Sprintf("%v %v", fi.Mode(), fi.ModTime().UnixNano())
		if !d.IsDir() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			out[path] += fmt.Sprintf(" %x", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkSameDir(t *testing.T, before, after map[string]string, what string) {
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

// readCommands are the commands that only read.
var readCommands = [][]string{{"key"}, {"feeds"}, {"stat"}, {"log"}, {"log", "-json"}, {"verify"}}

func TestReadCommandsChangeNothingAndShareTheDatabase(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "aaaa", "bbbb", "cccc")
	// A tail torn by a crash: a writable open would cut it.
	sigs := filepath.Join(db, "feeds", "0", "signatures")
	f, err := os.OpenFile(sigs, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("torn"))
	f.Close()
	// Another reader holds the database meanwhile.
	reader, err := kappa.Open(db, &kappa.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	before := dirSnapshot(t, db)
	for _, args := range readCommands {
		out := mustRun(t, dir, append([]string{"-db", db}, args...)...)
		if args[0] == "verify" && !strings.Contains(out, "not repaired (opened read-only): feeds/0/signatures cut from") {
			t.Errorf("verify does not list the repair it did not make:\n%s", out)
		}
		if args[0] == "log" && strings.Count(out, "\n") != 3 {
			t.Errorf("log %v:\n%s", args, out)
		}
	}
	checkSameDir(t, before, dirSnapshot(t, db), "the read commands")
	// A writer is kept out while a reader holds the database.
	if msg := mustFail(t, dir, "", "append", "-db", db, "dddd"); !strings.Contains(msg, "database is locked") {
		t.Errorf("append while a reader holds the database: %q", msg)
	}
	reader.Close()
	mustRun(t, dir, "append", "-db", db, "dddd")
}

func TestReadCommandsOnAReadOnlyDirectory(t *testing.T) {
	if runtime.GOOS == "windows" || os.Geteuid() == 0 {
		t.Skip("file modes do not stop this user from writing")
	}
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "aaaa", "bbbb")
	setWritable(t, db, false)
	t.Cleanup(func() { setWritable(t, db, true) })
	before := dirSnapshot(t, db)
	for _, args := range readCommands {
		mustRun(t, dir, append([]string{"-db", db}, args...)...)
	}
	mustFail(t, dir, "", "append", "-db", db, "cccc")
	checkSameDir(t, before, dirSnapshot(t, db), "the read commands")
}

// setWritable makes the files and directories under dir writable or not.
func setWritable(t *testing.T, dir string, writable bool) {
	t.Helper()
	var paths []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, path)
		}
		return nil
	})
	for i := range paths {
		p := paths[i]
		if !writable {
			p = paths[len(paths)-1-i] // contents before their directory
		}
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
