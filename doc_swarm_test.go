package kappa

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// Conformance of the swarm parts of doc/PROTOCOL.md: §1 (the 1.2 hello
// with its node id; one session per pair of nodes) and §7 (discovery).
// Everything the peer side does here is re-derived from the document's
// text: keys, keystream, byte layout, kinds, lengths. Nothing here calls
// the package's beacon codec, hello encoder or key derivations.

// docLabel is the exporter label of §1, step 2.
const docLabel = "EXPORTER-kappa-replicate-v1"

// docHMAC is HMAC-SHA256(key, the parts in order).
func docHMAC(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// docBeaconKeys are §7 "Keys": the MAC key and the encryption key.
func docBeaconKeys(shared []byte) (macKey, encKey []byte) {
	return docHMAC(shared, []byte("kappa-discovery-mac-v1")), docHMAC(shared, []byte("kappa-discovery-enc-v1"))
}

// docSealBeacon is a datagram of §7 "Beacon": 56 bytes, magic, version 1,
// kind, a fresh nonce, port (big-endian) and node sealed, then the mac.
func docSealBeacon(shared []byte, kind byte, port uint16, node [16]byte) []byte {
	macKey, encKey := docBeaconKeys(shared)
	p := make([]byte, 56)
	copy(p[0:4], []byte{0x4b, 0x50, 0x44, 0x42})
	p[4] = 1
	p[5] = kind
	rand.Read(p[6:22])
	p[22], p[23] = byte(port>>8), byte(port)
	copy(p[24:40], node[:])
	ks := docHMAC(encKey, p[6:22])
	for i := range 18 {
		p[22+i] ^= ks[i]
	}
	copy(p[40:56], docHMAC(macKey, p[:40])[:16])
	return p
}

// docBeacon is a datagram opened by docOpenBeacon.
type docBeacon struct {
	kind byte
	port uint16
	node [16]byte
}

// docOpenBeacon checks and opens a datagram as §7 says a receiver does.
func docOpenBeacon(shared, p []byte) (docBeacon, error) {
	var b docBeacon
	if len(p) != 56 || string(p[0:4]) != "KPDB" || p[4] != 1 || (p[5] != 'B' && p[5] != 'P') {
		return b, errors.New("not a beacon: length, magic, version or kind")
	}
	macKey, encKey := docBeaconKeys(shared)
	if !hmac.Equal(docHMAC(macKey, p[:40])[:16], p[40:56]) {
		return b, errors.New("the mac does not check")
	}
	open := slices.Clone(p[22:40])
	ks := docHMAC(encKey, p[6:22])
	for i := range open {
		open[i] ^= ks[i]
	}
	b.kind = p[5]
	b.port = uint16(open[0])<<8 | uint16(open[1])
	copy(b.node[:], open[2:18])
	return b, nil
}

// docHear waits for the next datagram the test's own transport receives.
func docHear(t *testing.T, ctx context.Context, ear *hubTransport, what string) hubDatagram {
	t.Helper()
	select {
	case d := <-ear.in:
		return d
	case <-ctx.Done():
		t.Fatalf("waiting for %s: no datagram came", what)
	}
	return hubDatagram{}
}

// docNode returns a random node id.
func docNode() [16]byte {
	var n [16]byte
	rand.Read(n[:])
	return n
}

// docFreshDial waits until dl has dialled an address not in seen, and
// returns the first such.
func docFreshDial(t *testing.T, ctx context.Context, dl *dialLog, seen map[string]bool, what string) string {
	t.Helper()
	var fresh string
	waitFor(t, ctx, what, func() bool {
		for _, a := range dl.dialled("") {
			if !seen[a] {
				fresh = a
				return true
			}
		}
		return false
	})
	return fresh
}

// docFoundBeforeMarker delivers a beacon of a new node, the marker, from
// 10.1.2.6, and reports whether node was found before the marker was.
func docFoundBeforeMarker(t *testing.T, ctx context.Context, hub *beaconHub, key []byte, found <-chan nodeID, node nodeID) bool {
	t.Helper()
	marker := docNode()
	hub.deliver(docSealBeacon(key, 'B', 9, marker), netip.MustParseAddr("10.1.2.6"), nil)
	return foundBefore(t, ctx, found, node, marker)
}

// docHearAnswer waits for the node at 10.0.0.1 to answer a probe: each of
// its datagrams until a beacon must open with the document's keys, name
// the node self and its port, and be a probe or that beacon.
func docHearAnswer(t *testing.T, ctx context.Context, ear *hubTransport, key []byte, port uint16, self [16]byte) {
	t.Helper()
	for {
		d := docHear(t, ctx, ear, "the answer to the probe")
		if d.from != netip.MustParseAddr("10.0.0.1") {
			continue // what the test injected
		}
		b, err := docOpenBeacon(key, d.b)
		if err != nil {
			t.Fatalf("a datagram of the node (%d bytes): %v", len(d.b), err)
		}
		if b.port != port || b.node != self {
			t.Fatalf("a datagram of the node: port %d node %x, want %d %x", b.port, b.node, port, self)
		}
		if b.kind == 'B' {
			return // the answer
		}
		if b.kind != 'P' {
			t.Fatalf("kind %q", b.kind)
		}
	}
}

// Beacons and probes made from §7 alone are taken by a swarm, which dials
// exactly the source IP and the port they carry; the node's own probes and
// its answer to a probe open with the document's keys and layout.
func TestDocBeaconsAsDocumented(t *testing.T) {
	ctx := swarmCtx(t)
	hub := newBeaconHub()
	var dl dialLog
	hook, found := foundChan()
	// The test's own end of the LAN: it hears every datagram of the hub.
	ear := hub.newTransport(net.IPv4(10, 0, 0, 200))
	t.Cleanup(func() { ear.close() })
	a := startLANNodes(t, 1, 1, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(net.IPv4(10, 0, 0, 1)),
			dialer: dl.dial, lanFoundHook: hook,
			lanInterval: 1 << 40} // no periodic beacon during the test: a 'B' from it is an answer
	})[0]
	key := a.core.SharedKey()
	port := uint16(a.sw.Addr().(*net.TCPAddr).Port)
	var self [16]byte = a.core.node

	// Its first datagram is a probe, sent at once from its IP.
	d := docHear(t, ctx, ear, "the node's first probe")
	b, err := docOpenBeacon(key, d.b)
	if err != nil {
		t.Fatalf("the node's first datagram (%d bytes): %v", len(d.b), err)
	}
	if b.kind != 'P' || b.port != port || b.node != self || d.from != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("the node's first datagram: kind %q port %d node %x from %v; want 'P', %d, %x, 10.0.0.1",
			b.kind, b.port, b.node, d.from, port, self)
	}

	// A beacon and a probe that listen are dialled at source IP : port;
	// an IPv6 link-local source keeps its zone, an IPv4-mapped one is IPv4.
	cases := []struct {
		kind byte
		from netip.Addr
		port uint16
		want string
	}{
		{'B', netip.MustParseAddr("10.1.2.3"), 4321, "10.1.2.3:4321"},
		{'P', netip.MustParseAddr("10.1.2.8"), 4324, "10.1.2.8:4324"},
		{'B', netip.MustParseAddr("fe80::1:2%eth7"), 4322, "[fe80::1:2%eth7]:4322"},
		{'B', netip.MustParseAddr("::ffff:10.1.2.4"), 4323, "10.1.2.4:4323"},
		{'B', netip.MustParseAddr("2001:db8::5"), 443, "[2001:db8::5]:443"},
	}
	probes := 0
	seen := map[string]bool{}
	for _, c := range cases {
		n := docNode()
		hub.deliver(docSealBeacon(key, c.kind, c.port, n), c.from, nil)
		waitFound(t, ctx, found, n)
		if c.kind == 'P' {
			probes++
		}
		// The first address dialled that was not dialled before is it
		// (the earlier cases' addresses are dialled again, backing off).
		fresh := docFreshDial(t, ctx, &dl, seen, "a dial of "+c.want)
		if fresh != c.want {
			t.Fatalf("a %q from %v with port %d: dialled %q, want %q", c.kind, c.from, c.port, fresh, c.want)
		}
		seen[fresh] = true
	}

	// Port 0: the sender does not listen; it is not dialled, nor found.
	silent := docNode()
	hub.deliver(docSealBeacon(key, 'B', 0, silent), netip.MustParseAddr("10.1.2.5"), nil)
	if docFoundBeforeMarker(t, ctx, hub, key, found, silent) {
		t.Fatal("a beacon with port 0 proposed an address")
	}
	if got := dl.dialled("10.1.2.5"); len(got) != 0 {
		t.Fatalf("a beacon with port 0 was dialled: %v", got)
	}

	// A replay (the same datagram again) and a beacon with the node's own
	// id (from another IP) propose nothing.
	again := docNode()
	dg := docSealBeacon(key, 'B', 4325, again)
	hub.deliver(dg, netip.MustParseAddr("10.1.3.1"), nil)
	waitFound(t, ctx, found, again)
	hub.deliver(dg, netip.MustParseAddr("10.1.3.2"), nil)
	hub.deliver(docSealBeacon(key, 'B', 4326, self), netip.MustParseAddr("10.1.3.3"), nil)
	if docFoundBeforeMarker(t, ctx, hub, key, found, again) || len(dl.dialled("10.1.3.2")) != 0 || len(dl.dialled("10.1.3.3")) != 0 {
		t.Fatalf("a replayed or own beacon proposed an address: %v", dl.dialled("10.1.3."))
	}

	// A probe from a node that does not listen is answered by a beacon
	// that opens with the document's keys and names this node and port.
	hub.deliver(docSealBeacon(key, 'P', 0, docNode()), netip.MustParseAddr("10.1.2.7"), nil)
	probes++
	docHearAnswer(t, ctx, ear, key, port, self)
	// (The counter moves just after the answer went out.)
	waitFor(t, ctx, "the answer counted", func() bool { return a.sw.lan.stats.answers.Load() > 0 })
	if n := a.sw.lan.stats.answers.Load(); n > uint64(probes) {
		t.Fatalf("%d answers to %d probes", n, probes)
	}
	// A datagram whose mac was made with another database's key is not
	// taken: the marker after it is found, it is not.
	other := docNode()
	hub.deliver(docSealBeacon(randomKey(), 'B', 4330, other), netip.MustParseAddr("10.1.2.9"), nil)
	if docFoundBeforeMarker(t, ctx, hub, key, found, other) || len(dl.dialled("10.1.2.9")) != 0 {
		t.Fatal("a beacon of another database proposed an address")
	}
}

