package kappa

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// LAN discovery: beacons over UDP multicast (doc/PROTOCOL.md, "Discovery").
// Discovery only proposes addresses; the handshake decides who is a member.

// beaconTransport carries beacons: the real one is UDP multicast on every
// interface that has it; tests inject one that works without multicast.
type beaconTransport interface {
	// send sends one beacon to the group, on every interface joined.
	send(b []byte) error
	// recv waits for the next datagram, copies at most len(buf) bytes of
	// it into buf and returns how many it copied and the sender's IP
	// (with its zone, for an IPv6 link-local address). After close it
	// returns an error.
	recv(buf []byte) (n int, from netip.Addr, err error)
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

// The beacon format: doc/PROTOCOL.md, "Discovery".
const (
	beaconMagic   = "KPDB"
	beaconVersion = 1
	beaconKind    = 'B' // a beacon: sent now and then, and in answer to a probe
	probeKind     = 'P' // a probe: sent at start; listening members answer it

	beaconNonceOff = 6
	beaconSealOff  = beaconNonceOff + 16 // port (2 bytes) and node id (16), encrypted
	beaconMACOff   = beaconSealOff + 18
	beaconLen      = beaconMACOff + 16 // 56

	// Default timings: beacons every 7.5 to 22.5 s; a peer not heard for
	// 70 s (more than three of the longest gaps) is lost.
	defaultLANInterval = 15 * time.Second
	defaultLANExpiry   = 70 * time.Second
	// A listening node answers probes at most once per answerGap, after a
	// random delay of at most answerDelay.
	answerGap   = 250 * time.Millisecond
	answerDelay = 50 * time.Millisecond
	// Nonces of the last nonceCacheSize member beacons are remembered:
	// a beacon with one of them is a replay.
	nonceCacheSize = 4096
)

// beacon is a decoded beacon or probe.
type beacon struct {
	kind  byte
	nonce [16]byte
	port  uint16
	node  nodeID
}

// beaconCodec seals and opens beacons with the keys derived from a shared
// key. It keeps its HMAC states, so it is used by one goroutine at a time
// and opening a datagram allocates nothing.
type beaconCodec struct {
	mac, enc hash.Hash
	sum      [sha256.Size]byte
}

// newBeaconCodec derives the beacon keys from the shared key: the MAC key
// HMAC-SHA256(key, "kappa-discovery-mac-v1") and the encryption key
// HMAC-SHA256(key, "kappa-discovery-enc-v1").
func newBeaconCodec(key []byte) *beaconCodec {
	derive := func(label string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(label))
		return h.Sum(nil)
	}
	return &beaconCodec{
		mac: hmac.New(sha256.New, derive("kappa-discovery-mac-v1")),
		enc: hmac.New(sha256.New, derive("kappa-discovery-enc-v1")),
	}
}

// keystream XORs the 18 sealed bytes of p with HMAC-SHA256(encKey, nonce).
func (c *beaconCodec) keystream(p []byte) {
	c.enc.Reset()
	c.enc.Write(p[beaconNonceOff:beaconSealOff])
	s := c.enc.Sum(c.sum[:0])
	for i := range beaconMACOff - beaconSealOff {
		p[beaconSealOff+i] ^= s[i]
	}
}

// tag writes the MAC of p's first beaconMACOff bytes into c.sum.
func (c *beaconCodec) tag(p []byte) []byte {
	c.mac.Reset()
	c.mac.Write(p[:beaconMACOff])
	return c.mac.Sum(c.sum[:0])[:beaconLen-beaconMACOff]
}

// encode seals b into dst.
func (c *beaconCodec) encode(dst *[beaconLen]byte, b beacon) {
	p := dst[:]
	copy(p, beaconMagic)
	p[4], p[5] = beaconVersion, b.kind
	copy(p[beaconNonceOff:], b.nonce[:])
	binary.BigEndian.PutUint16(p[beaconSealOff:], b.port)
	copy(p[beaconSealOff+2:], b.node[:])
	c.keystream(p)
	copy(p[beaconMACOff:], c.tag(p))
}

// Why a datagram is dropped.
var (
	errBeaconShape = errors.New("not a kappa beacon (length, magic, version or kind)")
	errBeaconMAC   = errors.New("beacon of another database, or forged")
)

