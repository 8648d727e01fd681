//go:build unix && !solaris && !aix

package kappa

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// canSyncDir reports whether directories can be fsynced here.
const canSyncDir = true

// dirLock is an exclusive flock(2) on a directory's LOCK file. flock locks
// belong to the open file description, so a second lock from this process
// conflicts too, and the kernel drops the lock when the process ends.
type dirLock struct{ f *os.File }

// lockDir locks dir, or fails with an error wrapping ErrLocked. It takes a
// lock held by this process for another's: OpenDir finds those first.
func lockDir(dir string) (*dirLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, storageLockName), os.O_RDWR|os.O_CREATE, filePerm)
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
		ferr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	}); err != nil {
		f.Close()
		return nil, err
	}
	if ferr != nil {
		f.Close()
		if errors.Is(ferr, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: held by another process", ErrLocked)
		}
		return nil, &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
	return &dirLock{f: f}, nil
}

// unlock releases the lock.
func (l *dirLock) unlock() error { return l.f.Close() }