// docEKM is the exporter value of §1, step 2.
func docEKM(t *testing.T, c *tls.Conn) []byte {
	t.Helper()
	cs := c.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(docLabel, nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	return ekm
}

// docHello is a 1.2 hello of §1, step 2, length prefix included.
func docHello(key, ekm []byte, role byte, node []byte) []byte {
	body := []byte{0x00, 0x4b, 0x41, 0x50, 0x50, 0x41, 0x01, 0x02}
	body = append(body, docHMAC(key, []byte(docLabel), ekm, []byte{role})...)
	body = append(body, node...)
	return append([]byte{byte(len(body))}, body...)
}

// docCheckHello checks a hello read from the peer against §1: 57 bytes,
// the layout, the mac of role, and the node id.
func docCheckHello(t *testing.T, h, key, ekm []byte, role byte, node [16]byte) {
	t.Helper()
	want := docHello(key, ekm, role, node[:])
	if len(want) != 57 || want[0] != 0x38 {
		t.Fatalf("the document's hello is %d bytes, prefix %#x", len(want), want[0])
	}
	if !bytes.Equal(h, want) {
		t.Fatalf("the peer's hello\n%x\nwant (role %c, node %x)\n%x", h, role, node, want)
	}
}

// A 57-byte hello made from §1 is accepted, in either role; the peer's own
// hello has the layout §1 gives, with its node id.
func TestDocHelloWithNodeID(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind+"/honest responder", func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			key := ff.honest.SharedKey()
			raw, res := startHonest(t, kind, ff.honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			ekm := docEKM(t, c)
			mine := docNode()
			if _, err := c.Write(docHello(key, ekm, 'I', mine[:])); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 57)
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatal(err)
			}
			docCheckHello(t, got, key, ekm, 'R', ff.honest.node)
			(&hostile{t: t, raw: raw, tls: c, br: br, honest: res}).endCleanly()
		})
		t.Run(kind+"/honest initiator", func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			key := ff.honest.SharedKey()
			raw, res := startHonest(t, kind, ff.honest, true, nil)
			c, br := tlsOnly(t, raw, false)
			ekm := docEKM(t, c)
			got := make([]byte, 57)
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatal(err)
			}
			docCheckHello(t, got, key, ekm, 'I', ff.honest.node)
			mine := docNode()
			if _, err := c.Write(docHello(key, ekm, 'R', mine[:])); err != nil {
				t.Fatal(err)
			}
			(&hostile{t: t, raw: raw, tls: c, br: br, honest: res}).endCleanly()
		})
		// A wrong mac: the responder's refusal is 41 bytes, this version
		// with a zero mac and no node id, then its close_notify.
		t.Run(kind+"/refusal", func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			raw, res := startHonest(t, kind, ff.honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			mine := docNode()
			if _, err := c.Write(docHello(randomKey(), docEKM(t, c), 'I', mine[:])); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("reading the refusal: %v", err)
			}
			want := append([]byte{0x28, 0x00, 0x4b, 0x41, 0x50, 0x50, 0x41, 0x01, 0x02}, make([]byte, 32)...)
			if !bytes.Equal(got, want) {
				t.Fatalf("the refusal: %x, want %x", got, want)
			}
			raw.Close()
			if err := waitHonest(t, res); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("the honest side: %v, want ErrUnauthorized", err)
			}
		})
	}
}

