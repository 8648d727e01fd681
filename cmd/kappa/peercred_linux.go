package main

import (
	"net"
	"os"
	"syscall"
)

// peerIsUs reports whether the process at the other end of the control
// socket conn runs as this process's user (SO_PEERCRED). The socket's mode
// keeps others out already; this is a second check.
func peerIsUs(conn net.Conn) bool {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return false
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return int(cred.Uid) == os.Geteuid()
}
