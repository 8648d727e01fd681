package kappa

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// File is one named random-access file of a Storage. Safe for concurrent use.
//
// ReadAt past the end returns io.EOF (a partial read returns the bytes read
// and io.EOF), like *os.File. WriteAt past the end extends the file; the gap
// reads as zeros. Once the file has been removed through its Storage, its
// methods return an error wrapping fs.ErrNotExist; once it or its Storage is
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

// DefaultMaxOpenFiles is the number of file descriptors a DirStorage keeps
// open at most when DirOptions.MaxOpenFiles is zero.
const DefaultMaxOpenFiles = 256

// DirOptions configures OpenDir. A nil *DirOptions means the defaults.
type DirOptions struct {
	// MaxOpenFiles bounds the number of file descriptors held open at once
	// for the Storage's files (the lock file is not counted). Files beyond
	// it are reopened on use. Zero means DefaultMaxOpenFiles; negative is
	// an error. The bound can be passed briefly while more files than it
	// are in the middle of a read, write or sync.
	MaxOpenFiles int

	// NoSync stops the storage from fsyncing on its own: a file with
	// unsynced writes is closed without fsync when it leaves the handle
	// cache or the storage closes. Sync still fsyncs. Use it with feeds
	// opened with NoSync, which never call Sync: then nothing fsyncs.
	NoSync bool
}

// DirStorage is a Storage of real files under one directory, which it holds
// locked while open. Any number of Files can be open at once; it keeps at
// most DirOptions.MaxOpenFiles file descriptors, closing the least recently
// used ones (after syncing them if they have unsynced writes, so that no
// write error is lost: it is reported by the next Sync or Close of that
// file).
//
// A created file and any directories created for it become durable on the
// file's first Sync, so callers that never sync pay no directory fsyncs.
type DirStorage struct {
	dir    string // absolute
	max    int
	noSync bool
	lock   *dirLock

	mu     sync.Mutex
	cond   sync.Cond // on mu; signalled when a node's flushing drops
	closed bool
	nodes  map[string]*dirNode // open names
	// head is the most recently used cached handle, tail the least.
	head, tail *dirHandle
	cached     int // handles in the list
	flushing   int // sum of nodes' flushing
	// dirSync holds, per created file, the directories to fsync on its
	// first Sync.
	dirSync map[string]*dirPendingSync
	// rootSync lists directories to fsync on the first Sync of any file:
	// the parents of the directories OpenDir created.
	rootSync []string
}

var _ Storage = (*DirStorage)(nil)

// dirPendingSync lists directories whose entries must be made durable.
type dirPendingSync struct{ dirs []string }

// dirNode is the shared state of one open name of a DirStorage.
type dirNode struct {
	name string
	path string

	// Guarded by DirStorage.mu.
	h         *dirHandle // cached descriptor, or nil
	openCount int        // open Files on this node
	removed   bool
	flushing  int   // evicted handles still being synced
	syncErr   error // error from syncing an evicted handle, not reported yet

	// dirty is set after each write or truncate and cleared by Sync and
	// eviction.
	dirty atomic.Bool
}

// dirHandle is one cached file descriptor. It holds one reference for the
// cache while it is in the list, and one for each operation using it; the
// last reference to go closes it.
type dirHandle struct {
	f    *os.File
	n    *dirNode
	refs atomic.Int32
	// needSync is set (under mu, before the cache's reference is dropped)
	// when the handle left the cache with unsynced writes.
	needSync   bool
	prev, next *dirHandle // guarded by mu
}

