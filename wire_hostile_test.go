package kappa

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime"
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
