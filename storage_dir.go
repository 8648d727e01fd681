package kappa

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// DefaultMaxOpenFiles is the number of file descriptors a DirStorage keeps
// open at most when DirOptions.MaxOpenFiles is zero.
const DefaultMaxOpenFiles = 256

// DirOptions configures OpenDir. A nil *DirOptions means the defaults.
type DirOptions struct {
	// MaxOpenFiles bounds the number of file descriptors held open at once
	// for the Storage's files. Not counted: the lock file and, on Linux,
	// the directory and up to 16 of the directories directly in it, which
	// files are opened relative to. Files beyond
	// it are reopened on use. Zero means DefaultMaxOpenFiles; negative is
	// an error. The bound can be passed briefly while more files than it
	// are in the middle of a read, write or sync.
	MaxOpenFiles int

	// NoSync stops the storage from fsyncing on its own: a file with
	// unsynced writes is closed without fsync when it leaves the handle
	// cache or the storage closes. Sync still fsyncs. Use it with feeds
	// opened with NoSync, which never call Sync: then nothing fsyncs, and
	// nothing notices files deleted from under the storage (a file's Sync
	// fails once it is no longer in the directory).
	NoSync bool

	// ReadOnly opens an existing directory without changing it: it is not
	// created, files are opened read-only and none is created, and the
	// lock is shared (see OpenDir). Creating a file, WriteAt, Truncate and
	// Remove fail with ErrReadOnly.
	ReadOnly bool
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
//
// Files are created with mode 0600 and directories 0700 (less the umask):
// a database holds secret keys. OpenDir takes group and other permissions
// away from an existing directory, and from its files kappa and
// feeds/*/key; a Core opened on the storage reports each change as a
// Repair.
type DirStorage struct {
	dir    string // absolute
	max    int
	noSync bool
	lock   *dirLock
	// readOnly refuses every change: see DirOptions.ReadOnly.
	readOnly bool

	// root is the directory, which files are opened relative to. rootMu
	// keeps Close from closing it under an open.
	root       rootDir
	rootMu     sync.RWMutex
	rootClosed bool // under rootMu

	mu     sync.Mutex
	cond   sync.Cond // on mu; signalled when a node's flushing drops
	closed bool
	nodes  map[string]*dirNode // open names
	// head is the most recently used cached handle, tail the least.
	head, tail *dirHandle
	cached     int    // handles in the list
	flushing   int    // sum of nodes' flushing
	removes    uint64 // Remove calls so far: an Open outside mu checks it
	// dirSync holds, per created file, the directories to fsync on its
	// first Sync.
	dirSync map[string]*dirPendingSync
	// rootSync lists directories to fsync on the first Sync of any file:
	// the parents of the directories OpenDir created.
	rootSync []string

	// repairs are the changes OpenDir made (see tightenPerms), until a
	// Core opened on the storage reports them. Guarded by mu.
	repairs []Repair

	// trace, if set (by tests, before the storage is used), sees each
	// file created, directory made, write, truncate, file fsync and
	// directory fsync, as it happens. See dirEvent.
	trace func(dirEvent)
}

// dirEvent is one operation of a DirStorage seen by its trace: Op is
// "create", "mkdir", "write", "truncate", "sync" (a file's fsync),
// "datasync" (its fdatasync) or "syncdir" (a directory's fsync); Name is the file's name in the storage,
// or the directory's absolute path.
type dirEvent struct {
	Op, Name string
}

// fsync fsyncs an open file of the storage (fdatasyncs it, with data): the
// one place a file's data is made durable, so that a trace sees every
// fsync ("sync") and fdatasync ("datasync").
func (s *DirStorage) fsync(f *osFile, name string, data bool) error {
	if data {
		if s.trace != nil {
			s.trace(dirEvent{"datasync", name})
		}
		return f.Datasync()
	}
	if s.trace != nil {
		s.trace(dirEvent{"sync", name})
	}
	return f.Sync()
}

// fsyncDir fsyncs a directory; see syncStorageDir.
func (s *DirStorage) fsyncDir(dir string) error {
	if s.trace != nil {
		s.trace(dirEvent{"syncdir", dir})
	}
	return syncStorageDir(dir)
}

// traced passes an event to the storage's trace, if set.
func (s *DirStorage) traced(op, name string) {
	if s.trace != nil {
		s.trace(dirEvent{op, name})
	}
}

var _ Storage = (*DirStorage)(nil)

// dirPendingSync lists directories whose entries must be made durable.
type dirPendingSync struct{ dirs []string }

// dirNode is the shared state of one open name of a DirStorage.
type dirNode struct {
	name string // its path is built again on each reopen: nodes are many

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
	f    osFile
	n    *dirNode
	refs atomic.Int32
	// needSync is set (under mu, before the cache's reference is dropped)
	// when the handle left the cache with unsynced writes.
	needSync   bool
	prev, next *dirHandle // guarded by mu
}

// heldDirs are the directories that this process's DirStorages hold locked,
// so that OpenDir can tell a lock held here from one held by another
// process: the lock itself (see lockDir) cannot. Directories are compared
// with os.SameFile, so another path to the same directory is found too.
var heldDirs = struct {
	sync.Mutex
	m map[*DirStorage]heldDir
}{m: make(map[*DirStorage]heldDir)}

// heldDir is a directory that a DirStorage holds, and whether it holds it
// read-only: read-only storages share a directory.
type heldDir struct {
	fi       os.FileInfo
	readOnly bool
}

// OpenDir opens a DirStorage on dir, creating the directory if it is
// missing, and locks it: a second OpenDir on the same directory, from this
// process or another, fails with an error wrapping ErrLocked until Close;
// its message says which of the two holds the lock. opts may be nil.
//
// On Unix systems other than Solaris and AIX the lock is a flock(2) on the
// file LOCK in dir, which the kernel releases when the process ends.
// Elsewhere it is the LOCK file's existence: if a process dies with the
// storage open, LOCK must be removed by hand.
//
// With DirOptions.ReadOnly the directory must exist (else the error wraps
// fs.ErrNotExist) and the lock is shared: any number of read-only
// DirStorages open the directory together, from this process or others,
// while one that writes is kept out, and keeps them out, with ErrLocked. A
// read-only open creates nothing, not even LOCK: where LOCK is missing (a
// copy of a database on a read-only mount) it takes no lock. On systems
// without flock it takes no lock either, and fails with ErrLocked while
// LOCK exists.
func OpenDir(dir string, opts *DirOptions) (*DirStorage, error) {
	max, noSync, readOnly := DefaultMaxOpenFiles, false, false
	if opts != nil {
		noSync, readOnly = opts.NoSync, opts.ReadOnly
		if opts.MaxOpenFiles < 0 {
			return nil, fmt.Errorf("open storage %s: MaxOpenFiles %d is negative: %w", dir, opts.MaxOpenFiles, fs.ErrInvalid)
		}
		if opts.MaxOpenFiles > 0 {
			max = opts.MaxOpenFiles
		}
	}
	if dir == "" {
		return nil, fmt.Errorf("open storage: empty directory name: %w", fs.ErrInvalid)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", dir, err)
	}
	// Find the directories MkdirAll will create: their parents' entries
	// must be fsynced before any file in them can be durable.
	var rootSync []string
	for p := abs; !readOnly; {
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
	if !readOnly {
		if err := os.MkdirAll(abs, dirPerm); err != nil {
			return nil, fmt.Errorf("open storage %s: create directory: %w", abs, unwrapPathError(err))
		}
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", abs, unwrapPathError(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open storage %s: %w", abs, errStorageNotDir)
	}
	heldDirs.Lock()
	defer heldDirs.Unlock()
	for _, held := range heldDirs.m {
		if os.SameFile(fi, held.fi) && !(readOnly && held.readOnly) {
			return nil, fmt.Errorf("open storage %s: %w: held by another OpenDir in this process", abs, ErrLocked)
		}
	}
	lock, err := lockDir(abs, readOnly)
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", abs, unwrapPathError(err))
	}
	root, err := openRootDir(abs, readOnly)
	if err != nil {
		lock.unlock()
		return nil, fmt.Errorf("open storage %s: %w", abs, unwrapPathError(err))
	}
	s := &DirStorage{
		dir:      abs,
		root:     root,
		max:      max,
		noSync:   noSync,
		readOnly: readOnly,
		lock:     lock,
		nodes:    make(map[string]*dirNode),
		dirSync:  make(map[string]*dirPendingSync),
		rootSync: rootSync,
	}
	s.cond.L = &s.mu
	if s.repairs, err = s.tightenPerms(readOnly); err != nil {
		root.close()
		lock.unlock()
		return nil, fmt.Errorf("open storage %s: make the database private: %w", abs, err)
	}
	heldDirs.m[s] = heldDir{fi: fi, readOnly: readOnly}
	return s, nil
}

