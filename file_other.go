//go:build !linux

package kappa

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// osFile is one open descriptor of a DirStorage file.
type osFile struct{ *os.File }

// rootDir is a DirStorage's directory; with readOnly, files are opened
// read-only.
type rootDir struct {
	path     string
	readOnly bool
}

func openRootDir(path string, readOnly bool) (rootDir, error) {
	return rootDir{path: path, readOnly: readOnly}, nil
}

func (d rootDir) close() error { return nil }

// open opens name (slash-separated, relative to d) read-write, or read-only
// if d is; with create it creates the file, which must not exist yet.
func (d rootDir) open(name string, create bool) (osFile, error) {
	local, err := filepath.Localize(name)
	if err != nil {
		return osFile{}, &os.PathError{Op: "open", Path: name, Err: err}
	}
	path := filepath.Join(d.path, local)
	flags := os.O_RDWR
	if d.readOnly {
		flags = os.O_RDONLY
	}
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, filePerm)
	if err != nil {
		return osFile{}, err
	}
	return osFile{f}, nil
}

// Datasync is Sync: fdatasync(2) is Linux's.
func (f *osFile) Datasync() error { return f.Sync() }

// Size returns the file's size.
func (f *osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// linked reports whether the file's path still names it: one whose
// directory was deleted is gone, and what it holds is lost when it is
// closed, synced or not.
func (f *osFile) linked() (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	named, err := os.Stat(f.Name())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, named), nil
}