// docPair are two swarms of one database that listen.
func docPair(t *testing.T, opts func(i int) *SwarmOptions) (a, b *lanNode) {
	t.Helper()
	nodes := startLANNodes(t, 2, 1, nil, func(i int) *SwarmOptions {
		o := opts(i)
		o.Listen = "127.0.0.1:0"
		return o
	})
	return nodes[0], nodes[1]
}

// docSettled waits until each swarm runs one session, and the latest
// session each of its targets dialled got through the hellos: every
// session the test made happen was judged by the rule.
func docSettled(t *testing.T, ctx context.Context, sws ...*Swarm) {
	t.Helper()
	waitSwarms(t, ctx, sws, "one session per pair, every dial judged", func() bool {
		for _, sw := range sws {
			sw.mu.Lock()
			ok := len(sw.sessions) == 1 && len(sw.byNode) == 1
			for _, tg := range sw.targets {
				if tg.last == nil {
					ok = false
					continue
				}
				tg.last.mu.Lock()
				ok = ok && !tg.last.running.IsZero()
				tg.last.mu.Unlock()
			}
			sw.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	})
}

// docRunning is the EKM of the one session sw runs, and whether it was
// accepted.
func docRunning(sw *Swarm) (ekm []byte, inbound bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	for _, ss := range sw.byNode {
		return ss.s.ekm, ss.inbound
	}
	return nil, false
}

// §1.4 with different initiators: each swarm dials the other; the session
// kept is the one whose initiator's node id is smaller, on both sides.
// Both orders of the ids are run.
func TestDocOneSessionPerPairDifferentInitiators(t *testing.T) {
	for _, aSmaller := range []bool{true, false} {
		name := "A's id larger"
		if aSmaller {
			name = "A's id smaller"
		}
		t.Run(name, func(t *testing.T) {
			ctx := swarmCtx(t)
			// The ids are drawn at open; order them before the swarms start.
			a0 := newCore(t, nil)
			b0 := newCore(t, &Options{SharedKey: a0.SharedKey()})
			if (bytes.Compare(a0.node[:], b0.node[:]) < 0) != aSmaller {
				a0.node, b0.node = b0.node, a0.node
			}
			sa, err := a0.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sa.Close() })
			sb, err := b0.Swarm(&SwarmOptions{Listen: "127.0.0.1:0", Peers: []string{sa.Addr().String()}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sb.Close() })
			if err := sa.AddPeer(sb.Addr().String()); err != nil {
				t.Fatal(err)
			}
			docSettled(t, ctx, sa, sb)

			// The node ids, as each side reports its peer's.
			// (Its State may still say connecting: Peers refines it once
			// the session's loop runs, just after the hellos.)
			peerOf := func(sw *Swarm) PeerStatus {
				ps := sw.Peers()
				if len(ps) != 1 || ps[0].Node == "" {
					t.Fatalf("peers: %v, want one with its node id", ps)
				}
				return ps[0]
			}
			pa, pb := peerOf(sa), peerOf(sb)
			idB, err1 := hex.DecodeString(pa.Node)
			idA, err2 := hex.DecodeString(pb.Node)
			if err1 != nil || err2 != nil || len(idA) != 16 || len(idB) != 16 {
				t.Fatalf("node ids %q, %q", pb.Node, pa.Node)
			}
			// The rule: the session whose initiator's id is smaller.
			aInitiates := bytes.Compare(idA, idB) < 0
			if aInitiates != aSmaller {
				t.Fatalf("the ids reported are not the ones set")
			}
			if pa.Inbound != !aInitiates || pb.Inbound != aInitiates {
				t.Fatalf("kept: A's session inbound %v, B's inbound %v; the rule keeps the one A initiated: %v",
					pa.Inbound, pb.Inbound, aInitiates)
			}
			ea, _ := docRunning(sa)
			eb, _ := docRunning(sb)
			if !bytes.Equal(ea, eb) {
				t.Fatal("the two sides kept different sessions")
			}
		})
	}
}