// OpenDir opens a DirStorage on dir, creating the directory if it is
// missing, and locks it: a second OpenDir on the same directory, from this
// process or another, fails with an error wrapping ErrLocked until Close.
// opts may be nil.
//
// On Unix systems other than Solaris and AIX the lock is a flock(2) on the
// file LOCK in dir, which the kernel releases when the process ends.
// Elsewhere it is the LOCK file's existence: if a process dies with the
// storage open, LOCK must be removed by hand.
func OpenDir(dir string, opts *DirOptions) (*DirStorage, error) {
	max, noSync := DefaultMaxOpenFiles, false
	if opts != nil {
		noSync = opts.NoSync
		if opts.MaxOpenFiles < 0 {
			return nil, fmt.Errorf("storage %s: MaxOpenFiles %d is negative: %w", dir, opts.MaxOpenFiles, fs.ErrInvalid)
		}
		if opts.MaxOpenFiles > 0 {
			max = opts.MaxOpenFiles
		}
	}
	if dir == "" {
		return nil, fmt.Errorf("storage: empty directory name: %w", fs.ErrInvalid)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage %s: %w", dir, err)
	}
	// Find the directories MkdirAll will create: their parents' entries
	// must be fsynced before any file in them can be durable.
	var rootSync []string
	for p := abs; ; {
		if _, err := os.Stat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		rootSync = append(rootSync, parent)
		p = parent
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("storage %s: create directory: %w", abs, unwrapPathError(err))
	}
	lock, err := lockDir(abs)
	if err != nil {
		return nil, fmt.Errorf("storage %s: %w", abs, unwrapPathError(err))
	}
	s := &DirStorage{
		dir:      abs,
		max:      max,
		noSync:   noSync,
		lock:     lock,
		nodes:    make(map[string]*dirNode),
		dirSync:  make(map[string]*dirPendingSync),
		rootSync: rootSync,
	}
	s.cond.L = &s.mu
	return s, nil
}

// Dir returns the absolute path of the storage's directory.
func (s *DirStorage) Dir() string { return s.dir }

// Open opens the named file, creating it and its parent directories if it
// does not exist and create is true. See Storage.
func (s *DirStorage) Open(name string, create bool) (File, error) {
	if err := checkStorageName(name); err != nil {
		return nil, fmt.Errorf("storage %s: open: %w", s.dir, err)
	}
	local, err := filepath.Localize(name)
	if err != nil {
		return nil, fmt.Errorf("storage %s: open %s: %w: %w", s.dir, name, err, fs.ErrInvalid)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("storage %s: open %s: %w", s.dir, name, ErrClosed)
	}
	if n := s.nodes[name]; n != nil {
		n.openCount++
		s.mu.Unlock()
		return &dirFile{s: s, n: n}, nil
	}
	// Opening and creating are rare next to reads and writes, so they
	// run under the lock, which keeps them ordered with Remove.
	path := filepath.Join(s.dir, local)
	f, dirs, err := s.openPath(path, local, create)
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("storage %s: open %s: %w", s.dir, name, unwrapPathError(err))
	}
	if dirs != nil {
		s.dirSync[name] = &dirPendingSync{dirs: dirs}
	}
	n := &dirNode{name: name, path: path, openCount: 1}
	s.nodes[name] = n
	h := &dirHandle{f: f, n: n}
	h.refs.Store(1)
	n.h = h
	s.pushFront(h)
	victims := s.evictLocked(nil)
	s.mu.Unlock()
	s.finishAll(victims)
	return &dirFile{s: s, n: n}, nil
}

// openPath opens path read-write. If it is missing and create is set, it
// creates it and any missing parent directories, and returns the
// directories whose entries changed (deepest first).
func (s *DirStorage) openPath(path, local string, create bool) (*os.File, []string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err == nil || !create || !errors.Is(err, fs.ErrNotExist) {
		return f, nil, err
	}
	var dirs []string
	for try := 0; ; try++ {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			// The file's directory, then those holding the
			// directories created, deepest first.
			dirs = append(dirs, filepath.Dir(path))
			slices.Reverse(dirs)
			return f, dirs, nil
		}
		if errors.Is(err, fs.ErrExist) {
			// Created by someone else since the first try.
			f, err = os.OpenFile(path, os.O_RDWR, 0)
			return f, nil, err
		}
		if try > 0 || !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		// Create the missing parents, remembering which we made.
		elems := strings.Split(filepath.Dir(local), string(filepath.Separator))
		p := s.dir
		for _, e := range elems {
			if e == "." || e == "" {
				continue
			}
			parent := p
			p = filepath.Join(p, e)
			if err := os.Mkdir(p, 0o755); err == nil {
				dirs = append(dirs, parent)
			} else if !errors.Is(err, fs.ErrExist) {
				return nil, nil, err
			}
		}
	}
}

