package kappa

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// File is one named random-access file of a Storage. Safe for concurrent use.
//
// ReadAt past the end returns io.EOF (a partial read returns the bytes read
// and io.EOF), like *os.File. WriteAt past the end extends the file; the gap
// reads as zeros. Once the file has been removed through its Storage, its
// methods but Close return an error wrapping fs.ErrNotExist; once it or its Storage is
// closed, they return an error wrapping ErrClosed. Negative offsets and sizes
// are rejected with an error wrapping fs.ErrInvalid.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Truncate changes the size of the file; growing it adds zeros.
	Truncate(size int64) error
	// Size returns the current size of the file.
	Size() (int64, error)
	// Sync makes all previous writes and truncates durable.
	Sync() error
	// Close releases the file. Other Files open on the same name are not
	// affected.
	Close() error
}

// Storage opens named files. Names are slash-separated relative paths such
// as "feeds/0/tree"; a name must be clean (no "." or ".." elements, no
// leading "/", no empty elements, no backslash or NUL byte) else the error
// wraps fs.ErrInvalid. The top-level name "LOCK" is reserved, in any case.
// A name cannot be both a file and a directory of other files.
//
// Opening the same name twice gives two Files that share one underlying
// file.
type Storage interface {
	// Open opens the named file for reading and writing. If the file does
	// not exist and create is true it is created (with any parent
	// directories); if create is false the error wraps fs.ErrNotExist.
	Open(name string, create bool) (File, error)
	// Remove deletes the named file; removing a missing file is not an
	// error. Files open on the name fail with an error wrapping
	// fs.ErrNotExist afterwards. The removal is durable when Remove returns.
	Remove(name string) error
	// Close releases the storage (and its lock). Files opened from it fail
	// with ErrClosed afterwards.
	Close() error
}

// storageLockName is the file in a DirStorage's directory that holds its lock.
const storageLockName = "LOCK"

var (
	errStorageNegativeOffset = fmt.Errorf("negative offset: %w", fs.ErrInvalid)
	errStorageNegativeSize   = fmt.Errorf("negative size: %w", fs.ErrInvalid)
	errStorageTooLarge       = fmt.Errorf("file would be too large: %w", fs.ErrInvalid)
	errStorageRemoved        = fmt.Errorf("file was removed: %w", fs.ErrNotExist)
	errStorageUnlinked       = fmt.Errorf("file is no longer in the storage's directory (was the directory deleted?): %w", fs.ErrNotExist)
	errStorageIsDir          = errors.New("is a directory")
	errStorageNotDir         = errors.New("a parent is a file, not a directory")
)

// checkStorageName reports whether name is a valid Storage file name.
func checkStorageName(name string) error {
	if name == "." || !fs.ValidPath(name) || strings.ContainsAny(name, "\\\x00") {
		return fmt.Errorf("invalid file name %q: %w", name, fs.ErrInvalid)
	}
	// Case-insensitively, as some file systems are.
	if first, _, _ := strings.Cut(name, "/"); strings.EqualFold(first, storageLockName) {
		return fmt.Errorf("file name %q is reserved: %w", name, fs.ErrInvalid)
	}
	return nil
}

// unwrapPathError drops the *fs.PathError around err: the messages built here
// name the file already.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