// §1.4 with the same initiator: A knows B by two addresses; both sessions
// are A's, and the one kept, on both sides, has the smaller EKM.
func TestDocOneSessionPerPairSameInitiator(t *testing.T) {
	ctx := swarmCtx(t)
	var real string
	alias := "b-alias.invalid:1"
	a, b := docPair(t, func(i int) *SwarmOptions {
		o := &SwarmOptions{}
		if i == 0 {
			o.dialer = func(ctx context.Context, addr string) (net.Conn, error) {
				if addr == alias {
					addr = real
				}
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			}
		}
		return o
	})
	real = b.sw.Addr().String()
	if err := a.sw.AddPeer(real); err != nil {
		t.Fatal(err)
	}
	if err := a.sw.AddPeer(alias); err != nil {
		t.Fatal(err)
	}
	docSettled(t, ctx, a.sw, b.sw)
	var ekms [][]byte
	a.sw.mu.Lock()
	for _, tg := range a.sw.targets {
		ekms = append(ekms, tg.last.s.ekm)
	}
	a.sw.mu.Unlock()
	if len(ekms) != 2 {
		t.Fatalf("%d targets", len(ekms))
	}
	want := slices.MinFunc(ekms, bytes.Compare)
	ea, inA := docRunning(a.sw)
	eb, inB := docRunning(b.sw)
	if inA || !inB {
		t.Fatalf("A's session inbound %v, B's %v: A initiated both", inA, inB)
	}
	if !bytes.Equal(ea, want) || !bytes.Equal(eb, want) {
		t.Fatalf("kept EKM %x (A) and %x (B); the two sessions' are %x, the rule keeps the smaller", ea, eb, ekms)
	}
}

