package kappa

import (
	"errors"
	"fmt"
)

// Errors that callers must be able to tell apart. Check them with errors.Is;
// functions wrap them with context about the feed, file or view involved.
var (
	// ErrClosed is returned by operations on a closed feed, storage or
	// database, and by calls that were waiting when it was closed.
	ErrClosed = errors.New("kappa: closed")

	// ErrLocked is returned when a directory is already opened by another
	// process (or another Storage in this process).
	ErrLocked = errors.New("kappa: storage is locked by another process")

	// ErrCorrupt is returned when stored data fails a check that a torn
	// write cannot explain. The error is a *CorruptError naming the file and
	// offset.
	ErrCorrupt = errors.New("kappa: corrupt data")

	// ErrKeyMismatch is returned when a feed is opened with a key other than
	// the one stored in its place, or a database with another shared key.
	ErrKeyMismatch = errors.New("kappa: another key is stored here")

	// ErrInvalidKey is returned for a key or signature of the wrong length
	// or form.
	ErrInvalidKey = errors.New("kappa: invalid key")

	// ErrNotWritable is returned by Append on a feed without a secret key
	// and by Put on a writable feed.
	ErrNotWritable = errors.New("kappa: feed is not writable")

	// ErrOutOfRange is returned for a sequence number or range that a
	// writable feed does not hold.
	ErrOutOfRange = errors.New("kappa: sequence out of range")

	// ErrEmpty is returned by Head on a feed with no entries.
	ErrEmpty = errors.New("kappa: feed is empty")

	// ErrBlockTooLarge is returned by Append for a value over MaxBlockSize.
	ErrBlockTooLarge = errors.New("kappa: block too large")

	// ErrInvalidValue is returned by Append for a nil value, or a value that
	// does not match the database's value encoding.
	ErrInvalidValue = errors.New("kappa: invalid value")

	// ErrVerify is returned by Put when a proof or signature does not verify,
	// or contradicts what the feed already holds.
	ErrVerify = errors.New("kappa: proof does not verify")
)

// CorruptError reports damage found in a stored file: which file, at which
// byte offset, and what was wrong. It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	File   string // the file's name in its Storage
	Offset int64  // byte offset of the damaged record
	Reason string // what check failed
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("kappa: corrupt data in %s at offset %d: %s", e.File, e.Offset, e.Reason)
}

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
