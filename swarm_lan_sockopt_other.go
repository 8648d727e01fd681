//go:build !unix && !windows

package kappa

import "net"

// setMulticastInterface does nothing here: the socket is bound to the
// interface's address, and the system picks the interface.
func setMulticastInterface(c *net.UDPConn, ifi *net.Interface, v6 bool) error { return nil }