// decode opens a beacon: the length, magic, version and kind must be
// right and the MAC must check under this codec's key. It reads p and
// writes nothing to it.
func (c *beaconCodec) decode(p []byte) (beacon, error) {
	var b beacon
	if len(p) != beaconLen || string(p[:4]) != beaconMagic || p[4] != beaconVersion ||
		(p[5] != beaconKind && p[5] != probeKind) {
		return b, errBeaconShape
	}
	if !hmac.Equal(c.tag(p), p[beaconMACOff:]) {
		return b, errBeaconMAC
	}
	var clear [beaconLen]byte
	copy(clear[:], p)
	c.keystream(clear[:])
	b.kind = p[5]
	copy(b.nonce[:], p[beaconNonceOff:])
	b.port = binary.BigEndian.Uint16(clear[beaconSealOff:])
	copy(b.node[:], clear[beaconSealOff+2:beaconMACOff])
	return b, nil
}

// nonceCache remembers the nonces of the last nonceCacheSize member
// beacons, in a fixed ring and a map of the same size.
type nonceCache struct {
	ring [nonceCacheSize][16]byte
	next int
	full bool
	set  map[[16]byte]struct{}
}

// add records n and reports whether it was new.
func (nc *nonceCache) add(n [16]byte) bool {
	if nc.set == nil {
		nc.set = make(map[[16]byte]struct{}, nonceCacheSize)
	}
	if _, ok := nc.set[n]; ok {
		return false
	}
	if nc.full {
		delete(nc.set, nc.ring[nc.next])
	}
	nc.ring[nc.next] = n
	nc.set[n] = struct{}{}
	nc.next++
	if nc.next == nonceCacheSize {
		nc.next, nc.full = 0, true
	}
	return true
}

// lanPeer is a member heard on the LAN.
type lanPeer struct {
	addr     string    // the address to dial
	addrLast time.Time // when a beacon last came from addr
	last     time.Time // when a beacon last came
}

// lanStats count what discovery received, for tests.
type lanStats struct {
	dropped  atomic.Uint64 // not a beacon of this database: shape or MAC
	replayed atomic.Uint64 // a nonce seen before
	own      atomic.Uint64 // this node's own beacons
	accepted atomic.Uint64 // fresh member beacons
	answers  atomic.Uint64 // beacons sent in answer to probes
	sent     atomic.Uint64 // datagrams sent (probes and beacons)
	sendErrs atomic.Uint64 // sends that failed
}

// lan is a running LAN discovery.
type lan struct {
	cfg    lanConfig
	tr     beaconTransport
	answer chan struct{} // a valid probe arrived: answer it
	done   chan struct{} // closed by close
	wg     sync.WaitGroup
	once   sync.Once // reporting an error
	stats  lanStats

	rx    *beaconCodec // the receiver's
	seen  nonceCache   // the receiver's
	rxBuf [beaconLen + 1]byte

	mu    sync.Mutex // held while peers change and found/lost run
	peers map[nodeID]*lanPeer
}

// startLAN starts discovery with cfg: a probe at once, then beacons now
// and then, and the receiver.
func startLAN(cfg lanConfig) (*lan, error) {
	if cfg.interval <= 0 {
		cfg.interval = defaultLANInterval
	}
	if cfg.expiry <= 0 {
		cfg.expiry = defaultLANExpiry
		if cfg.interval != defaultLANInterval {
			cfg.expiry = cfg.interval * 14 / 3
		}
	}
	if cfg.port < 0 || cfg.port > 65535 {
		return nil, fmt.Errorf("%w: port %d", ErrInvalidValue, cfg.port)
	}
	tr := cfg.tr
	if tr == nil {
		var err error
		if tr, err = openUDPTransport(); err != nil {
			return nil, err
		}
	}
	l := &lan{
		cfg: cfg, tr: tr, answer: make(chan struct{}, 1), done: make(chan struct{}),
		rx: newBeaconCodec(cfg.key), peers: map[nodeID]*lanPeer{},
	}
	l.wg.Add(2)
	go func() { defer l.wg.Done(); l.sendLoop() }()
	go func() { defer l.wg.Done(); l.recvLoop() }()
	return l, nil
}

// close stops discovery and waits for its goroutines.
func (l *lan) close() {
	select {
	case <-l.done:
		return
	default:
	}
	close(l.done)
	l.tr.close()
	l.wg.Wait()
}

func (l *lan) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// fail reports err, once.
func (l *lan) fail(err error) {
	if l.closed() {
		return
	}
	l.once.Do(func() {
		if l.cfg.onErr != nil {
			l.cfg.onErr(err)
		}
	})
}

