package kappa

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Fuzzing the replication protocol's decoders: one message at a time into
// a session that has done no network I/O (FuzzWireMessage), and a whole
// stream of frames into a real session after a real handshake
// (FuzzWireSession). Whatever arrives, nothing panics, a session ends, and
// nothing unverified is stored.

// wireFuzzKey is the shared key of the fuzzed sessions, so that seeds and
// the fuzzer's inputs mean the same thing every run.
var wireFuzzKey = bytes.Repeat([]byte{0x5a}, 32)

// wireFuzzSource is the writer's side: w holds 16 entries; vals are their
// values.
type wireFuzzSource struct {
	w    *Feed
	vals [][]byte
	p08  *Proof // w's [0, 8) at length 16, signed
}

func newWireFuzzSource(f *testing.F) *wireFuzzSource {
	src := newCore(f, &Options{SharedKey: wireFuzzKey})
	w := mustWriter(f, src, "w")
	appendN(f, w, 16, "v")
	vals, err := w.GetBatch(context.Background(), 0, 16)
	if err != nil {
		f.Fatal(err)
	}
	p08, err := w.Proof(0, 8, 0)
	if err != nil {
		f.Fatal(err)
	}
	return &wireFuzzSource{w: w, vals: vals, p08: p08}
}

// honest makes the fuzzed side's database: x, a replica of w holding
// [0, 8) at length 16 (its id 0 in a session), and own, a writer of 3
// entries (id 1).
func (src *wireFuzzSource) honest(t testing.TB) (c *Core, x, own *Feed) {
	t.Helper()
	c = newCore(t, &Options{SharedKey: wireFuzzKey})
	fs, err := c.AddFeeds(src.w.Key())
	if err != nil {
		t.Fatal(err)
	}
	x = fs[0]
	if err := x.Put(src.p08); err != nil {
		t.Fatal(err)
	}
	own = mustWriter(t, c, "own")
	appendN(t, own, 3, "o")
	return c, x, own
}

// intact fails the test if c holds anything it could not have verified:
// x's blocks must be w's, own must be as written, and any feed the fuzzer
// made up must be empty (nobody can sign for it).
func (src *wireFuzzSource) intact(t testing.TB, c *Core, x, own *Feed) {
	t.Helper()
	if x.Len() != 16 {
		t.Fatalf("the replica's length is %d, want 16", x.Len())
	}
	for i := uint64(0); i < x.Len(); i++ {
		if !x.Has(i) {
			continue
		}
		v, err := x.Get(context.Background(), i)
		if err != nil {
			t.Fatalf("replica entry %d: %v", i, err)
		}
		if !bytes.Equal(v, src.vals[i]) {
			t.Fatalf("replica entry %d = %q, want %q", i, v, src.vals[i])
		}
	}
	if !x.HasRange(0, 8) {
		t.Fatal("the replica lost entries")
	}
	if own.Len() != 3 || own.Downloaded() != 3 {
		t.Fatalf("the writer has length %d, holds %d", own.Len(), own.Downloaded())
	}
	for i := range uint64(3) {
		if v, err := own.Get(context.Background(), i); err != nil || string(v) != fmt.Sprint("o", i) {
			t.Fatalf("own entry %d = %q, %v", i, v, err)
		}
	}
	for _, f := range c.Feeds() {
		if f != x && f != own && (f.Len() != 0 || f.Downloaded() != 0) {
			t.Fatalf("feed %x, made up by the peer, has length %d", f.Key()[:4], f.Len())
		}
	}
}

// sessionErrors are the errors a session may end with whatever the peer
// sends (nil too: a peer may end it properly).
var sessionErrors = []error{ErrProtocol, ErrPeerClosed, ErrVerify, ErrTimeout}

func isSessionError(err error) bool {
	for _, e := range sessionErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return err == nil
}

