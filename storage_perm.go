package kappa

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// A database's files are nobody else's business: its key files hold secret
// keys (a writer's in feeds/N/key, the shared key in kappa), and the rest
// is readable through them anyway. A DirStorage creates its files with
// filePerm and its directories with dirPerm, and OpenDir takes group and
// other permissions away from an existing database's directory and secret
// files (see tightenPerms).
const (
	filePerm fs.FileMode = 0o600
	dirPerm  fs.FileMode = 0o700
)

// tightenPerms takes group and other permissions away from the storage's
// directory and from the files that hold secret keys (kappa and
// feeds/*/key), where the system has such permissions, and returns a Repair
// for each change. With readOnly it changes nothing and reports what it
// would change.
func (s *DirStorage) tightenPerms(readOnly bool) ([]Repair, error) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		return nil, nil
	}
	var repairs []Repair
	tighten := func(path, name, what string) error {
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 || fi.Mode().Perm()&0o077 == 0 {
			return nil
		}
		to := fi.Mode().Perm() &^ 0o077
		if !readOnly {
			if err := os.Chmod(path, to); err != nil {
				return err
			}
		}
		size := fi.Size()
		if fi.IsDir() {
			size = 0
		}
		repairs = append(repairs, Repair{File: name, From: size, To: size,
			Reason: fmt.Sprintf("%s: permissions %v tightened to %v", what, fi.Mode().Type()|fi.Mode().Perm(), fi.Mode().Type()|to)})
		return nil
	}
	if err := tighten(s.dir, ".", "the database directory"); err != nil {
		return nil, err
	}
	if err := tighten(filepath.Join(s.dir, fileDB), fileDB, "it holds the shared key"); err != nil {
		return nil, err
	}
	feeds, err := os.ReadDir(filepath.Join(s.dir, "feeds"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range feeds {
		if !e.IsDir() {
			continue
		}
		name := "feeds/" + e.Name() + "/" + fileKey
		if err := tighten(filepath.Join(s.dir, "feeds", e.Name(), fileKey), name, "it may hold a writer's secret key"); err != nil {
			return nil, err
		}
	}
	return repairs, nil
}

// takeRepairs returns the changes OpenDir made to the storage's files (see
// tightenPerms) the first time it is called, and nothing afterwards.
func (s *DirStorage) takeRepairs() []Repair {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repairs
	s.repairs = nil
	return r
}