// Remove deletes the named file and makes the removal durable. Removing a
// missing file is not an error; removing a directory is.
func (s *DirStorage) Remove(name string) error {
	if err := checkStorageName(name); err != nil {
		return fmt.Errorf("storage %s: remove: %w", s.dir, err)
	}
	local, err := filepath.Localize(name)
	if err != nil {
		return fmt.Errorf("storage %s: remove %s: %w: %w", s.dir, name, err, fs.ErrInvalid)
	}
	path := filepath.Join(s.dir, local)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("storage %s: remove %s: %w", s.dir, name, ErrClosed)
	}
	fi, err := os.Lstat(path)
	if err == nil && fi.IsDir() {
		err = errStorageIsDir
	} else if err == nil {
		err = os.Remove(path)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.mu.Unlock()
		return fmt.Errorf("storage %s: remove %s: %w", s.dir, name, unwrapPathError(err))
	}
	removed := err == nil
	var victims []*dirHandle
	if n := s.nodes[name]; n != nil {
		n.removed = true
		delete(s.nodes, name)
		if n.h != nil {
			n.dirty.Store(false)
			victims = s.detachLocked(n.h, victims)
		}
	}
	delete(s.dirSync, name)
	s.mu.Unlock()
	s.finishAll(victims)
	if removed {
		if err := syncStorageDir(filepath.Dir(path)); err != nil {
			return fmt.Errorf("storage %s: remove %s: sync directory: %w", s.dir, name, unwrapPathError(err))
		}
	}
	return nil
}

// Close closes every cached file descriptor, syncing those with unsynced
// writes, and releases the lock. It returns any write error not reported
// yet. Files opened from the storage fail with ErrClosed afterwards.
func (s *DirStorage) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("storage %s: close: %w", s.dir, ErrClosed)
	}
	s.closed = true
	var victims []*dirHandle
	for s.tail != nil {
		victims = s.detachLocked(s.tail, victims)
	}
	s.mu.Unlock()
	s.finishAll(victims) // errors are kept on the nodes
	var errs []error
	s.mu.Lock()
	for s.flushing > 0 {
		s.cond.Wait()
	}
	for _, n := range s.nodes {
		if n.syncErr != nil {
			errs = append(errs, fmt.Errorf("storage %s: close %s: %w", s.dir, n.name, unwrapPathError(n.syncErr)))
			n.syncErr = nil
		}
	}
	s.mu.Unlock()
	if err := s.lock.unlock(); err != nil {
		errs = append(errs, fmt.Errorf("storage %s: unlock: %w", s.dir, unwrapPathError(err)))
	}
	return errors.Join(errs...)
}

// pushFront adds h to the front of the handle list. Call with mu held.
func (s *DirStorage) pushFront(h *dirHandle) {
	h.prev = nil
	h.next = s.head
	if s.head != nil {
		s.head.prev = h
	} else {
		s.tail = h
	}
	s.head = h
	s.cached++
}

// unlink removes h from the handle list. Call with mu held.
func (s *DirStorage) unlink(h *dirHandle) {
	if h.prev != nil {
		h.prev.next = h.next
	} else {
		s.head = h.next
	}
	if h.next != nil {
		h.next.prev = h.prev
	} else {
		s.tail = h.prev
	}
	h.prev, h.next = nil, nil
	s.cached--
}

// detachLocked takes h out of the cache and drops the cache's reference.
// If that was the last reference h is appended to victims, for the caller
// to finish once mu is released. Call with mu held.
func (s *DirStorage) detachLocked(h *dirHandle, victims []*dirHandle) []*dirHandle {
	s.unlink(h)
	n := h.n
	n.h = nil
	if !s.noSync && n.dirty.Swap(false) && !n.removed {
		h.needSync = true
		n.flushing++
		s.flushing++
	}
	if h.refs.Add(-1) == 0 {
		victims = append(victims, h)
	}
	return victims
}

