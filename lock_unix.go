//go:build unix && !solaris && !aix

package kappa

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// canSyncDir reports whether directories can be fsynced here.
const canSyncDir = true

// dirLock is a flock(2) on a directory's LOCK file: exclusive for a writer,
// shared for a reader (DirOptions.ReadOnly). flock locks belong to the open
// file description, so a second lock from this process conflicts too, and
// the kernel drops the lock when the process ends. A reader of a directory
// without LOCK holds no lock: f is nil.
type dirLock struct{ f *os.File }

// lockDir locks dir, or fails with an error wrapping ErrLocked. It takes a
// lock held by this process for another's: OpenDir finds those first. With
// shared it takes a shared lock, opening LOCK read-only and creating
// nothing: if LOCK is missing (a database copied without it, on a read-only
// mount) no lock is taken.
func lockDir(dir string, shared bool) (*dirLock, error) {
	flag, how := os.O_RDWR|os.O_CREATE, syscall.LOCK_EX
	if shared {
		flag, how = os.O_RDONLY, syscall.LOCK_SH
	}
	f, err := os.OpenFile(filepath.Join(dir, storageLockName), flag, filePerm)
	if shared && errors.Is(err, fs.ErrNotExist) {
		return &dirLock{}, nil
	}
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = syscall.Flock(int(fd), how|syscall.LOCK_NB)
	}); err != nil {
		f.Close()
		return nil, err
	}
	if ferr != nil {
		f.Close()
		if errors.Is(ferr, syscall.EWOULDBLOCK) {
			if shared {
				return nil, fmt.Errorf("%w: held by a writer in another process", ErrLocked)
			}
			return nil, fmt.Errorf("%w: held by another process", ErrLocked)
		}
		return nil, &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
	return &dirLock{f: f}, nil
}

// unlock releases the lock.
func (l *dirLock) unlock() error {
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}
