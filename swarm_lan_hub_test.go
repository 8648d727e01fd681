package kappa

import (
	"net"
	"net/netip"
	"sync"
)

// beaconHub is an in-memory beacon network for tests: every send reaches
// every other transport of the hub, with the sender's IP as its source,
// and a test can inject raw datagrams.
type beaconHub struct {
	mu  sync.Mutex
	trs map[*hubTransport]bool
}

func newBeaconHub() *beaconHub { return &beaconHub{trs: map[*hubTransport]bool{}} }

type hubDatagram struct {
	b    []byte
	from netip.Addr
}

// hubTransport is one node's end of a hub.
type hubTransport struct {
	hub      *beaconHub
	ip       netip.Addr
	in       chan hubDatagram
	done     chan struct{}
	once     sync.Once
	received func(b []byte) // if set, told of every datagram received
	loopback bool           // its own sends come back to it, as multicast loopback does
}

// transport returns a new transport on the hub whose datagrams come from ip.
func (h *beaconHub) transport(ip net.IP) beaconTransport {
	return h.newTransport(ip)
}

func (h *beaconHub) newTransport(ip net.IP) *hubTransport {
	a, _ := netip.AddrFromSlice(ip)
	t := &hubTransport{hub: h, ip: a.Unmap(), in: make(chan hubDatagram, 256), done: make(chan struct{})}
	h.mu.Lock()
	h.trs[t] = true
	h.mu.Unlock()
	return t
}

// deliver passes b from from to every transport of the hub but skip,
// waiting for each receiver to take it (or close).
func (h *beaconHub) deliver(b []byte, from netip.Addr, skip *hubTransport) {
	h.mu.Lock()
	list := make([]*hubTransport, 0, len(h.trs))
	for t := range h.trs {
		if t != skip {
			list = append(list, t)
		}
	}
	h.mu.Unlock()
	for _, t := range list {
		select {
		case t.in <- hubDatagram{b: b, from: from}:
		case <-t.done:
		}
	}
}

// inject delivers the raw datagram b from ip to every transport.
func (h *beaconHub) inject(b []byte, ip net.IP) {
	a, _ := netip.AddrFromSlice(ip)
	h.deliver(append([]byte(nil), b...), a.Unmap(), nil)
}

func (t *hubTransport) send(b []byte) error {
	skip := t
	if t.loopback {
		skip = nil
	}
	t.hub.deliver(append([]byte(nil), b...), t.ip, skip)
	return nil
}

func (t *hubTransport) recv(buf []byte) (int, netip.Addr, error) {
	select {
	case d := <-t.in:
		if t.received != nil {
			t.received(d.b)
		}
		return copy(buf, d.b), d.from, nil
	case <-t.done:
		return 0, netip.Addr{}, net.ErrClosed
	}
}

func (t *hubTransport) close() error {
	t.once.Do(func() {
		close(t.done)
		t.hub.mu.Lock()
		delete(t.hub.trs, t)
		t.hub.mu.Unlock()
	})
	return nil
}
