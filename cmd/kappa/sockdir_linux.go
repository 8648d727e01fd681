package main

import (
	"fmt"
	"os"
)

// dirByDescriptor opens dir and returns a short path that names it,
// /proc/self/fd/N, valid until release is called: a socket path through
// it fits a socket address however deep dir is.
func dirByDescriptor(dir string) (path string, release func(), ok bool) {
	f, err := os.Open(dir)
	if err != nil {
		return "", nil, false
	}
	path = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		f.Close()
		return "", nil, false // no /proc
	}
	return path, func() { f.Close() }, true
}