// evictLocked detaches least recently used handles that no operation is
// using until at most max are cached. Call with mu held.
func (s *DirStorage) evictLocked(victims []*dirHandle) []*dirHandle {
	for h := s.tail; h != nil && s.cached > s.max; {
		prev := h.prev
		// Only operations holding mu take references, so a count of
		// one (the cache's) cannot grow while we look.
		if h.refs.Load() == 1 {
			victims = s.detachLocked(h, victims)
		}
		h = prev
	}
	return victims
}

// finishAll finishes each handle, whose errors are kept on their nodes.
func (s *DirStorage) finishAll(victims []*dirHandle) {
	for _, h := range victims {
		s.finish(h)
	}
}

// finish syncs (if it has unsynced writes) and closes a handle that has no
// references left. An error is recorded on the node, for its next Sync or
// Close, and returned.
func (s *DirStorage) finish(h *dirHandle) error {
	var err error
	if h.needSync {
		err = h.f.Sync()
	}
	if cerr := h.f.Close(); err == nil {
		err = cerr
	}
	if !h.needSync && err == nil {
		return nil
	}
	s.mu.Lock()
	n := h.n
	if h.needSync {
		n.flushing--
		s.flushing--
		s.cond.Broadcast()
	}
	if err != nil && !n.removed && n.syncErr == nil {
		n.syncErr = err
	}
	s.mu.Unlock()
	return err
}

// release drops an operation's reference to h.
func (s *DirStorage) release(h *dirHandle) {
	if h.refs.Add(-1) == 0 {
		s.finish(h)
	}
}

// dirFile is a File of a DirStorage: a name whose descriptor is opened on
// demand.
type dirFile struct {
	s      *DirStorage
	n      *dirNode
	closed bool // guarded by s.mu
}

// usableLocked returns why f cannot be used, or nil. Call with s.mu held.
func (f *dirFile) usableLocked() error {
	switch {
	case f.s.closed || f.closed:
		return ErrClosed
	case f.n.removed:
		return errStorageRemoved
	}
	return nil
}

func (f *dirFile) errorf(op string, err error) error {
	return fmt.Errorf("storage %s: %s %s: %w", f.s.dir, op, f.n.name, unwrapPathError(err))
}

// acquire returns f's descriptor with a reference taken for the caller,
// opening it if it is not cached.
func (f *dirFile) acquire() (*dirHandle, error) {
	s := f.s
	s.mu.Lock()
	if err := f.usableLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if h := f.n.h; h != nil {
		h.refs.Add(1)
		if s.head != h {
			s.unlink(h)
			s.pushFront(h)
		}
		s.mu.Unlock()
		return h, nil
	}
	s.mu.Unlock()
	return f.acquireSlow()
}

// acquireSlow reopens f's descriptor, outside the lock, and caches it.
func (f *dirFile) acquireSlow() (*dirHandle, error) {
	s := f.s
	fd, err := os.OpenFile(f.n.path, os.O_RDWR, 0)
	s.mu.Lock()
	if uerr := f.usableLocked(); uerr != nil || err != nil {
		s.mu.Unlock()
		if fd != nil {
			fd.Close()
		}
		if uerr != nil {
			return nil, uerr
		}
		return nil, err
	}
	if h := f.n.h; h != nil {
		// Another operation reopened it meanwhile.
		h.refs.Add(1)
		s.mu.Unlock()
		fd.Close()
		return h, nil
	}
	h := &dirHandle{f: fd, n: f.n}
	h.refs.Store(2) // the cache's and the caller's
	f.n.h = h
	s.pushFront(h)
	victims := s.evictLocked(nil)
	s.mu.Unlock()
	s.finishAll(victims)
	return h, nil
}

// markDirty records that f has writes not yet synced.
func (f *dirFile) markDirty() {
	if !f.n.dirty.Load() {
		f.n.dirty.Store(true)
	}
}

// ReadAt reads len(p) bytes at off. See File.
func (f *dirFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.errorf("read", errStorageNegativeOffset)
	}
	h, err := f.acquire()
	if err != nil {
		return 0, f.errorf("read", err)
	}
	n, err := h.f.ReadAt(p, off)
	f.s.release(h)
	if err != nil && err != io.EOF {
		err = f.errorf("read", err)
	}
	return n, err
}

