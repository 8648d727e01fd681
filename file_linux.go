package kappa

import (
	"io"
	"io/fs"
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
// walks only the name's own components.
type rootDir struct {
	path string
	fd   int
}

func openRootDir(path string) (rootDir, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err == nil {
			return rootDir{path: path, fd: fd}, nil
		}
		if err != syscall.EINTR {
			return rootDir{}, &fs.PathError{Op: "open", Path: path, Err: err}
		}
	}
}

func (d rootDir) close() error {
	if err := syscall.Close(d.fd); err != nil {
		return &fs.PathError{Op: "close", Path: d.path, Err: err}
	}
	return nil
}

// open opens name (slash-separated, relative to d) read-write; with
// create it creates the file, which must not exist yet. Errors are
// *fs.PathError, as from os.OpenFile.
func (d rootDir) open(name string, create bool) (osFile, error) {
	flags := syscall.O_RDWR | syscall.O_CLOEXEC
	if create {
		flags |= syscall.O_CREAT | syscall.O_EXCL
	}
	for {
		fd, err := syscall.Openat(d.fd, name, flags, 0o644)
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