// openFile opens the file called name, a valid name, relative to the
// storage's directory; see rootDir.open.
func (s *DirStorage) openFile(name string, create bool) (osFile, error) {
	s.rootMu.RLock()
	defer s.rootMu.RUnlock()
	if s.rootClosed {
		return osFile{}, ErrClosed
	}
	return s.root.open(name, create)
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
	for {
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("storage %s: open %s: %w", s.dir, name, ErrClosed)
		}
		if n := s.nodes[name]; n != nil {
			n.openCount++
			s.mu.Unlock()
			return &dirFile{s: s, n: n}, nil
		}
		// Opening and creating run outside the lock, so that feeds
		// added together create their files side by side (a create
		// waits on the file system's journal). A Remove meanwhile may
		// have unlinked what was opened: then open again.
		gen := s.removes
		s.mu.Unlock()
		f, dirs, err := s.openPath(name, local, create)
		if err != nil {
			return nil, fmt.Errorf("storage %s: open %s: %w", s.dir, name, unwrapPathError(err))
		}
		s.mu.Lock()
		if dirs != nil && s.dirSync[name] == nil {
			s.dirSync[name] = &dirPendingSync{dirs: dirs}
		}
		if s.closed || s.removes != gen || s.nodes[name] != nil {
			s.mu.Unlock()
			f.Close()
			s.mu.Lock()
			continue
		}
		n := &dirNode{name: name, openCount: 1}
		s.nodes[name] = n
		h := &dirHandle{f: f, n: n}
		h.refs.Store(1)
		n.h = h
		s.pushFront(h)
		var buf [1]*dirHandle
		victims := s.evictLocked(buf[:0])
		s.mu.Unlock()
		s.finishAll(victims)
		return &dirFile{s: s, n: n}, nil
	}
}

