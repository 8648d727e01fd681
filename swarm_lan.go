package kappa

import (
	"errors"
	"net"
	"time"
)

// LAN discovery: beacons over UDP multicast (doc/PROTOCOL.md, "Discovery").
// Discovery only proposes addresses; the handshake decides who is a member.

// beaconTransport carries beacons: the real one is UDP multicast on every
// interface that has it; tests inject one that works without multicast.
type beaconTransport interface {
	// send sends one beacon to the group, on every interface joined.
	send(b []byte) error
	// recv waits for the next datagram, copies it into buf and returns
	// its length and the sender's IP. After close it returns an error.
	recv(buf []byte) (n int, from net.IP, err error)
	close() error
}

// lanConfig is what a LAN discovery needs from its swarm.
type lanConfig struct {
	key  []byte // the database's shared key: beacon keys derive from it
	node nodeID // this node's id: own beacons are ignored
	port int    // the port this node listens on; 0 if it does not

	tr beaconTransport // nil: open the multicast transport

	// found is called (from discovery's goroutine) for each member
	// beacon that is new or refreshes a peer: the address to dial
	// (host:port, the beacon's source IP and port) and the peer's node id.
	found func(addr string, node nodeID)
	// lost is called when a peer's beacons stopped (after expiry).
	lost func(node nodeID)
	// onErr is told, once, when discovery cannot work (no multicast
	// route); the swarm goes on with its static peers.
	onErr func(error)

	// Zero means the default; tests set them short.
	interval time.Duration // mean time between beacons
	expiry   time.Duration // a peer whose beacons stopped this long is lost
}

// lan is a running LAN discovery.
type lan struct{}

// startLAN starts discovery with cfg: a probe at once, then beacons now
// and then, and the receiver.
func startLAN(cfg lanConfig) (*lan, error) {
	return nil, errors.New("LAN discovery is not built yet")
}

// close stops discovery and waits for its goroutines.
func (l *lan) close() {}
