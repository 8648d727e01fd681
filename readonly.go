package kappa

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
)

// A read-only database (Options.ReadOnly) or feed (FeedOptions.ReadOnly)
// never writes to its storage. Opening does what it would do otherwise,
// but each repair is reported and not made: a torn tail is left in its file
// and the state before it is loaded; a bitfield page is rebuilt in memory;
// a file that a torn creation left missing or shorter than its header is
// stood in for by one in memory (memFileRO) holding the header. The single
// test is feedConfig.readOnly for feeds and Options.ReadOnly for the Core.

// openReadOnly opens file name of a read-only feed without creating or
// changing it. A file that is missing, or shorter than hdr in a feed whose
// files hold nothing (blank: its creation was torn), is replaced by a file
// in memory holding hdr, which opening would have written; the truncation
// of a torn header is reported as checkHeader would. Otherwise the stored
// file is returned, and checkHeader reports what is wrong with it. standIn
// says whether the file is held in memory.
func (f *Feed) openReadOnly(s Storage, name string, hdr []byte, blank bool) (file File, standIn bool, err error) {
	file, err = s.Open(f.name+name, false)
	if errors.Is(err, fs.ErrNotExist) {
		if !blank {
			hdr = nil // checkHeader reports the missing file
		}
		return &memFileRO{data: hdr}, true, nil
	}
	if err != nil || hdr == nil || !blank {
		return file, false, err
	}
	size, err := file.Size()
	if err != nil || size >= int64(len(hdr)) {
		return file, false, err
	}
	file.Close()
	if size > 0 {
		f.repaired(Repair{File: f.name + name, From: size, To: 0, Reason: "torn header of a new feed"})
	}
	return &memFileRO{data: hdr}, true, nil
}

// memFileRO is a File held in memory that refuses writes with ErrReadOnly:
// what a read-only database uses in place of a file that opening would
// have created or rewritten.
type memFileRO struct{ data []byte }

var errMemFileRO = fmt.Errorf("a file a read-only open holds in memory: %w", ErrReadOnly)

func (m *memFileRO) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errStorageNegativeOffset
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFileRO) WriteAt(p []byte, off int64) (int, error) { return 0, errMemFileRO }
func (m *memFileRO) Truncate(size int64) error                { return errMemFileRO }
func (m *memFileRO) Size() (int64, error)                     { return int64(len(m.data)), nil }
func (m *memFileRO) Sync() error                              { return nil }
func (m *memFileRO) Close() error                             { return nil }
