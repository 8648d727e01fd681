//go:build !linux

package kappa

import "os"

// osFile is one open descriptor of a DirStorage file.
type osFile struct{ *os.File }

// openOSFile opens path read-write; with create it creates the file, which
// must not exist yet.
func openOSFile(path string, create bool) (*osFile, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, err
	}
	return &osFile{f}, nil
}

// Size returns the file's size.
func (f *osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
