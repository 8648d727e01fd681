package kappa

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Hostile peers: the test plays the far side of a replication session over
// a real connection. It passes the handshake (or fails it on purpose), then
// sends crafted frames. Each case checks the error that ends the honest
// side's session, that the honest database stored nothing, and that it then
// replicates correctly with an honest peer.

// hostileWait bounds how long a test waits for the honest side to end its
// session: a hang detector, far beyond what any case needs.
const hostileWait = 60 * time.Second

// hostile is the far end of a session, played by the test.
type hostile struct {
	t      testing.TB
	raw    net.Conn
	tls    *tls.Conn
	br     *bufio.Reader
	honest <-chan error // the honest side's Replicate result

	drained chan error // once drain is called, how its reading ended
}

// startHonest runs honest.Replicate on one end of a connection of kind and
// returns the other end, and where the honest side's result arrives.
func startHonest(t testing.TB, kind string, honest *Core, honestInitiator bool, opts *ReplicateOptions) (net.Conn, <-chan error) {
	t.Helper()
	mine, theirs := connPair(t, kind)
	res := make(chan error, 1)
	ctx := ctxT(t)
	go func() { res <- honest.Replicate(ctx, theirs, honestInitiator, opts) }()
	t.Cleanup(func() { mine.Close() })
	return mine, res
}

// meetHostile starts an honest session (the responder) and passes the real
// TLS and hello handshake against it, with its shared key.
func meetHostile(t testing.TB, kind string, honest *Core, opts *ReplicateOptions) *hostile {
	t.Helper()
	raw, res := startHonest(t, kind, honest, false, opts)
	s := &session{core: &Core{key: honest.SharedKey()}, raw: raw, initiator: true}
	ctx, cancel := context.WithTimeout(ctxT(t), hostileWait)
	defer cancel()
	if err := s.handshake(ctx); err != nil {
		t.Fatalf("the hostile side's handshake: %v", err)
	}
	return &hostile{t: t, raw: raw, tls: s.tls, br: s.br, honest: res}
}

// tlsOnly runs only the TLS part of the handshake on raw.
func tlsOnly(t testing.TB, raw net.Conn, initiator bool) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	cfg, err := tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	var c *tls.Conn
	if initiator {
		c = tls.Client(raw, cfg)
	} else {
		c = tls.Server(raw, cfg)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), hostileWait)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("the hostile side's TLS handshake: %v", err)
	}
	return c, bufio.NewReader(c)
}

// tlsDraining runs TLS as the initiator on raw and drops whatever arrives
// over it, so that the honest side is never stuck writing.
func tlsDraining(t testing.TB, raw net.Conn) *tls.Conn {
	t.Helper()
	c, br := tlsOnly(t, raw, true)
	go io.Copy(io.Discard, br)
	return c
}

// helloWith is a hello frame (length prefix included) for the TLS session
// c, with the given version and shared key.
func helloWith(t testing.TB, c *tls.Conn, initiator bool, key []byte, major, minor byte) []byte {
	t.Helper()
	cs := c.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	return frames(helloMessage{major: major, minor: minor, mac: helloMAC(key, ekm, initiator)}.encode())
}

// frames length-prefixes each message, as the writer does.
func frames(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.AppendUvarint(b, uint64(len(m)))
		b = append(b, m...)
	}
	return b
}

// send writes the messages, framed, in one write. It returns the write's
// error: once the honest side has given up, writes fail, and most cases
// do not care.
func (h *hostile) send(msgs ...[]byte) error {
	_, err := h.tls.Write(frames(msgs...))
	return err
}

// next reads one message from the honest side.
func (h *hostile) next() []byte {
	h.t.Helper()
	msg, err := readFrame(h.br, maxMessage)
	if err != nil {
		h.t.Fatalf("reading the honest side: %v (its session: %v)", err, h.result())
	}
	return msg
}

// until reads messages until one of type typ, and returns it.
func (h *hostile) until(typ byte) []byte {
	h.t.Helper()
	for {
		if msg := h.next(); msg[0] == typ {
			return msg
		}
	}
}

// drain reads and drops whatever the honest side sends, in the background,
// until the connection ends.
func (h *hostile) drain() {
	h.drained = make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, h.br)
		h.drained <- err
	}()
}

// result waits for the honest side's session to end and returns its error.
func (h *hostile) result() error {
	h.t.Helper()
	return waitHonest(h.t, h.honest)
}

func waitHonest(t testing.TB, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		t.Logf("the honest side: %v", err)
		return err
	case <-time.After(hostileWait):
		buf := make([]byte, 1<<20)
		t.Fatalf("the honest side's session did not end:\n%s", buf[:runtime.Stack(buf, true)])
		return nil
	}
}