// docMulticastIPv4 is an interface that is up, has multicast and an IPv4
// address, and that address; the test is skipped without one.
func docMulticastIPv4(t *testing.T) (*net.Interface, net.IP) {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Skipf("no interfaces: %v", err)
	}
	for i := range ifs {
		ifi := &ifs[i]
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 {
			continue
		}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ifi, ipn.IP.To4()
			}
		}
	}
	t.Skip("no interface with multicast and an IPv4 address")
	return nil, nil
}

// §7 "Transport" over real UDP: the node's probes reach the IPv4 group
// 239.192.76.55, port 7655, and open with the document's keys; a beacon
// made from the document and sent to the group from an address of this
// host is dialled at that address and the port it names.
func TestDocBeaconOverMulticast(t *testing.T) {
	if testing.Short() {
		t.Skip("real multicast: not in -short")
	}
	if ok, why := multicastWorks(t); !ok {
		t.Skipf("multicast does not work on this machine: %s", why)
	}
	ctx := swarmCtx(t)
	ifi, ip := docMulticastIPv4(t)
	group := &net.UDPAddr{IP: net.IPv4(239, 192, 76, 55), Port: 7655}
	ear, err := net.ListenMulticastUDP("udp4", ifi, group)
	if err != nil {
		t.Skipf("joining the group on %s: %v", ifi.Name, err)
	}
	defer ear.Close()
	var dl dialLog
	hook, found := foundChan()
	a := startLANNodes(t, 1, 1, nil, func(int) *SwarmOptions {
		return &SwarmOptions{LAN: true, Listen: ":0", dialer: dl.dial, lanFoundHook: hook}
	})[0]
	key := a.core.SharedKey()
	port := uint16(a.sw.Addr().(*net.TCPAddr).Port)
	var self [16]byte = a.core.node

	// Other processes of this machine may beacon too: only what opens
	// under this database's key counts.
	ear.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang guard only
	buf := make([]byte, 128)
	for {
		n, from, err := ear.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for the node's probe on %s: %v", ifi.Name, err)
		}
		b, err := docOpenBeacon(key, buf[:n])
		if err != nil {
			continue
		}
		if b.node != self || b.port != port || b.kind != 'P' {
			t.Fatalf("a datagram of this database from %v: kind %q port %d node %x; want 'P', %d, %x",
				from, b.kind, b.port, b.node, port, self)
		}
		break
	}

	s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := setMulticastInterface(s, ifi, false); err != nil {
		t.Fatal(err)
	}
	node := docNode()
	if _, err := s.WriteToUDP(docSealBeacon(key, 'B', 4327, node), group); err != nil {
		t.Fatal(err)
	}
	waitFound(t, ctx, found, node)
	want := net.JoinHostPort(ip.String(), "4327")
	waitFor(t, ctx, "a dial of "+want, func() bool { return len(dl.dialled(want)) > 0 })
}
