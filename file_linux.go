package kappa

import (
	"io"
	"io/fs"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// osFile is one open descriptor of a DirStorage file. On Linux it is the raw
// descriptor: regular files cannot use the runtime's poller, so *os.File
// would only add system calls to every open (fcntl, epoll_ctl) and
// bookkeeping to every read, and a database that reads 10,000 small feeds
// reopens descriptors often.
type osFile struct{ fd int }

// rootDir is a DirStorage's directory. On Linux it is held open, and files
// are opened relative to it: no path is built per open, and the kernel
// walks only the name's own components. The directories directly under it
// that hold files (such as "feeds") are held open too, once they exist,
// so that opening "feeds/12/tree" walks two components, not three: a
// database of many small feeds opens files often.
type rootDir struct {
	path     string
	fd       int
	subs     *subDirs
	readOnly bool // files are opened read-only
}

// subDirs are the directories held open under a rootDir, by name: a map
// replaced, never changed, so that opens read it without a lock.
type subDirs struct {
	m  atomic.Pointer[map[string]int]
	mu sync.Mutex // adding one
}

// maxSubDirs bounds the directories a rootDir holds open.
const maxSubDirs = 16

func openRootDir(path string, readOnly bool) (rootDir, error) {
	fd, err := openDirAt(atCWD, path)
	if err != nil {
		return rootDir{}, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return rootDir{path: path, fd: fd, subs: new(subDirs), readOnly: readOnly}, nil
}

// atCWD is AT_FDCWD, which package syscall does not export.
const atCWD = -100

func openDirAt(dir int, name string) (int, error) {
	for {
		fd, err := syscall.Openat(dir, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

func (d rootDir) close() error {
	var first error
	if m := d.subs.m.Load(); m != nil {
		for name, fd := range *m {
			if err := syscall.Close(fd); err != nil && first == nil {
				first = &fs.PathError{Op: "close", Path: d.path + "/" + name, Err: err}
			}
		}
	}
	if err := syscall.Close(d.fd); err != nil && first == nil {
		first = &fs.PathError{Op: "close", Path: d.path, Err: err}
	}
	return first
}

// at returns the descriptor to open name relative to, and name relative
// to it: its first directory's, if that is held open or can be now.
func (d rootDir) at(name string) (int, string) {
	i := strings.IndexByte(name, '/')
	if i <= 0 {
		return d.fd, name
	}
	dir, rest := name[:i], name[i+1:]
	if m := d.subs.m.Load(); m != nil {
		if fd, ok := (*m)[dir]; ok {
			return fd, rest
		}
	}
	d.subs.mu.Lock()
	defer d.subs.mu.Unlock()
	old := d.subs.m.Load()
	if old != nil {
		if fd, ok := (*old)[dir]; ok {
			return fd, rest
		}
		if len(*old) >= maxSubDirs {
			return d.fd, name
		}
	}
	fd, err := openDirAt(d.fd, dir)
	if err != nil {
		return d.fd, name // not created yet, or not a directory
	}
	m := make(map[string]int, 1)
	if old != nil {
		maps.Copy(m, *old)
	}
	m[dir] = fd
	d.subs.m.Store(&m)
	return fd, rest
}

// open opens name (slash-separated, relative to d) read-write, or
// read-only if d is; with create it creates the file, which must not exist
// yet. Errors are *fs.PathError, as from os.OpenFile.
func (d rootDir) open(name string, create bool) (osFile, error) {
	flags := syscall.O_RDWR | syscall.O_CLOEXEC
	if d.readOnly {
		flags = syscall.O_RDONLY | syscall.O_CLOEXEC
	}
	if create {
		flags |= syscall.O_CREAT | syscall.O_EXCL
	}
	dir, rel := d.at(name)
	for {
		fd, err := syscall.Openat(dir, rel, flags, uint32(filePerm))
		if err == nil {
			return osFile{fd: fd}, nil
		}
		if err != syscall.EINTR {
			return osFile{}, &fs.PathError{Op: "open", Path: d.path + "/" + name, Err: err}
		}
	}
}

func (f *osFile) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Pread(f.fd, p[done:], off+int64(done))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, &fs.PathError{Op: "read", Err: err}
		}
		if n == 0 {
			return done, io.EOF
		}
		done += n
	}
	return done, nil
}

func (f *osFile) WriteAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Pwrite(f.fd, p[done:], off+int64(done))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, &fs.PathError{Op: "write", Err: err}
		}
		if n == 0 {
			return done, &fs.PathError{Op: "write", Err: io.ErrShortWrite}
		}
		done += n
	}
	return done, nil
}

func (f *osFile) Truncate(size int64) error {
	return retryEINTR("truncate", func() error { return syscall.Ftruncate(f.fd, size) })
}

func (f *osFile) Size() (int64, error) {
	var st syscall.Stat_t
	if err := retryEINTR("stat", func() error { return syscall.Fstat(f.fd, &st) }); err != nil {
		return 0, err
	}
	return st.Size, nil
}

func (f *osFile) Sync() error {
	return retryEINTR("sync", func() error { return syscall.Fsync(f.fd) })
}

func (f *osFile) Datasync() error {
	return retryEINTR("datasync", func() error { return syscall.Fdatasync(f.fd) })
}

// linked reports whether the file still has a name in the file system: one
// whose directory was deleted has none, and what it holds is lost when it
// is closed, synced or not.
func (f *osFile) linked() (bool, error) {
	var st syscall.Stat_t
	if err := retryEINTR("stat", func() error { return syscall.Fstat(f.fd, &st) }); err != nil {
		return false, err
	}
	return st.Nlink > 0, nil
}

// Close closes the descriptor. It is not retried on EINTR: on Linux the
// descriptor is released whatever close returns.
func (f *osFile) Close() error {
	if err := syscall.Close(f.fd); err != nil {
		return &fs.PathError{Op: "close", Err: err}
	}
	return nil
}

func retryEINTR(op string, call func() error) error {
	for {
		err := call()
		if err == nil {
			return nil
		}
		if err != syscall.EINTR {
			return &fs.PathError{Op: op, Err: err}
		}
	}
}