// endCleanly plays an honest peer that wants nothing: synced, done, then
// read until the honest side's close_notify and close.
func (h *hostile) endCleanly() {
	h.t.Helper()
	if err := h.send(syncedMessage{}.encode(), doneMessage{}.encode()); err != nil {
		h.t.Fatal(err)
	}
	if h.drained == nil {
		h.drain()
	}
	if err := <-h.drained; err != nil {
		h.t.Fatalf("the honest side did not end with close_notify: %v", err)
	}
	h.tls.CloseWrite()
	if err := h.result(); err != nil {
		h.t.Fatalf("the honest side: %v, want nil", err)
	}
	h.raw.Close()
}

func feedMsg(id uint64, key []byte) []byte { return feedMessage{id, key}.encode() }

func haveMsg(id, length uint64, ranges ...span) []byte {
	return haveMessage{id, length, ranges}.encode()
}

func requestMsg(id, start, end, known uint64) []byte {
	return requestMessage{id, start, end, known}.encode()
}

func notAvailableMsg(id, start, end uint64) []byte {
	return notAvailableMessage{id, start, end}.encode()
}

type wireRequest = requestMessage

// parseRequest decodes a request the honest side sent.
func parseRequest(t testing.TB, msg []byte) wireRequest {
	t.Helper()
	return parseMessage[requestMessage](t, msg)
}

// parseMessage decodes a message the honest side sent, which must be an M.
func parseMessage[M message](t testing.TB, msg []byte) M {
	t.Helper()
	m, err := decodeMessage(msg)
	if err != nil {
		t.Fatalf("the honest side's message: %v", err)
	}
	mm, ok := m.(M)
	if !ok {
		t.Fatalf("the honest side sent %T, want %T", m, mm)
	}
	return mm
}

// dbImage is everything a database holds: each file's bytes, and each
// feed's length and count of blocks held.
type dbImage struct {
	files map[string]string
	feeds map[string][2]uint64
}

func imageOf(t testing.TB, c *Core) dbImage {
	t.Helper()
	ms, ok := c.store.(*MemStorage)
	if !ok {
		t.Fatalf("storage %T, want *MemStorage", c.store)
	}
	img := dbImage{files: map[string]string{}, feeds: map[string][2]uint64{}}
	for _, name := range ms.names() {
		b, _ := ms.fileBytes(name)
		img.files[name] = string(b)
	}
	for _, f := range c.Feeds() {
		img.feeds[string(f.Key())] = [2]uint64{f.Len(), f.Downloaded()}
	}
	return img
}

// unchanged fails the test if c no longer matches before.
func unchanged(t testing.TB, c *Core, before dbImage) {
	t.Helper()
	after := imageOf(t, c)
	if !maps.Equal(before.feeds, after.feeds) {
		t.Fatalf("feeds (length, held) changed: %x → %x", before.feeds, after.feeds)
	}
	for name, b := range after.files {
		if a, ok := before.files[name]; !ok || a != b {
			t.Fatalf("file %s changed (%d → %d bytes, existed: %v)", name, len(a), len(b), ok)
		}
	}
	if len(after.files) != len(before.files) {
		t.Fatalf("%d files, %d before", len(after.files), len(before.files))
	}
}

// recovers checks that honest replicates correctly with good, an honest
// peer, after a hostile one.
func recovers(t testing.TB, kind string, good, honest *Core) {
	t.Helper()
	mustReplicate(t, kind, good, honest)
	checkHas(t, good, honest)
	checkHas(t, honest, good)
}

// feedFixture is a writer's feed w in src, and a database honest that shares
// src's key and holds a replica x of w.
type feedFixture struct {
	src, honest *Core
	w, x        *Feed
}

