//go:build unix

package kappa

import (
	"net"
	"syscall"
)

// setMulticastInterface makes c send its multicast datagrams out of ifi,
// and loop them back to this host's members of the group.
func setMulticastInterface(c *net.UDPConn, ifi *net.Interface, v6 bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_MULTICAST_IF, ifi.Index)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_MULTICAST_LOOP, 1)
			}
			return
		}
		var a [4]byte
		if ip := ipv4Of(c); ip != nil {
			copy(a[:], ip)
		}
		serr = syscall.SetsockoptInet4Addr(int(fd), syscall.IPPROTO_IP, syscall.IP_MULTICAST_IF, a)
		if serr == nil {
			serr = syscall.SetsockoptByte(int(fd), syscall.IPPROTO_IP, syscall.IP_MULTICAST_LOOP, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
