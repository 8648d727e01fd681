package kappa

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// The real beacon transport: UDP multicast, IPv4 and IPv6, on every
// interface that is up and has multicast.

// The discovery group and port (doc/PROTOCOL.md, "Discovery"): an
// organization-local IPv4 group (RFC 2365) and a link-local IPv6 group.
const lanPort = 7655

var (
	lanGroup4 = net.IPv4(239, 192, 76, 55)
	lanGroup6 = net.ParseIP("ff02::4b50:4442") // "KPDB"
)

// udpDatagramMax bounds what a reader keeps of a datagram: more than a
// beacon, so that a longer datagram is seen as too long.
const udpDatagramMax = 128

// udpDatagram is a datagram received, passed by value.
type udpDatagram struct {
	n    int
	from netip.Addr
	b    [udpDatagramMax]byte
}

// udpTransport receives on a socket joined to the group per interface and
// family, and sends on a socket bound to the interface's address with
// that interface as its multicast interface, so that beacons go out on
// every interface and their source is an address to dial.
type udpTransport struct {
	recvs []*net.UDPConn
	sends []udpSender
	in    chan udpDatagram
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

type udpSender struct {
	c   *net.UDPConn
	dst *net.UDPAddr
}

// openUDPTransport joins the groups on every multicast interface; it fails
// if it can join none, saying why.
func openUDPTransport() (*udpTransport, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	t := &udpTransport{in: make(chan udpDatagram, 64), done: make(chan struct{})}
	var errs []error
	for i := range ifs {
		ifi := &ifs[i]
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 {
			continue
		}
		v4, v6 := interfaceAddrs(ifi)
		if v4.IsValid() {
			if err := t.join(ifi, "udp4", lanGroup4, v4); err != nil {
				errs = append(errs, err)
			}
		}
		if v6.IsValid() {
			if err := t.join(ifi, "udp6", lanGroup6, v6); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(t.sends) == 0 {
		t.close()
		if len(errs) == 0 {
			return nil, errors.New("no multicast interface (none is up with multicast and an address)")
		}
		return nil, fmt.Errorf("no multicast interface could be joined: %w", errors.Join(errs...))
	}
	for _, c := range t.recvs {
		t.wg.Add(1)
		go func() { defer t.wg.Done(); t.read(c) }()
	}
	return t, nil
}

// interfaceAddrs returns ifi's first IPv4 address and its first IPv6
// address, one that is not link-local if it has one.
func interfaceAddrs(ifi *net.Interface) (v4, v6 netip.Addr) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		switch {
		case ip.Is4():
			if !v4.IsValid() {
				v4 = ip
			}
		case ip.IsLinkLocalUnicast():
			if !v6.IsValid() {
				v6 = ip.WithZone(ifi.Name)
			}
		default:
			if !v6.IsValid() || v6.IsLinkLocalUnicast() {
				v6 = ip
			}
		}
	}
	return
}

// join joins group on ifi for network (udp4, udp6), and opens the socket
// that sends from src on it.
func (t *udpTransport) join(ifi *net.Interface, network string, group net.IP, src netip.Addr) error {
	gaddr := &net.UDPAddr{IP: group, Port: lanPort}
	r, err := net.ListenMulticastUDP(network, ifi, gaddr)
	if err != nil {
		return fmt.Errorf("joining %v on %s: %w", group, ifi.Name, err)
	}
	s, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		r.Close()
		return fmt.Errorf("sending from %v on %s: %w", src, ifi.Name, err)
	}
	if err := setMulticastInterface(s, ifi, network == "udp6"); err != nil {
		r.Close()
		s.Close()
		return fmt.Errorf("sending on %s: %w", ifi.Name, err)
	}
	dst := &net.UDPAddr{IP: group, Port: lanPort}
	if network == "udp6" {
		dst.Zone = ifi.Name
	}
	t.recvs = append(t.recvs, r)
	t.sends = append(t.sends, udpSender{c: s, dst: dst})
	return nil
}

// read passes c's datagrams on until c closes.
func (t *udpTransport) read(c *net.UDPConn) {
	var d udpDatagram
	for {
		n, from, err := c.ReadFromUDPAddrPort(d.b[:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-t.done:
				return
			default:
			}
			continue
		}
		d.n, d.from = n, from.Addr()
		select {
		case t.in <- d:
		case <-t.done:
			return
		default: // the receiver is behind: drop, as the network may
		}
	}
}

func (t *udpTransport) send(b []byte) error {
	var errs []error
	ok := false
	for _, s := range t.sends {
		if _, err := s.c.WriteToUDP(b, s.dst); err != nil {
			errs = append(errs, fmt.Errorf("to %v: %w", s.dst, err))
			continue
		}
		ok = true
	}
	if ok {
		return nil
	}
	return errors.Join(errs...)
}

func (t *udpTransport) recv(buf []byte) (int, netip.Addr, error) {
	select {
	case d := <-t.in:
		n := copy(buf, d.b[:d.n])
		return n, d.from, nil
	case <-t.done:
		return 0, netip.Addr{}, net.ErrClosed
	}
}

func (t *udpTransport) close() error {
	t.once.Do(func() {
		close(t.done)
		for _, c := range t.recvs {
			c.Close()
		}
		for _, s := range t.sends {
			s.c.Close()
		}
	})
	t.wg.Wait()
	return nil
}

// ipv4Of returns the IPv4 address c is bound to, or nil.
func ipv4Of(c *net.UDPConn) net.IP {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return a.IP.To4()
	}
	return nil
}