// newFeedFixture makes w with n entries and gives honest the proof of
// w's [start, end) (none if start == end), then appends more to w.
func newFeedFixture(t testing.TB, n int, start, end uint64, more int) *feedFixture {
	t.Helper()
	src, honest := sharedPair(t, nil)
	w := mustWriter(t, src, "w")
	appendN(t, w, n, "v")
	fs, err := honest.AddFeeds(w.Key())
	if err != nil {
		t.Fatal(err)
	}
	x := fs[0]
	if start < end {
		p, err := w.Proof(start, end, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	if more > 0 {
		appendN(t, w, more, "more")
	}
	return &feedFixture{src: src, honest: honest, w: w, x: x}
}

// offer announces w as the hostile side's feed 0 with the have given,
// after the honest side's own announcements, and returns the request the
// honest side then makes.
func (h *hostile) offer(key []byte, have []byte) wireRequest {
	h.t.Helper()
	h.until(msgSynced)
	if err := h.send(feedMsg(0, key), have, syncedMessage{}.encode()); err != nil {
		h.t.Fatal(err)
	}
	return parseRequest(h.t, h.until(msgRequest))
}

func keyTag(key []byte) string { return fmt.Sprintf("%x", key[:4]) }

// TestHostileGarbageInsteadOfHandshake: a peer that sends no TLS, or
// anything but a well-formed hello of at most 64 bytes first, ends the
// honest side's session with ErrProtocol, and leaves its files as they
// were.
func TestHostileGarbageInsteadOfHandshake(t *testing.T) {
	cases := []struct {
		name string
		// play is the hostile side's part on its end of the connection.
		play func(t *testing.T, raw net.Conn)
	}{
		{"not TLS", func(t *testing.T, raw net.Conn) {
			go io.Copy(io.Discard, raw) // let the honest side write what it will
			raw.Write(bytes.Repeat([]byte("garbage!"), 100))
		}},
		{"a feed message instead of the hello", func(t *testing.T, raw net.Conn) {
			c := tlsDraining(t, raw)
			c.Write(frames(feedMsg(0, make([]byte, 32))))
		}},
		{"a hello over its 64 bytes", func(t *testing.T, raw net.Conn) {
			c := tlsDraining(t, raw)
			c.Write(frames(bytes.Repeat([]byte{msgHello}, 65)))
		}},
		{"a hello with the wrong magic", func(t *testing.T, raw net.Conn) {
			c := tlsDraining(t, raw)
			b := helloWith(t, c, true, make([]byte, 32), protoMajor, protoMinor)
			b[2] = 'C' // "KCPPA"
			c.Write(b)
		}},
		{"a hello one byte short", func(t *testing.T, raw net.Conn) {
			c := tlsDraining(t, raw)
			b := helloWith(t, c, true, make([]byte, 32), protoMajor, protoMinor)
			b[0]--
			c.Write(b[:len(b)-1])
		}},
		{"an empty message", func(t *testing.T, raw net.Conn) {
			c := tlsDraining(t, raw)
			c.Write([]byte{0})
		}},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 5, 0, 3, 0)
				before := imageOf(t, ff.honest)
				raw, res := startHonest(t, kind, ff.honest, false, nil)
				tc.play(t, raw)
				err := waitHonest(t, res)
				raw.Close()
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("got %v, want ErrProtocol", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// A peer without the shared key learns nothing: after the honest side's
// hello, it receives no byte but the end of the TLS stream.
func TestHostileWrongSharedKey(t *testing.T) {
	for _, kind := range connKinds {
		for _, honestInitiator := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/honest initiator %v", kind, honestInitiator), func(t *testing.T) {
				ff := newFeedFixture(t, 5, 0, 5, 0)
				before := imageOf(t, ff.honest)
				raw, res := startHonest(t, kind, ff.honest, honestInitiator, nil)
				c, br := tlsOnly(t, raw, !honestInitiator)
				wrong := bytes.Repeat([]byte{7}, 32)
				if _, err := c.Write(helloWith(t, c, !honestInitiator, wrong, protoMajor, protoMinor)); err != nil {
					t.Fatal(err)
				}
				hello, err := readFrame(br, 64)
				if err != nil || hello[0] != msgHello {
					t.Fatalf("the honest hello: %x, %v", hello, err)
				}
				rest, err := io.ReadAll(br)
				if len(rest) != 0 {
					t.Fatalf("after its hello the honest side sent %d bytes: %x", len(rest), rest)
				}
				if err != nil {
					t.Fatalf("the honest side's TLS stream ended with %v, want close_notify", err)
				}
				raw.Close()
				if err := waitHonest(t, res); !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("got %v, want ErrUnauthorized", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// A peer without the key that keeps the connection open is still told
// apart from a slow one: the honest side hangs up after Timeout with
// ErrUnauthorized.
func TestHostileWrongSharedKeyThatStaysConnected(t *testing.T) {
	ff := newFeedFixture(t, 5, 0, 5, 0)
	raw, res := startHonest(t, "tcp", ff.honest, false, &ReplicateOptions{Timeout: 300 * time.Millisecond})
	c, br := tlsOnly(t, raw, true)
	if _, err := c.Write(helloWith(t, c, true, make([]byte, 32), protoMajor, protoMinor)); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, br) // reads, and never hangs up
	if err := waitHonest(t, res); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("got %v, want ErrUnauthorized", err)
	}
}

func TestHostileWrongVersion(t *testing.T) {
	for _, kind := range connKinds {
		for _, major := range []byte{0, protoMajor + 1, 255} {
			t.Run(fmt.Sprintf("%s/major %d", kind, major), func(t *testing.T) {
				ff := newFeedFixture(t, 5, 0, 5, 0)
				before := imageOf(t, ff.honest)
				raw, res := startHonest(t, kind, ff.honest, false, nil)
				c, br := tlsOnly(t, raw, true)
				if _, err := c.Write(helloWith(t, c, true, ff.honest.SharedKey(), major, protoMinor)); err != nil {
					t.Fatal(err)
				}
				if hello, err := readFrame(br, 64); err != nil || hello[1+len(helloMagic)] != protoMajor {
					t.Fatalf("the honest hello: %x, %v", hello, err)
				}
				if rest, _ := io.ReadAll(br); len(rest) != 0 {
					t.Fatalf("after its hello the honest side sent %d bytes", len(rest))
				}
				raw.Close()
				if err := waitHonest(t, res); !errors.Is(err, ErrVersion) {
					t.Fatalf("got %v, want ErrVersion", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// Minor versions are compatible: a peer of 1.200 replicates.
func TestHostileNewerMinorVersionIsAccepted(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			raw, res := startHonest(t, kind, ff.honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			if _, err := c.Write(helloWith(t, c, true, ff.honest.SharedKey(), protoMajor, 200)); err != nil {
				t.Fatal(err)
			}
			if _, err := readFrame(br, 64); err != nil {
				t.Fatal(err)
			}
			h := &hostile{t: t, raw: raw, tls: c, br: br, honest: res}
			h.endCleanly()
		})
	}
}

func TestHostileOversizedLength(t *testing.T) {
	prefixes := map[string][]byte{
		"1<<62":            binary.AppendUvarint(nil, 1<<62),
		"maxMessage+1":     binary.AppendUvarint(nil, maxMessage+1),
		"over 64 bits":     bytes.Repeat([]byte{0xff}, 11),
		"zero":             {0},
		"max uint64":       binary.AppendUvarint(nil, ^uint64(0)),
		"1<<62 then bytes": append(binary.AppendUvarint(nil, 1<<62), bytes.Repeat([]byte{1}, 1000)...),
	}
	for _, kind := range connKinds {
		for name, prefix := range prefixes {
			t.Run(kind+"/"+name, func(t *testing.T) {
				ff := newFeedFixture(t, 5, 0, 3, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				h.drain()
				h.tls.Write(prefix)
				if err := h.result(); !errors.Is(err, ErrProtocol) {
					t.Fatalf("got %v, want ErrProtocol", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// readFrame refuses a length over its limit before it reads or allocates
// the body: the error is ErrProtocol, not a stream cut short, and nothing
// near the size was allocated.
func TestReadFrameChecksTheLengthFirst(t *testing.T) {
	for _, n := range []uint64{maxMessage + 1, 1 << 40, 1 << 62, ^uint64(0)} {
		r := bufio.NewReader(bytes.NewReader(binary.AppendUvarint(nil, n)))
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		_, err := readFrame(r, maxMessage)
		runtime.ReadMemStats(&m1)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("length %d: %v, want ErrProtocol", n, err)
		}
		if d := m1.TotalAlloc - m0.TotalAlloc; d > maxMessage/4 {
			t.Fatalf("length %d: %d bytes allocated", n, d)
		}
	}
}

func TestHostileMessageCutOff(t *testing.T) {
	cases := []struct {
		name string
		part []byte // what is sent of the message
	}{
		{"in its body", append(binary.AppendUvarint(nil, 100), bytes.Repeat([]byte{msgData}, 10)...)},
		{"in its length", []byte{0x80, 0x80}},
		{"after its length", binary.AppendUvarint(nil, 50)},
	}
	ends := []struct {
		name string
		end  func(h *hostile)
	}{
		{"close_notify", func(h *hostile) { h.tls.CloseWrite() }},
		{"closed connection", func(h *hostile) { h.raw.Close() }},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			for _, e := range ends {
				t.Run(kind+"/"+tc.name+"/"+e.name, func(t *testing.T) {
					ff := newFeedFixture(t, 5, 0, 3, 0)
					before := imageOf(t, ff.honest)
					h := meetHostile(t, kind, ff.honest, nil)
					h.until(msgSynced) // the honest side has written all it will
					h.drain()
					h.tls.Write(tc.part)
					e.end(h)
					if err := h.result(); !errors.Is(err, ErrPeerClosed) {
						t.Fatalf("got %v, want ErrPeerClosed", err)
					}
					unchanged(t, ff.honest, before)
					recovers(t, kind, ff.src, ff.honest)
				})
			}
		}
	}
}

// A hello cut off midway is a closed connection, not a protocol error.
func TestHostileHelloCutOff(t *testing.T) {
	for _, kind := range connKinds {
		for _, n := range []int{1, 10} {
			t.Run(fmt.Sprint(kind, "/", n, " bytes"), func(t *testing.T) {
				c := newCore(t, nil)
				raw, res := startHonest(t, kind, c, false, nil)
				tc, br := tlsOnly(t, raw, true)
				go io.Copy(io.Discard, br)
				hello := helloWith(t, tc, true, c.SharedKey(), protoMajor, protoMinor)
				tc.Write(hello[:n])
				tc.CloseWrite()
				if err := waitHonest(t, res); !errors.Is(err, ErrPeerClosed) {
					t.Fatalf("got %v, want ErrPeerClosed", err)
				}
			})
		}
	}
}

// TestHostileMessageForAFeedNeverOffered: messages about feeds the hostile
// side never offered, or out of turn.
func TestHostileMessageForAFeedNeverOffered(t *testing.T) {
	cases := []struct {
		name string
		msgs func(ff *feedFixture) [][]byte
	}{
		{"have", func(*feedFixture) [][]byte { return [][]byte{haveMsg(0, 3, span{0, 3})} }},
		{"have after one feed", func(ff *feedFixture) [][]byte {
			return [][]byte{feedMsg(0, ff.w.Key()), haveMsg(1, 3, span{0, 3})}
		}},
		{"data", func(ff *feedFixture) [][]byte {
			p, _ := ff.w.Proof(0, 1, 0)
			return [][]byte{encodeData(0, p)}
		}},
		{"not available", func(*feedFixture) [][]byte { return [][]byte{notAvailableMsg(0, 0, 1)} }},
		{"request", func(*feedFixture) [][]byte { return [][]byte{requestMsg(1, 0, 1, 0)} }},
		{"request, id past 64 bits", func(*feedFixture) [][]byte { return [][]byte{requestMsg(^uint64(0), 0, 1, 0)} }},
		{"feed announced with id 5 first", func(ff *feedFixture) [][]byte { return [][]byte{feedMsg(5, ff.w.Key())} }},
		{"feed announced twice with id 0", func(ff *feedFixture) [][]byte {
			return [][]byte{feedMsg(0, ff.w.Key()), feedMsg(0, ff.w.Key())}
		}},
		{"unknown message type", func(*feedFixture) [][]byte { return [][]byte{{9}} }},
		{"synced twice", func(*feedFixture) [][]byte { return [][]byte{syncedMessage{}.encode(), syncedMessage{}.encode()} }},
		{"done twice", func(*feedFixture) [][]byte { return [][]byte{doneMessage{}.encode(), doneMessage{}.encode()} }},
		{"ping with a body", func(*feedFixture) [][]byte { return [][]byte{{msgPing, 0}} }},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				// The honest side holds one feed (its id 0) whose writer the
				// test can sign with.
				ff := newFeedFixture(t, 5, 0, 3, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				h.drain()
				h.send(tc.msgs(ff)...)
				if err := h.result(); !errors.Is(err, ErrProtocol) {
					t.Fatalf("got %v, want ErrProtocol", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBadProof: the honest side holds w's tree at length 16 with
// blocks [0, 8), so it asks for [8, 16) knowing length 16, and the answer
// is a proof without a signature that must meet the tree it holds.
// Tampered, it is asked for again with known = 0 (unless it claims another
// length); tampered again (and still unsigned), it is ErrBadProof naming
// the feed.
func TestHostileBadProof(t *testing.T) {
	tamper := []struct {
		name string
		f    func(p *Proof)
	}{
		{"node hash flipped", func(p *Proof) { p.Nodes[0].Hash[0] ^= 1 }},
		{"node size changed", func(p *Proof) { p.Nodes[0].Size++ }},
		{"node index changed", func(p *Proof) { p.Nodes[0].Index += 2 }},
		{"node missing", func(p *Proof) { p.Nodes = p.Nodes[1:] }},
		{"node added", func(p *Proof) { p.Nodes = append(p.Nodes, p.Nodes[0]) }},
		{"block flipped", func(p *Proof) { p.Blocks[3] = append([]byte("X"), p.Blocks[3][1:]...) }},
		{"block longer", func(p *Proof) { p.Blocks[0] = append(p.Blocks[0], 0) }},
		{"blocks swapped", func(p *Proof) { p.Blocks[0], p.Blocks[1] = p.Blocks[1], p.Blocks[0] }},
		{"length shorter", func(p *Proof) { p.Length = 15 }},
	}
	for _, kind := range connKinds {
		for _, tc := range tamper {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 16, 0, 8, 0)
				if ff.x.Len() != 16 || ff.x.Downloaded() != 8 {
					t.Fatalf("fixture: length %d, held %d", ff.x.Len(), ff.x.Downloaded())
				}
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				r := h.offer(ff.w.Key(), haveMsg(0, 16, span{0, 16}))
				if r != (wireRequest{0, 8, 16, 16}) {
					t.Fatalf("request %+v", r)
				}
				p, err := ff.w.Proof(r.start, r.end, r.known)
				if err != nil {
					t.Fatal(err)
				}
				if p.Signature != nil || len(p.Nodes) == 0 {
					t.Fatalf("want an unsigned proof with nodes: %+v", p)
				}
				tc.f(p)
				if p.Length == r.known {
					// An unsigned answer at the length asked that misses
					// the tree may come from a peer with another history
					// (a fork): it is asked again with known = 0, and an
					// unsigned answer to that is the error.
					h.send(encodeData(r.id, p))
					again := parseRequest(t, h.until(msgRequest))
					if again != (wireRequest{0, 8, 16, 0}) {
						t.Fatalf("asked again %+v, want [8, 16) knowing 0", again)
					}
				}
				h.drain()
				h.send(encodeData(r.id, p))
				err = h.result()
				if !errors.Is(err, ErrBadProof) || !strings.Contains(err.Error(), keyTag(ff.w.Key())) {
					t.Fatalf("got %v, want ErrBadProof naming feed %s", err, keyTag(ff.w.Key()))
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBadSignature: the honest side holds an empty replica, so the
// answer carries a signature. Anything tampered under it, a node hash
// included, changes the roots, and the signature no longer signs them:
// ErrBadSignature.
func TestHostileBadSignature(t *testing.T) {
	tamper := []struct {
		name string
		// f tampers with p; old is the writer's signature at length 6.
		f func(p *Proof, old []byte)
	}{
		{"signature flipped", func(p *Proof, _ []byte) { p.Signature[10] ^= 1 }},
		{"signature zeroed", func(p *Proof, _ []byte) { p.Signature = make([]byte, 64) }},
		{"node hash flipped", func(p *Proof, _ []byte) { p.Nodes[0].Hash[31] ^= 0x80 }},
		{"block flipped", func(p *Proof, _ []byte) { p.Blocks[0] = []byte("forged") }},
		{"the signature of another length", func(p *Proof, old []byte) { p.Signature = old }},
	}
	for _, kind := range connKinds {
		for _, tc := range tamper {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 6, 0, 0, 0)
				old, err := ff.w.Proof(0, 6, 0)
				if err != nil {
					t.Fatal(err)
				}
				appendN(t, ff.w, 2, "more")
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				// Offer only [0, 4): the proof then needs the node over [4, 8).
				r := h.offer(ff.w.Key(), haveMsg(0, 8, span{0, 4}))
				if r != (wireRequest{0, 0, 4, 0}) {
					t.Fatalf("request %+v", r)
				}
				p, err := ff.w.Proof(r.start, r.end, r.known)
				if err != nil {
					t.Fatal(err)
				}
				if p.Signature == nil || len(p.Nodes) != 1 {
					t.Fatalf("want a signed proof with one node: %+v", p)
				}
				tc.f(p, old.Signature)
				h.drain()
				h.send(encodeData(r.id, p))
				err = h.result()
				if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), keyTag(ff.w.Key())) {
					t.Fatalf("got %v, want ErrBadSignature naming feed %s", err, keyTag(ff.w.Key()))
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBlockPastTheSignedLength: the hostile side claims 11 entries
// of a feed whose writer signed 10, and answers the request for entry 10
// with a forged block. The message is well formed and answers the request,
// so it is not a protocol error: it is the proof that cannot reach the
// block. A block past the length the proof claims, or a longer length
// without a signature, is ErrBadProof; a longer length with the signature
// of the shorter one is ErrBadSignature. An answer at another position than
// asked is ErrProtocol.
func TestHostileBlockPastTheSignedLength(t *testing.T) {
	cases := []struct {
		name string
		want error
		data func(ff *feedFixture, sig []byte) *Proof
	}{
		{"past the proof's length", ErrBadProof, func(_ *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Length: 10, Signature: sig}
		}},
		{"a longer length, unsigned", ErrBadProof, func(ff *feedFixture, _ []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Nodes: rootsAt10(ff), Length: 11}
		}},
		{"a longer length, the shorter one's signature", ErrBadSignature, func(ff *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Nodes: rootsAt10(ff), Length: 11, Signature: sig}
		}},
		{"at another position than asked", ErrProtocol, func(_ *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 11, Blocks: [][]byte{[]byte("forged")}, Length: 12, Signature: sig}
		}},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 10, 0, 10, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				r := h.offer(ff.w.Key(), haveMsg(0, 11, span{0, 11}))
				if r != (wireRequest{0, 10, 11, 10}) {
					t.Fatalf("request %+v", r)
				}
				real, err := ff.w.Proof(0, 10, 0)
				if err != nil || real.Length != 10 {
					t.Fatal(real, err)
				}
				h.drain()
				h.send(encodeData(r.id, tc.data(ff, real.Signature)))
				if err := h.result(); !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// rootsAt10 returns the roots of w's tree at length 10, [0, 8) and
// [8, 10): with block 10, all the nodes a proof at length 11 needs.
func rootsAt10(ff *feedFixture) []Node {
	p, err := ff.w.Proof(10, 10, 0)
	if err != nil || len(p.Nodes) != 2 || p.Nodes[0].Index != 7 || p.Nodes[1].Index != 17 {
		panic(fmt.Sprint("the roots at 10: ", p, err))
	}
	return p.Nodes
}

// Valid, signed blocks that nobody asked for are refused before any is
// written: the honest side holds [0, 5) at length 5 and is offered no
// more, while the writer has signed 10.
func TestHostileFloodOfUnrequestedData(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 5)
			before := imageOf(t, ff.honest)
			h := meetHostile(t, kind, ff.honest, nil)
			h.until(msgSynced)
			h.drain()
			var msgs [][]byte
			msgs = append(msgs, feedMsg(0, ff.w.Key()), haveMsg(0, 5, span{0, 5}), syncedMessage{}.encode())
			for i := range 200 {
				s := uint64(5 + i%5)
				p, err := ff.w.Proof(s, s+1, 0)
				if err != nil {
					t.Fatal(err)
				}
				msgs = append(msgs, encodeData(0, p))
			}
			h.send(msgs...)
			if err := h.result(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
			unchanged(t, ff.honest, before)
			if ff.x.Len() != 5 || ff.x.Downloaded() != 5 {
				t.Fatalf("the replica has length %d, holds %d", ff.x.Len(), ff.x.Downloaded())
			}
			recovers(t, kind, ff.src, ff.honest)
		})
	}
}

// bigWriter gives c a writer of n blocks of size bytes.
func bigWriter(t testing.TB, c *Core, n, size int) *Feed {
	t.Helper()
	w := mustWriter(t, c, "big")
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = bytes.Repeat([]byte{byte(i)}, size)
	}
	if _, err := w.Append(vals...); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestHostileStopsReading: a peer that asks for 64 MiB and stops reading
// (while it keeps sending pings, so the honest side hears from it) blocks
// the honest side's writes: ErrTimeout.
func TestHostileStopsReading(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out time-outs of seconds")
	}
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			good, honest := sharedPair(t, nil)
			bigWriter(t, honest, 64, 64<<10)
			before := imageOf(t, honest)
			opts := &ReplicateOptions{Timeout: time.Second, KeepAlive: 200 * time.Millisecond}
			h := meetHostile(t, kind, honest, opts)
			h.until(msgSynced)
			var reqs [][]byte
			for range maxOutstanding {
				reqs = append(reqs, requestMsg(0, 0, 64, 0))
			}
			if err := h.send(reqs...); err != nil {
				t.Fatal(err)
			}
			// Ping, never read.
			var err error
			ping := time.NewTicker(100 * time.Millisecond)
			defer ping.Stop()
			deadline := time.NewTimer(hostileWait)
			defer deadline.Stop()
			for done := false; !done; {
				select {
				case err = <-h.honest:
					done = true
				case <-ping.C:
					h.send(pingMessage{}.encode())
				case <-deadline.C:
					t.Fatalf("the honest side's session did not end in %v", hostileWait)
				}
			}
			t.Logf("the honest side: %v", err)
			if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "write") {
				t.Fatalf("got %v, want ErrTimeout for a blocked write", err)
			}
			unchanged(t, honest, before)
			recovers(t, kind, good, honest)
		})
	}
}

// A peer that asks without reading the answers would make the honest side
// queue answers without bound. An honest peer has at most maxOutstanding
// requests in flight, and a request stays in flight until the peer has
// read its answer, which it cannot before the honest side has written it;
// so more than that many answers waiting to be written is a peer breaking
// the protocol: ErrProtocol.
func TestHostileRequestFlood(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			good, honest := sharedPair(t, nil)
			bigWriter(t, honest, 64, 4<<10) // 256 KiB an answer
			before := imageOf(t, honest)
			h := meetHostile(t, kind, honest, nil)
			h.until(msgSynced)
			var reqs [][]byte
			for range 1000 {
				reqs = append(reqs, requestMsg(0, 0, 64, 0))
			}
			h.send(reqs...) // and never read
			if err := h.result(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
			unchanged(t, honest, before)
			recovers(t, kind, good, honest)
		})
	}
}

// TestHostileFullPipelineIsNotAFlood: the bound is not hit by a peer that
// uses all of its maxOutstanding requests at once and reads the answers
// late.
func TestHostileFullPipelineIsNotAFlood(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			_, honest := sharedPair(t, nil)
			w := bigWriter(t, honest, 64, 4<<10)
			// The honest side handles messages in order: once it has
			// considered the feed offered after a round's requests, it
			// has taken all of them, while its writer is blocked.
			considered := make(chan struct{}, 1)
			opts := &ReplicateOptions{Accept: func([]byte) bool {
				considered <- struct{}{}
				return false
			}}
			h := meetHostile(t, kind, honest, opts)
			h.until(msgSynced)
			for round := range 3 {
				var reqs [][]byte
				for range maxOutstanding {
					reqs = append(reqs, requestMsg(0, 0, 64, 0))
				}
				reqs = append(reqs, feedMsg(uint64(round), bytes.Repeat([]byte{byte(round)}, 32)))
				if err := h.send(reqs...); err != nil {
					t.Fatal(err)
				}
				await(t, considered, "the honest side taking the requests")
				for i := range maxOutstanding {
					msg := h.until(msgData)
					m := parseMessage[dataMessage](t, msg)
					if m.id != 0 {
						t.Fatalf("round %d, answer %d: feed %d", round, i, m.id)
					}
					p := m.p
					if len(p.Blocks) != 64 {
						t.Fatalf("round %d, answer %d: %d blocks", round, i, len(p.Blocks))
					}
					// Format 4: the block is 0x00 (no context) ‖ the value.
					if !bytes.Equal(p.Blocks[63], append([]byte{0}, bytes.Repeat([]byte{63}, 4<<10)...)) {
						t.Fatal("a wrong block")
					}
				}
			}
			_ = w
			h.endCleanly()
		})
	}
}

// A slow link is not a silent peer: a large message that arrives a little
// at a time, for several times Timeout, keeps the session alive.
func TestSlowMessageIsNotATimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out time-outs of seconds")
	}
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 0)
			before := imageOf(t, ff.honest)
			opts := &ReplicateOptions{
				Timeout: time.Second, KeepAlive: 100 * time.Millisecond,
				Accept: func([]byte) bool { return false },
			}
			h := meetHostile(t, kind, ff.honest, opts)
			h.until(msgSynced)
			h.drain()
			var ranges []span
			for i := range uint64(10000) {
				ranges = append(ranges, span{2 * i, 2*i + 1})
			}
			b := frames(feedMsg(0, ff.w.Key()), haveMsg(0, 20000, ranges...))
			start := time.Now()
			for len(b) > 0 {
				n := min(len(b), 250)
				if _, err := h.tls.Write(b[:n]); err != nil {
					t.Fatalf("after %v: %v (the honest side: %v)", time.Since(start), err, h.result())
				}
				b = b[n:]
				time.Sleep(50 * time.Millisecond) // a 20th of the timeout
			}
			if time.Since(start) < 3*opts.Timeout {
				t.Fatalf("the message took only %v", time.Since(start))
			}
			h.endCleanly()
			unchanged(t, ff.honest, before)
		})
	}
}

// TestSlowReaderIsNotATimeout: a slow link is not a blocked write: a peer
// that reads a 4 MiB answer a little at a time, for several times Timeout,
// gets all of it.
func TestSlowReaderIsNotATimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out time-outs of seconds")
	}
	_, honest := sharedPair(t, nil)
	// Values of 64 KiB − 1: blocks (0x00 ‖ value, format 4) of 64 KiB,
	// so that all 64 fit the answer's bound of 4 MiB.
	bigWriter(t, honest, 64, 64<<10-1)
	before := imageOf(t, honest)
	opts := &ReplicateOptions{Timeout: time.Second, KeepAlive: 100 * time.Millisecond}
	h := meetHostile(t, "pipe", honest, opts) // no buffer in between
	h.until(msgSynced)
	if err := h.send(requestMsg(0, 0, 64, 0)); err != nil {
		t.Fatal(err)
	}
	stopPings := make(chan struct{})
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		for {
			select {
			case <-stopPings:
				return
			case <-time.After(50 * time.Millisecond):
				h.send(pingMessage{}.encode())
			}
		}
	}()
	start := time.Now()
	slow := bufio.NewReaderSize(&slowReader{r: h.br, n: 16 << 10, pause: 15 * time.Millisecond}, 16<<10)
	var msg []byte
	for {
		m, err := readFrame(slow, maxMessage)
		if err != nil {
			t.Fatalf("after %v: %v (the honest side: %v)", time.Since(start), err, h.result())
		}
		if m[0] == msgData {
			msg = m
			break
		}
	}
	close(stopPings)
	<-pinged
	if time.Since(start) < 3*opts.Timeout {
		t.Fatalf("the answer took only %v", time.Since(start))
	}
	if m := parseMessage[dataMessage](t, msg); len(m.p.Blocks) != 64 {
		t.Fatalf("the answer: %d blocks", len(m.p.Blocks))
	}
	h.br = slow // what it buffered is the honest side's too
	h.endCleanly()
	unchanged(t, honest, before)
}

// slowReader reads at most n bytes at a time, after a pause.
type slowReader struct {
	r     io.Reader
	n     int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), s.n)])
}
