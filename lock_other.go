//go:build !unix || solaris || aix

package kappa

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// canSyncDir reports whether directories can be fsynced here.
const canSyncDir = runtime.GOOS == "solaris" || runtime.GOOS == "illumos" || runtime.GOOS == "aix"

// dirLock is a directory's LOCK file, created exclusively and removed on
// unlock. A LOCK file left by a process that died must be removed by hand.
// A reader (DirOptions.ReadOnly) creates nothing and holds no lock: f is
// nil.
type dirLock struct {
	f    *os.File
	path string
}

// lockDir locks dir, or fails with an error wrapping ErrLocked. It takes a
// lock held by this process for another's: OpenDir finds those first. With
// shared it only checks that no writer holds the directory: it fails with
// ErrLocked while LOCK exists, and takes no lock, so a writer that opens the
// directory later is not kept out.
func lockDir(dir string, shared bool) (*dirLock, error) {
	path := filepath.Join(dir, storageLockName)
	if shared {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%w: held by a writer, or left by one that died (if no process has it open, remove %s)", ErrLocked, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return &dirLock{}, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: held by another process, or left by one that died (if no process has it open, remove %s)", ErrLocked, path)
	}
	if err != nil {
		return nil, err
	}
	return &dirLock{f: f, path: path}, nil
}

// unlock releases the lock.
func (l *dirLock) unlock() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	if rerr := os.Remove(l.path); err == nil {
		err = rerr
	}
	return err
}