// sendLoop sends the probes at start (at once, after 100–300 ms and after
// 500–900 ms), then a beacon every interval ±50%, and answers probes; it
// also forgets peers whose beacons stopped.
func (l *lan) sendLoop() {
	tx := newBeaconCodec(l.cfg.key)
	var buf [beaconLen]byte
	send := func(kind byte) {
		b := beacon{kind: kind, port: uint16(l.cfg.port), node: l.cfg.node}
		rand.Read(b.nonce[:])
		tx.encode(&buf, b)
		if err := l.tr.send(buf[:]); err != nil {
			l.stats.sendErrs.Add(1)
			l.fail(fmt.Errorf("sending a beacon: %w", err))
			return
		}
		l.stats.sent.Add(1)
	}
	between := func(lo, hi time.Duration) time.Duration { return lo + mrand.N(hi-lo+1) }

	send(probeKind)
	probes := []time.Duration{between(100*time.Millisecond, 300*time.Millisecond),
		between(500*time.Millisecond, 900*time.Millisecond)}
	start := time.Now()
	next := time.NewTimer(probes[0])
	defer next.Stop()
	check := max(l.cfg.expiry/4, time.Millisecond)
	expire := time.NewTicker(check)
	defer expire.Stop()
	answer := time.NewTimer(time.Hour)
	answer.Stop()
	defer answer.Stop()
	var lastAnswer time.Time
	armed := false
	for {
		select {
		case <-l.done:
			return
		case <-next.C:
			if len(probes) > 0 {
				send(probeKind)
				probes = probes[1:]
			} else {
				send(beaconKind)
			}
			if len(probes) > 0 {
				next.Reset(max(probes[0]-time.Since(start), 0))
			} else {
				next.Reset(between(l.cfg.interval/2, l.cfg.interval*3/2))
			}
		case <-l.answer:
			if armed {
				continue
			}
			at := time.Now().Add(mrand.N(answerDelay + 1))
			if e := lastAnswer.Add(answerGap); at.Before(e) {
				at = e
			}
			answer.Reset(time.Until(at))
			armed = true
		case <-answer.C:
			armed = false
			lastAnswer = time.Now()
			send(beaconKind)
			l.stats.answers.Add(1)
		case <-expire.C:
			l.expire()
		}
	}
}

// expire forgets the peers not heard for the expiry.
func (l *lan) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for node, p := range l.peers {
		if time.Since(p.last) > l.cfg.expiry && !l.closed() {
			delete(l.peers, node)
			if l.cfg.lost != nil {
				l.cfg.lost(node)
			}
		}
	}
}

// recvLoop takes datagrams until the transport closes.
func (l *lan) recvLoop() {
	for {
		n, from, err := l.tr.recv(l.rxBuf[:])
		if err != nil {
			if !l.closed() {
				l.fail(fmt.Errorf("receiving beacons: %w", err))
			}
			return
		}
		l.handle(l.rxBuf[:n], from)
	}
}

// handle takes one datagram from the IP from: anything but a fresh beacon
// of another member is dropped, counted, and costs nothing more than one
// HMAC. A valid probe from a member is answered (rate-limited).
func (l *lan) handle(p []byte, from netip.Addr) {
	b, err := l.rx.decode(p)
	if err != nil {
		l.stats.dropped.Add(1)
		return
	}
	if !l.seen.add(b.nonce) {
		l.stats.replayed.Add(1)
		return
	}
	if b.node == l.cfg.node {
		l.stats.own.Add(1)
		return
	}
	l.stats.accepted.Add(1)
	if b.kind == probeKind && l.cfg.port != 0 {
		select {
		case l.answer <- struct{}{}:
		default:
		}
	}
	if b.port == 0 || !from.IsValid() {
		return // it does not listen: it dials those it finds
	}
	addr := netip.AddrPortFrom(from.Unmap(), b.port).String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed() {
		return
	}
	pr := l.peers[b.node]
	if pr == nil {
		pr = &lanPeer{}
		l.peers[b.node] = pr
	}
	now := time.Now()
	// A node beaconing from several addresses (interfaces, IPv4 and
	// IPv6) keeps the first while it is heard; another replaces it once
	// it was silent for two intervals.
	if pr.addr == addr || pr.addr == "" || now.Sub(pr.addrLast) > 2*l.cfg.interval {
		pr.addr, pr.addrLast = addr, now
	}
	pr.last = now
	if l.cfg.found != nil {
		l.cfg.found(pr.addr, b.node)
	}
}