// WriteAt writes p at off, extending the file if needed. See File.
func (f *dirFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.errorf("write", errStorageNegativeOffset)
	}
	h, err := f.acquire()
	if err != nil {
		return 0, f.errorf("write", err)
	}
	n, err := h.f.WriteAt(p, off)
	f.markDirty()
	f.s.release(h)
	if err != nil {
		err = f.errorf("write", err)
	}
	return n, err
}

// Truncate changes the file's size. See File.
func (f *dirFile) Truncate(size int64) error {
	if size < 0 {
		return f.errorf("truncate", errStorageNegativeSize)
	}
	h, err := f.acquire()
	if err != nil {
		return f.errorf("truncate", err)
	}
	err = h.f.Truncate(size)
	f.markDirty()
	f.s.release(h)
	if err != nil {
		return f.errorf("truncate", err)
	}
	return nil
}

// Size returns the file's size.
func (f *dirFile) Size() (int64, error) {
	h, err := f.acquire()
	if err != nil {
		return 0, f.errorf("size", err)
	}
	fi, err := h.f.Stat()
	f.s.release(h)
	if err != nil {
		return 0, f.errorf("size", err)
	}
	return fi.Size(), nil
}

// Sync makes the file's writes durable, and on the first Sync after the
// file was created, its directory entry (and those of any directories
// created for it).
func (f *dirFile) Sync() error {
	s := f.s
	s.mu.Lock()
	for {
		if err := f.usableLocked(); err != nil {
			s.mu.Unlock()
			return f.errorf("sync", err)
		}
		if f.n.flushing == 0 {
			break
		}
		// An evicted descriptor is being synced; its result is ours.
		s.cond.Wait()
	}
	if err := f.n.syncErr; err != nil {
		f.n.syncErr = nil
		s.mu.Unlock()
		return f.errorf("sync", err)
	}
	pending := s.dirSync[f.n.name]
	root := s.rootSync
	s.mu.Unlock()

	h, err := f.acquire()
	if err != nil {
		return f.errorf("sync", err)
	}
	f.n.dirty.Store(false)
	err = h.f.Sync()
	f.s.release(h)
	if err != nil {
		f.markDirty()
		return f.errorf("sync", err)
	}
	if pending == nil && root == nil {
		return nil
	}
	var dirs []string
	if pending != nil {
		dirs = pending.dirs
	}
	for _, d := range slices.Concat(dirs, root) {
		if err := syncStorageDir(d); err != nil {
			return f.errorf("sync directory", err)
		}
	}
	s.mu.Lock()
	if pending != nil && s.dirSync[f.n.name] == pending {
		delete(s.dirSync, f.n.name)
	}
	if root != nil {
		s.rootSync = nil
	}
	s.mu.Unlock()
	return nil
}

// Close releases the file; when it is the last File open on its name, the
// descriptor is closed (synced first if it has unsynced writes) and any
// write error not yet reported is returned.
func (f *dirFile) Close() error {
	s := f.s
	s.mu.Lock()
	if err := f.usableLocked(); errors.Is(err, ErrClosed) {
		s.mu.Unlock()
		return f.errorf("close", err)
	}
	f.closed = true
	n := f.n
	n.openCount--
	if n.openCount > 0 {
		s.mu.Unlock()
		return nil
	}
	if s.nodes[n.name] == n {
		delete(s.nodes, n.name)
	}
	var victims []*dirHandle
	if n.h != nil {
		victims = s.detachLocked(n.h, nil)
	}
	s.mu.Unlock()
	s.finishAll(victims)
	s.mu.Lock()
	for n.flushing > 0 {
		s.cond.Wait()
	}
	err := n.syncErr
	n.syncErr = nil
	s.mu.Unlock()
	if err != nil {
		return f.errorf("close", err)
	}
	return nil
}

