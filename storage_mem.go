package kappa

import (
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
)

// MemStorage is a Storage that keeps its files in memory, for tests and
// for databases that need not outlive the process. The zero value is not
// ready to use; call NewMemStorage.
//
// It models durability, so that this package's tests can simulate a crash
// in-process: each file has a durable state and a log of operations since
// its last Sync (its creation too). Reads see everything; Sync makes the
// log durable. Remove is durable at once.
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

// Close closes the storage: its Files fail with ErrClosed afterwards.
func (m *MemStorage) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("memstorage: close: %w", ErrClosed)
	}
	m.closed = true
	return nil
}

// crashClone returns a new, independent, open MemStorage holding what the
// disk could hold after a power loss now. Each file gets its durable state
// and, if r is not nil, a random prefix of its unsynced operations applied
// in order, the last of which, if a write, may be torn (only a prefix of
// its bytes lands). With r nil no unsynced operation survives, and a file
// never synced since it was created is absent. m is not changed and its
// Files keep working on m only. crashClone works on a closed MemStorage
// too.
func (m *MemStorage) crashClone(r *rand.Rand) *MemStorage {
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

// failNextWrite makes the next WriteAt, on any file, return an error
// wrapping err and change nothing. A nil err cancels it.
func (m *MemStorage) failNextWrite(err error) {
	m.mu.Lock()
	m.failWrite = err
	m.mu.Unlock()
}

// failNextSync makes the next Sync, on any file, return an error wrapping
// err and make nothing durable. A nil err cancels it.
func (m *MemStorage) failNextSync(err error) {
	m.mu.Lock()
	m.failSync = err
	m.mu.Unlock()
}

// names returns the sorted names of the files that exist. It, fileBytes and
// setFileBytes are for the package's tests.
func (m *MemStorage) names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.files))
	for name := range m.files {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// fileBytes returns a copy of the named file's current content (synced or
// not), and whether the file exists.
func (m *MemStorage) fileBytes(name string) ([]byte, bool) {
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

// setFileBytes replaces the named file's content, current and durable, with
// a copy of b, creating the file if needed; open Files see the new content.
// It is for tests that corrupt files. It does nothing if name is invalid or
// conflicts with a directory.
func (m *MemStorage) setFileBytes(name string, b []byte) {
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
// with failNextSync.
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
