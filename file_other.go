//go:build !linux

package kappa

import (
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
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return osFile{}, err
	}
	return osFile{f}, nil
}

// Size returns the file's size.
func (f *osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