// syncStorageDir fsyncs a directory, where the system supports it.
func syncStorageDir(dir string) error {
	if !canSyncDir {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// MemStorage is a Storage that keeps its files in memory, for tests and
// for databases that need not outlive the process. The zero value is not
// ready to use; call NewMemStorage.
//
// It models durability so crash tests can run in-process: each file has a
// durable state and a log of operations since its last Sync (its creation
// too). Reads see everything; Sync makes the log durable; CrashClone shows
// what a power loss could leave. Remove is durable at once. Fault
// injection (FailNextWrite, FailNextSync) makes the next operation fail.
//
// Unsynced writes cost little extra memory: the log keeps the bytes they
// overwrote, not the bytes written, and appends merge. When a file's log
// outgrows the file (by over 1 MiB), as with a database that never syncs,
// the log is collapsed into one step from the durable content to the
// current one, so memory stays within about twice the data; a crash then
// leaves that file either durable or current.
type MemStorage struct {
	mu        sync.Mutex
	closed    bool
	files     map[string]*memNode
	dirs      map[string]int // number of files under each directory name
	failWrite error
	failSync  error
}

var _ Storage = (*MemStorage)(nil)

// memNode is one file of a MemStorage.
type memNode struct {
	name    string
	data    []byte  // current content
	pending []memOp // operations since the last Sync, oldest first
	logSize int     // memory held by pending operations, but create and replace
	removed bool
}

type memOpKind uint8

const (
	memCreate memOpKind = iota
	memWrite
	memTruncate
	memReplace // the whole content, from old; cannot be torn
)

const (
	// memOpSize approximates the memory of a memOp, for logSize.
	memOpSize = 64
	// memLogSlack is how much a file's log may outgrow the file before
	// it is collapsed.
	memLogSlack = 1 << 20
)

// memOp is one unsynced operation, with what is needed to undo it: the
// state before it is derived from the state after it.
type memOp struct {
	kind    memOpKind
	off     int    // write: offset; truncate: new size
	n       int    // write: length
	oldSize int    // size before the operation
	old     []byte // bytes it overwrote (write), cut off (truncate), or all (replace)
}

// logLocked appends op, already applied to n.data, to n's log, collapsing
// the log if it has grown too large. Call with MemStorage.mu held.
func (n *memNode) logLocked(op memOp) {
	n.pending = append(n.pending, op)
	n.logSize += memOpSize + len(op.old)
	if n.logSize <= len(n.data)+memLogSlack {
		return
	}
	start := 0
	if n.pending[0].kind == memCreate {
		start = 1
	}
	if n.pending[start].kind != memReplace {
		durable := slices.Clone(n.data)
		for i := len(n.pending) - 1; i >= start; i-- {
			durable = memUndo(durable, n.pending[i])
		}
		n.pending[start] = memOp{kind: memReplace, oldSize: len(durable), old: durable}
	}
	clear(n.pending[start+1:]) // let the collapsed operations' bytes go
	n.pending = n.pending[:start+1]
	n.logSize = 0
}

// NewMemStorage returns an empty MemStorage.
func NewMemStorage() *MemStorage {
	return &MemStorage{files: make(map[string]*memNode), dirs: make(map[string]int)}
}

// Open opens the named file, creating it if it does not exist and create
// is true. See Storage.
func (m *MemStorage) Open(name string, create bool) (File, error) {
	if err := checkStorageName(name); err != nil {
		return nil, fmt.Errorf("memstorage: open: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("memstorage: open %s: %w", name, ErrClosed)
	}
	if n := m.files[name]; n != nil {
		return &memFile{m: m, n: n}, nil
	}
	if err := m.creatableLocked(name); err != nil {
		return nil, fmt.Errorf("memstorage: open %s: %w", name, err)
	}
	if !create {
		return nil, fmt.Errorf("memstorage: open %s: %w", name, fs.ErrNotExist)
	}
	n := &memNode{name: name, pending: []memOp{{kind: memCreate}}}
	m.addLocked(n)
	return &memFile{m: m, n: n}, nil
}

// creatableLocked reports why a file named name cannot be created: a
// directory of that name exists, or a parent name is a file.
func (m *MemStorage) creatableLocked(name string) error {
	if m.dirs[name] > 0 {
		return errStorageIsDir
	}
	for i := range len(name) {
		if name[i] == '/' && m.files[name[:i]] != nil {
			return errStorageNotDir
		}
	}
	return nil
}

// addLocked adds a file node. Call with mu held.
func (m *MemStorage) addLocked(n *memNode) {
	if m.files == nil {
		m.files = make(map[string]*memNode)
		m.dirs = make(map[string]int)
	}
	m.files[n.name] = n
	for i := range len(n.name) {
		if n.name[i] == '/' {
			m.dirs[n.name[:i]]++
		}
	}
}

// Remove deletes the named file, durably. Removing a missing file is not
// an error; removing a directory is.
func (m *MemStorage) Remove(name string) error {
	if err := checkStorageName(name); err != nil {
		return fmt.Errorf("memstorage: remove: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("memstorage: remove %s: %w", name, ErrClosed)
	}
	n := m.files[name]
	if n == nil {
		if m.dirs[name] > 0 {
			return fmt.Errorf("memstorage: remove %s: %w", name, errStorageIsDir)
		}
		return nil
	}
	n.removed = true
	delete(m.files, name)
	for i := range len(name) {
		if name[i] == '/' {
			if m.dirs[name[:i]]--; m.dirs[name[:i]] == 0 {
				delete(m.dirs, name[:i])
			}
		}
	}
	return nil
}

// Close closes the storage: its Files fail with ErrClosed afterwards. The
// content stays available to CrashClone, Names and FileBytes.
func (m *MemStorage) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("memstorage: close: %w", ErrClosed)
	}
	m.closed = true
	return nil
}

// CrashClone returns a new, independent, open MemStorage holding what the
// disk could hold after a power loss now. Each file gets its durable state
// and, if r is not nil, a random prefix of its unsynced operations applied
// in order, the last of which, if a write, may be torn (only a prefix of
// its bytes lands). With r nil no unsynced operation survives, and a file
// never synced since it was created is absent. m is not changed and its
// Files keep working on m only. CrashClone works on a closed MemStorage
// too.
func (m *MemStorage) CrashClone(r *rand.Rand) *MemStorage {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewMemStorage()
	for _, n := range m.files {
		ops := n.pending
		k := 0 // operations that survive
		if r != nil {
			k = r.IntN(len(ops) + 1)
		}
		if k == 0 && len(ops) > 0 && ops[0].kind == memCreate {
			continue
		}
		data := slices.Clone(n.data)
		for i := len(ops) - 1; i >= k; i-- {
			data = memUndo(data, ops[i])
		}
		if r != nil && k > 0 && ops[k-1].kind == memWrite && r.IntN(2) == 0 {
			op := ops[k-1]
			written := slices.Clone(data[op.off : op.off+op.n])
			data = memUndo(data, op)
			data = memWriteAt(data, written[:r.IntN(op.n)], op.off)
		}
		c.addLocked(&memNode{name: n.name, data: data})
	}
	return c
}

// memUndo returns data, the content right after op, as it was before op.
func memUndo(data []byte, op memOp) []byte {
	switch op.kind {
	case memWrite:
		copy(data[op.off:], op.old)
		data = memResize(data, op.oldSize)
	case memTruncate:
		data = memResize(data, op.oldSize)
		if op.old != nil { // it shrank the file
			copy(data[op.off:], op.old)
		}
	case memReplace:
		data = append(data[:0], op.old...)
	}
	return data
}

// memResize returns data with length n; bytes added are zero.
func memResize(data []byte, n int) []byte {
	if n <= len(data) {
		return data[:n]
	}
	return append(data, make([]byte, n-len(data))...)
}

// memWriteAt returns data with p written at off, extended if needed.
func memWriteAt(data, p []byte, off int) []byte {
	if len(p) == 0 {
		return data
	}
	if end := off + len(p); end > len(data) {
		data = memResize(data, end)
	}
	copy(data[off:], p)
	return data
}

// FailNextWrite makes the next WriteAt, on any file, return an error
// wrapping err and change nothing. A nil err cancels it.
func (m *MemStorage) FailNextWrite(err error) {
	m.mu.Lock()
	m.failWrite = err
	m.mu.Unlock()
}

// FailNextSync makes the next Sync, on any file, return an error wrapping
// err and make nothing durable. A nil err cancels it.
func (m *MemStorage) FailNextSync(err error) {
	m.mu.Lock()
	m.failSync = err
	m.mu.Unlock()
}

// Names returns the sorted names of the files that exist.
func (m *MemStorage) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.files))
	for name := range m.files {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// FileBytes returns a copy of the named file's current content (synced or
// not), and whether the file exists.
func (m *MemStorage) FileBytes(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.files[name]
	if n == nil {
		return nil, false
	}
	b := make([]byte, len(n.data))
	copy(b, n.data)
	return b, true
}

// SetFileBytes replaces the named file's content, current and durable, with
// a copy of b, creating the file if needed; open Files see the new content.
// It is for tests that corrupt files. It does nothing if name is invalid or
// conflicts with a directory.
func (m *MemStorage) SetFileBytes(name string, b []byte) {
	if checkStorageName(name) != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.files[name]
	if n == nil {
		if m.creatableLocked(name) != nil {
			return
		}
		n = &memNode{name: name}
		m.addLocked(n)
	}
	n.data = append([]byte{}, b...)
	n.pending = nil
	n.logSize = 0
}

// memFile is a File of a MemStorage.
type memFile struct {
	m      *MemStorage
	n      *memNode
	closed bool // guarded by m.mu
}

// usableLocked returns why f cannot be used, or nil. Call with m.mu held.
func (f *memFile) usableLocked() error {
	switch {
	case f.m.closed || f.closed:
		return ErrClosed
	case f.n.removed:
		return errStorageRemoved
	}
	return nil
}

func (f *memFile) errorf(op string, err error) error {
	return fmt.Errorf("memstorage: %s %s: %w", op, f.n.name, err)
}

// ReadAt reads len(p) bytes at off. See File.
func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.errorf("read", errStorageNegativeOffset)
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return 0, f.errorf("read", err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off, extending the file if needed. See File.
func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.errorf("write", errStorageNegativeOffset)
	}
	if off > int64(math.MaxInt-len(p)) {
		return 0, f.errorf("write", errStorageTooLarge)
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return 0, f.errorf("write", err)
	}
	if err := f.m.failWrite; err != nil {
		f.m.failWrite = nil
		return 0, f.errorf("write", err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := f.n
	o, size := int(off), len(n.data)
	op := memOp{kind: memWrite, off: o, n: len(p), oldSize: size}
	if o < size {
		op.old = slices.Clone(n.data[o:min(o+len(p), size)])
	}
	n.data = memWriteAt(n.data, p, o)
	// An append right after an append that ended the file merges with
	// it: a crash can leave any prefix of the two either way.
	if last := len(n.pending) - 1; last >= 0 && op.old == nil && o == size &&
		n.pending[last].kind == memWrite && n.pending[last].off+n.pending[last].n == o {
		n.pending[last].n += len(p)
	} else {
		n.logLocked(op)
	}
	return len(p), nil
}

// Truncate changes the file's size. See File.
func (f *memFile) Truncate(size int64) error {
	if size < 0 {
		return f.errorf("truncate", errStorageNegativeSize)
	}
	if size > math.MaxInt {
		return f.errorf("truncate", errStorageTooLarge)
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return f.errorf("truncate", err)
	}
	n := f.n
	s, old := int(size), len(n.data)
	if s == old {
		return nil
	}
	op := memOp{kind: memTruncate, off: s, oldSize: old}
	if s < old {
		op.old = slices.Clone(n.data[s:])
	}
	n.data = memResize(n.data, s)
	n.logLocked(op)
	return nil
}

// Size returns the file's current size.
func (f *memFile) Size() (int64, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return 0, f.errorf("size", err)
	}
	return int64(len(f.n.data)), nil
}

// Sync makes the file's content durable, unless a failure was injected
// with FailNextSync.
func (f *memFile) Sync() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return f.errorf("sync", err)
	}
	if err := f.m.failSync; err != nil {
		f.m.failSync = nil
		return f.errorf("sync", err)
	}
	f.n.pending = nil
	f.n.logSize = 0
	return nil
}

// Close releases the file.
func (f *memFile) Close() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if f.m.closed || f.closed {
		return f.errorf("close", ErrClosed)
	}
	f.closed = true
	return nil
}
