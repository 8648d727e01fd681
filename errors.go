package kappa

import (
	"errors"
	"fmt"
)

// Errors that callers must be able to tell apart. Check them with errors.Is.
// Only these carry the "kappa:" prefix; the functions that return them wrap
// them with what they were doing (the feed, file or view involved), so a
// message names its origin once.
var (
	// ErrClosed is returned by operations on a closed feed, storage or
	// database, and by calls that were waiting when it was closed.
	ErrClosed = errors.New("kappa: closed")

	// ErrLocked is returned when a directory is already opened, by another
	// process or by another OpenDir in this process.
	ErrLocked = errors.New("kappa: database is locked")

	// ErrCorrupt is returned when stored data fails a check that a torn
	// write cannot explain. The error is a *CorruptError naming the file and
	// offset. Damage found when a database opens is also listed by
	// Core.Damaged.
	ErrCorrupt = errors.New("kappa: corrupt data")

	// ErrKeyMismatch is returned when a feed is opened with a key other than
	// the one stored in its place, or a database with another shared key.
	ErrKeyMismatch = errors.New("kappa: another key is stored here")

	// ErrEncodingMismatch is returned when a database is opened with a
	// value encoding other than the one it was created with.
	ErrEncodingMismatch = errors.New("kappa: the database has another value encoding")

	// ErrInvalidKey is returned for a public, secret or shared key of the
	// wrong length or form. A signature of the wrong length is
	// ErrBadSignature.
	ErrInvalidKey = errors.New("kappa: invalid key")

	// ErrReadOnly is returned by whatever would write to a database opened
	// with Options.ReadOnly, or to a storage opened with
	// DirOptions.ReadOnly: Append, Put, Writer or AddFeeds creating a feed,
	// Replicate, Use of a view that stores state or clears its index, a
	// Storage write. A read-only Open of a directory that holds no
	// database fails with it too (the error also matches fs.ErrNotExist).
	ErrReadOnly = errors.New("kappa: database is read-only")

	// ErrNotWritable is returned by Append on a feed without a secret key
	// and by Put on a writable feed.
	ErrNotWritable = errors.New("kappa: feed is not writable")

	// ErrOutOfRange is returned for a sequence number or range that a feed
	// does not hold: past its length, or a range whose start is past its
	// end.
	ErrOutOfRange = errors.New("kappa: sequence out of range")

	// ErrFull is returned by Append when the feed would exceed the largest
	// length or byte size the format can address (2^56 entries, 2^62
	// bytes), and by Put for a proof of a length past 2^56: valid in the
	// protocol (up to 2^60), but past what a feed's files can address.
	ErrFull = errors.New("kappa: feed is full")

	// ErrNotAvailable is returned by Proof when a replica holds the entries
	// but not every tree node the proof needs at the length asked for.
	ErrNotAvailable = errors.New("kappa: not available from this replica")

	// ErrEmpty is returned by Head on a feed with no entries.
	ErrEmpty = errors.New("kappa: feed is empty")

	// ErrBlockTooLarge is returned by Append for a value over MaxBlockSize
	// (or a causal context over 960 KiB), and by Put for a block over
	// MaxBlockSize + 960 KiB.
	ErrBlockTooLarge = errors.New("kappa: block too large")

	// ErrInvalidValue is returned for an argument that is not acceptable:
	// a nil value, a value that does not match the database's value
	// encoding, a bad writer name or view version.
	ErrInvalidValue = errors.New("kappa: invalid value")

	// ErrVerify is returned by Put when a proof does not verify. The error
	// also matches ErrBadProof or ErrBadSignature, saying which check
	// failed.
	ErrVerify = errors.New("kappa: does not verify")

	// ErrBadProof is returned by Put when a proof's hashes do not lead to
	// the roots it claims, or contradict what the feed holds. It matches
	// ErrVerify.
	ErrBadProof error = &verifyError{"kappa: proof does not verify"}

	// ErrBadSignature is returned by Put when a proof's signature does not
	// sign its roots under the feed's key. It matches ErrVerify.
	ErrBadSignature error = &verifyError{"kappa: signature does not verify"}

	// ErrUnauthorized ends a replication session whose peer could not
	// prove that it knows the database's shared key (or that refused this
	// side's proof).
	ErrUnauthorized = errors.New("kappa: the peer's shared key is not this database's")

	// ErrVersion ends a replication session with a peer whose protocol
	// major version differs.
	ErrVersion = errors.New("kappa: incompatible protocol version")

	// ErrProtocol ends a replication session whose peer sent something
	// malformed, oversized or out of protocol, or whose TLS stream was
	// altered (a TLS alert such as bad_record_mac, sent or received); the
	// error says what.
	ErrProtocol = errors.New("kappa: protocol error")

	// ErrTimeout ends a replication session when no byte arrived from the
	// peer, or no byte of a write to it moved, for
	// ReplicateOptions.Timeout; or whose handshake took longer.
	ErrTimeout = errors.New("kappa: peer timed out")

	// ErrPeerClosed ends a replication session whose connection ended, or
	// was reset, before the session was complete and without the peer's
	// goodbye (TLS close_notify): a peer killed, a link cut. It also ends
	// a non-live session whose peer said goodbye before it was complete.
	ErrPeerClosed = errors.New("kappa: connection closed before the session ended")

	// ErrStorage ends a replication session when this side's storage
	// failed: storing what the peer sent, or adding its feeds. The error
	// wraps the cause too, so errors.Is(err, syscall.ENOSPC) or
	// errors.Is(err, ErrCorrupt) still tells what failed.
	ErrStorage = errors.New("kappa: local storage failed")

	// ErrForked is reported for a feed whose writer's key signed two
	// histories that disagree: two valid signatures over trees that
	// contradict each other at a length both cover. The evidence is kept;
	// the feed is no longer exchanged with peers. See Core.Damaged.
	ErrForked = errors.New("kappa: feed is forked")

	// ErrNoView is returned for a view name that was never passed to Use.
	ErrNoView = errors.New("kappa: no such view")

	// ErrViewExists is returned by Use for a name already in use.
	ErrViewExists = errors.New("kappa: view already in use")
)

// verifyError is a kind of ErrVerify.
type verifyError struct{ msg string }

func (e *verifyError) Error() string        { return e.msg }
func (e *verifyError) Is(target error) bool { return target == ErrVerify }

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

// FeedError records an error from an operation on a feed: the feed, the
// operation and the cause, as *os.PathError does for a file. Its message
// reads "feed <the key's first 4 bytes, in hex>: <op>: <cause>". It
// unwraps to its cause, so errors.Is(err, ErrClosed) and errors.As(err,
// &corruptErr) see through it.
type FeedError struct {
	Key []byte // the feed's public key; not to be modified
	Op  string // the operation and its arguments, such as "get 12" or "put"
	Err error  // the cause
}

// Error returns "feed <key prefix>: <op>: <cause>".
func (e *FeedError) Error() string {
	return fmt.Sprintf("feed %x: %s: %v", e.Key[:min(len(e.Key), 4)], e.Op, e.Err)
}

// Unwrap returns the cause.
func (e *FeedError) Unwrap() error { return e.Err }