// maxCreateTries bounds how often openPath creates a file again that a
// concurrent Remove deleted between its create and its open.
const maxCreateTries = 16

// openPath opens the file called name (local, in the system's form)
// read-write. If it is missing and create is set, it creates it and any
// missing parent directories, and returns the directories whose entries
// changed (deepest first).
func (s *DirStorage) openPath(name, local string, create bool) (osFile, []string, error) {
	f, err := s.openFile(name, false)
	if err == nil || !create || !errors.Is(err, fs.ErrNotExist) {
		return f, nil, err
	}
	if s.readOnly {
		return osFile{}, nil, fmt.Errorf("cannot create it: %w", ErrReadOnly)
	}
	path := filepath.Join(s.dir, local)
	var dirs []string
	madeParents := false
	for try := 0; ; try++ {
		f, err = s.openFile(name, true)
		if err == nil {
			s.traced("create", name)
			// The file's directory, then those holding the
			// directories created, deepest first.
			dirs = append(dirs, filepath.Dir(path))
			slices.Reverse(dirs)
			return f, dirs, nil
		}
		if errors.Is(err, fs.ErrExist) {
			// Created by someone else since the first try; if it
			// was removed again before we opened it, create it.
			f, err = s.openFile(name, false)
			if err == nil || !errors.Is(err, fs.ErrNotExist) || try >= maxCreateTries {
				return f, nil, err
			}
			continue
		}
		if madeParents || !errors.Is(err, fs.ErrNotExist) {
			return osFile{}, nil, err
		}
		madeParents = true
		// Create the missing parents, remembering which we made.
		elems := strings.Split(filepath.Dir(local), string(filepath.Separator))
		p := s.dir
		for _, e := range elems {
			if e == "." || e == "" {
				continue
			}
			parent := p
			p = filepath.Join(p, e)
			if err := os.Mkdir(p, dirPerm); err == nil {
				s.traced("mkdir", p)
				dirs = append(dirs, parent)
			} else if !errors.Is(err, fs.ErrExist) {
				return osFile{}, nil, err
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
	if s.readOnly {
		return fmt.Errorf("storage %s: remove %s: %w", s.dir, name, ErrReadOnly)
	}
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
	s.removes++
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
		if err := s.fsyncDir(filepath.Dir(path)); err != nil {
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
	s.rootMu.Lock()
	s.rootClosed = true
	if err := s.root.close(); err != nil {
		errs = append(errs, fmt.Errorf("storage %s: close: %w", s.dir, unwrapPathError(err)))
	}
	s.rootMu.Unlock()
	if err := s.lock.unlock(); err != nil {
		errs = append(errs, fmt.Errorf("storage %s: unlock: %w", s.dir, unwrapPathError(err)))
	}
	// Forget s only once unlocked, so that an OpenDir in between says the
	// lock is held in this process, not by another.
	heldDirs.Lock()
	delete(heldDirs.m, s)
	heldDirs.Unlock()
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
		err = s.fsync(&h.f, h.n.name, false)
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
	fd, err := s.openFile(f.n.name, false)
	s.mu.Lock()
	if uerr := f.usableLocked(); uerr != nil || err != nil {
		s.mu.Unlock()
		if err == nil {
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
	var buf [1]*dirHandle // one in, usually one out
	victims := s.evictLocked(buf[:0])
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
	if f.s.readOnly {
		return 0, f.errorf("write", ErrReadOnly)
	}
	h, err := f.acquire()
	if err != nil {
		return 0, f.errorf("write", err)
	}
	f.s.traced("write", f.n.name)
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
	if f.s.readOnly {
		return f.errorf("truncate", ErrReadOnly)
	}
	h, err := f.acquire()
	if err != nil {
		return f.errorf("truncate", err)
	}
	f.s.traced("truncate", f.n.name)
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
	size, err := h.f.Size()
	f.s.release(h)
	if err != nil {
		return 0, f.errorf("size", err)
	}
	return size, nil
}

// Sync makes the file's writes durable, and on the first Sync after the
// file was created, its directory entry (and those of any directories
// created for it). It fails with an error wrapping fs.ErrNotExist if the
// file is no longer in the storage's directory (the directory was deleted
// while open): what it holds would be lost.
func (f *dirFile) Sync() error { return f.sync(false) }

// Datasync is Sync with fdatasync(2) where the system has it: the file's
// data and the metadata needed to read it (its size) are made durable,
// not its times. See datasync.
func (f *dirFile) Datasync() error { return f.sync(true) }

func (f *dirFile) sync(data bool) error {
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
	err = s.fsync(&h.f, f.n.name, data)
	if err == nil {
		// What a file without a name holds is lost: a sync must not
		// promise it is durable.
		var ok bool
		if ok, err = h.f.linked(); err == nil && !ok {
			err = errStorageUnlinked
		}
	}
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
		if err := s.fsyncDir(d); err != nil {
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