// FuzzWireSession writes the input into a session, live or not, after a
// real handshake over net.Pipe, then closes the stream. The input is written frame by
// frame as far as it parses as frames, and an answer (data or not
// available) only once the honest side has sent a request for it to answer
// or has handled everything written so far and waits (so that answers can
// meet requests); the rest is written raw. The stream is closed once the
// honest side ended or waits again. The honest side must end its session
// with nil or one of its documented errors, in bounded time, holding
// nothing unverified.
func FuzzWireSession(f *testing.F) {
	src := newWireFuzzSource(f)
	w := src.w
	seeds := wireSessionSeeds(f, w)
	for _, live := range []bool{false, true} {
		for _, s := range seeds {
			f.Add(live, frames(s...))
		}
		f.Add(live, []byte{})
		f.Add(live, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	}
	// The honest session's loop says when it waits having handled n
	// messages (one session at a time: fuzz inputs run one by one).
	var idleCore atomic.Pointer[Core]
	var idleAt atomic.Uint64
	idle := make(chan struct{}, 1)
	testHookIdle = func(s *session) {
		if s.core == idleCore.Load() {
			idleAt.Store(s.handled)
			select {
			case idle <- struct{}{}:
			default:
			}
		}
	}
	f.Cleanup(func() { testHookIdle = nil })
	f.Fuzz(func(t *testing.T, live bool, in []byte) {
		c, x, own := src.honest(t)
		idleCore.Store(c)
		idleAt.Store(0)
		// A hang detector: an honest session ends as soon as the stream
		// does, well within this.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		mine, theirs := net.Pipe()
		defer mine.Close()
		res := make(chan error, 1)
		go func() {
			res <- c.Replicate(ctx, theirs, false, &ReplicateOptions{Live: live, Timeout: 5 * time.Second, KeepAlive: time.Second})
		}()
		s := &session{core: &Core{key: wireFuzzKey}, raw: mine, initiator: true}
		if err := s.handshake(ctx); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		reqs, eof := readRequests(s)
		// settled waits until the honest side ended, or waits having
		// handled the written messages (or, with a request, sent one).
		var written uint64
		settled := func(reqs <-chan struct{}) {
			for idleAt.Load() != written {
				select {
				case <-reqs:
					return
				case <-eof:
					return
				case <-idle:
				case <-ctx.Done():
					return
				}
			}
		}
		rest := in
		for len(rest) > 0 {
			n, k := binary.Uvarint(rest)
			if k <= 0 || n == 0 || n > uint64(len(rest)-k) {
				break
			}
			if typ := rest[k]; typ == msgData || typ == msgNotAvailable {
				settled(reqs)
			}
			if _, err := s.tls.Write(rest[:k+int(n)]); err != nil {
				break
			}
			written++
			rest = rest[k+int(n):]
		}
		s.tls.Write(rest)
		// Let a session that is ending properly say so.
		settled(nil)
		s.tls.CloseWrite()
		err := <-res
		mine.Close()
		t.Logf("the session: %v", err)
		if ctx.Err() != nil {
			t.Fatalf("the session did not end: %v", err)
		}
		if !isSessionError(err) {
			t.Fatalf("the session ended with %v", err)
		}
		src.intact(t, c, x, own)
	})
}

// wireSessionSeeds are FuzzWireSession's seeds: streams of messages of a
// peer that offers w's feed, answers, requests, refuses, and breaks the
// rules.
func wireSessionSeeds(f *testing.F, w *Feed) [][][]byte {
	p816, err := w.Proof(8, 16, 16) // unsigned: the honest side knows length 16
	if err != nil {
		f.Fatal(err)
	}
	bad := *p816
	bad.Nodes = append([]Node(nil), p816.Nodes...)
	bad.Nodes[0].Hash[0] ^= 1
	other := bytes.Repeat([]byte{1}, 32)
	offer := [][]byte{feedMsg(0, w.Key()), haveMsg(0, 16, span{0, 16}), syncedMessage{}.encode()}
	seeds := [][][]byte{
		{syncedMessage{}.encode(), doneMessage{}.encode()},
		offer,
		append(offer, encodeData(0, p816), doneMessage{}.encode()),
		append(offer, encodeData(0, &bad)),
		append(offer, notAvailableMsg(0, 8, 16), doneMessage{}.encode()),
		{requestMsg(0, 0, 8, 0), requestMsg(1, 0, 3, 0), requestMsg(0, 8, 16, 16), syncedMessage{}.encode(), doneMessage{}.encode()},
		{feedMsg(0, other), haveMsg(0, 5, span{0, 2}, span{3, 5}), syncedMessage{}.encode(), pingMessage{}.encode(), doneMessage{}.encode()},
		{feedMsg(0, w.Key()), feedMsg(1, w.Key()), haveMsg(1, 16, span{8, 16}), syncedMessage{}.encode(), notAvailableMsg(1, 8, 16), doneMessage{}.encode()},
		{haveMsg(0, 1, span{0, 1})},
		{{9}},
	}
	return seeds
}

// readRequests reads the honest side's messages from s in the background:
// a token on reqs for each request, and eof closed at the end.
func readRequests(s *session) (reqs, eof chan struct{}) {
	reqs = make(chan struct{}, 1024)
	eof = make(chan struct{})
	go func() {
		defer close(eof)
		for {
			msg, err := readFrame(s.br, maxMessage)
			if err != nil {
				return
			}
			if msg[0] == msgRequest {
				select {
				case reqs <- struct{}{}:
				default:
				}
			}
		}
	}()
	return reqs, eof
}

// wireFuzzSession is a session of c that has done no network I/O, in the
// state of one that has met a peer: its own feeds announced (x is id 0,
// own id 1); the peer's feeds 0 (w's, of which it holds [0, 16)), 1
// (declined) and 2 (own's, which c writes); and one request in flight,
// for [8, 16) of the peer's feed 0.
func wireFuzzSession(t testing.TB, c *Core, x, own *Feed, live bool) *session {
	t.Helper()
	s := &session{core: c, mineID: map[*Feed]uint64{}, sentHave: map[*Feed]haveState{}}
	s.opts.Live = live
	startStores(s)
	s.announce()
	if len(s.mine) != 2 || s.mine[0] != x || s.mine[1] != own {
		t.Fatalf("announced %v", s.mine)
	}
	s.peers = []*peerFeed{
		{id: 0, key: x.Key(), local: x, length: 16, have: []span{{0, 16}}},
		{id: 1, key: bytes.Repeat([]byte{1}, 32), length: 3, have: []span{{0, 3}}},
		{id: 2, key: own.Key(), local: own, length: 3, have: []span{{0, 3}}},
	}
	for _, pf := range s.peers {
		s.trimWants(pf)
	}
	if err := s.fetch(); err != nil {
		t.Fatal(err)
	}
	if len(s.outstanding) != 1 || s.outstanding[0] != (request{pf: s.peers[0], start: 8, end: 16, known: 16}) {
		t.Fatalf("in flight: %v", s.outstanding)
	}
	s.out = nil // what a writer would have sent
	return s
}

// startStores and settleStores stand in for the session's storers: they
// verify and store the answers handle took, as the loop would.
func startStores(s *session) {
	s.storeJobs = make(chan storeJob, 2*maxOutstanding)
}

func settleStores(s *session) error {
	for {
		select {
		case j := <-s.storeJobs:
			before := j.r.pf.local.Len()
			if err := s.storedAnswer(storeResult{r: j.r, err: j.r.pf.local.Put(j.p), unsignedAt: unsignedAt(j.p), lenBefore: before}); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// FuzzWireMessage hands the input, as one message (type and body), to a
// session's handle, live or not. Nothing panics; an error is ErrProtocol, or ErrVerify
// for an answer whose proof fails, and leaves every file as it was; and
// whatever is stored is verified.
func FuzzWireMessage(f *testing.F) {
	src := newWireFuzzSource(f)
	w := src.w
	proof := func(start, end, known uint64) *Proof {
		p, err := w.Proof(start, end, known)
		if err != nil {
			f.Fatal(err)
		}
		return p
	}
	p816 := proof(8, 16, 16) // the answer to the request in flight
	bad := *p816
	bad.Nodes = append([]Node(nil), p816.Nodes...)
	bad.Nodes[0].Hash[0] ^= 1
	for _, msg := range [][]byte{
		encodeData(0, p816),
		encodeData(0, proof(8, 12, 16)), // a prefix of it
		encodeData(0, proof(8, 16, 0)),  // signed
		encodeData(0, &bad),
		encodeData(0, proof(9, 16, 16)), // not at the start asked
		encodeData(2, proof(8, 16, 16)), // for another feed
		notAvailableMsg(0, 8, 16),
		notAvailableMsg(0, 8, 12),
		feedMsg(3, bytes.Repeat([]byte{2}, 32)),
		feedMsg(3, w.Key()),
		haveMsg(0, 16, span{0, 16}),
		haveMsg(0, 20, span{0, 3}, span{9, 20}),
		haveMsg(1, 3, span{0, 3}),
		haveMsg(2, 5, span{0, 5}),
		requestMsg(0, 0, 8, 0),
		requestMsg(0, 0, 8, 16),
		requestMsg(0, 8, 16, 16),
		requestMsg(1, 0, 3, 0),
		requestMsg(1, 1, 2, 2),
		syncedMessage{}.encode(),
		doneMessage{}.encode(),
		pingMessage{}.encode(),
		{msgHello},
		{9},
		{},
	} {
		f.Add(false, msg)
		f.Add(true, msg)
	}
	f.Fuzz(func(t *testing.T, live bool, msg []byte) {
		c, x, own := src.honest(t)
		s := wireFuzzSession(t, c, x, own, live)
		before := imageOf(t, c)
		err := s.handle(msg)
		if err == nil {
			err = settleStores(s)
		}
		t.Logf("handle: %v", err)
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrVerify) {
				t.Fatalf("handle: %v, want ErrProtocol or ErrVerify", err)
			}
			unchanged(t, c, before)
		}
		src.intact(t, c, x, own)
		s.outMu.Lock()
		queued := len(s.out)
		s.outMu.Unlock()
		if queued > 1 {
			t.Fatalf("one message queued %d", queued)
		}
		if err != nil {
			return
		}
		// The session goes on: it asks for what it still lacks, within
		// its bounds.
		s.pendingNew = nil // (adding feeds is FuzzWireSession's)
		if err := s.fetch(); err != nil {
			t.Fatal(err)
		}
		if len(s.outstanding) > maxOutstanding {
			t.Fatalf("%d requests in flight", len(s.outstanding))
		}
		for _, r := range s.outstanding {
			if r.pf.local == nil || r.pf.local.Writable() || r.start >= r.end || r.end-r.start > maxRequestBlocks {
				t.Fatalf("a request for [%d, %d) of %v", r.start, r.end, r.pf.local)
			}
		}
	})
}
