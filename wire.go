package kappa

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The replication protocol: see doc/PROTOCOL.md.

const (
	protoMajor = 1
	protoMinor = 1

	// maxMessage is the largest message either side accepts: one block of
	// MaxBlockSize with its proof fits.
	maxMessage = MaxBlockSize + 1<<20

	// A request asks for at most maxRequestBlocks blocks; the answer holds
	// a prefix of them of at most maxAnswerBytes (but at least one block).
	maxRequestBlocks = 1024
	maxAnswerBytes   = 4 << 20

	// maxOutstanding bounds the requests a side may have in flight, and so
	// the bytes in flight: the peer's are checked against it.
	maxOutstanding = 16

	// maxInFlightBytes bounds what a side asks for before it stored what
	// it got, by the size of the blocks seen so far (one request always
	// goes out).
	maxInFlightBytes = 16 << 20

	exporterLabel = "EXPORTER-kappa-replicate-v1"
)

// ReplicateOptions configure a replication session. The zero value (and
// nil) means non-live, accepting every feed the peer offers.
type ReplicateOptions struct {
	// Live keeps the session open after the first exchange: new entries
	// and new feeds, on either side, are sent as they appear, until the
	// context ends or the peer says goodbye.
	Live bool

	// Accept, if set, decides whether to take a feed the peer offers (by
	// its public key). A declined feed is neither added nor fetched.
	Accept func(key []byte) bool

	// Progress, if set, is called from the session's goroutine whenever
	// its progress changes. It must not block.
	Progress func(ReplicateProgress)

	// KeepAlive is how often a quiet session sends a ping (default 5 s):
	// every KeepAlive/2 the session pings if it wrote nothing since the
	// last look, and checks Timeout.
	// Timeout ends the session with ErrTimeout when nothing arrives from
	// the peer for that long, or a write to it moves no byte for that long
	// (default 30 s). Bytes count as they move, not as whole messages: a
	// slow link is not a dead one. (Over a conn that is no net.Conn, and
	// so has no deadlines, writes go in pieces of Timeout × 64 bytes/s, at
	// least 256 bytes and at most 16 KiB, and a link slower than one piece
	// per Timeout times out.)
	KeepAlive, Timeout time.Duration

	// MaxNewFeeds bounds how many feeds the database lacks this session
	// adds for the peer (default DefaultMaxNewFeeds; negative: no bound).
	// Past it, the peer's other new feeds are declined for the rest of
	// the session, as Accept declines them, and counted in
	// ReplicateProgress.FeedsNotAdded; the session goes on. Feeds the
	// database already holds are not counted.
	MaxNewFeeds int
}

// DefaultMaxNewFeeds is the number of feeds a session adds at most when
// ReplicateOptions.MaxNewFeeds is 0.
const DefaultMaxNewFeeds = 1000

// ReplicateProgress is a session's progress, for progress bars.
type ReplicateProgress struct {
	Phase          string // "handshake", "exchange", "live" or "done"
	Feeds          int    // feeds the peer offered that this side took
	FeedsToGo      int    // of those, feeds with blocks still to fetch
	BlocksToGo     uint64 // blocks wanted and not yet received
	BlocksReceived uint64 // blocks received and stored
	BlocksSent     uint64
	BytesReceived  uint64 // bytes read from the connection
	BytesSent      uint64
	FeedsNotAdded  int // new feeds the peer offered past MaxNewFeeds, declined
}

// Replicate runs one replication session with a peer over conn (a net.Conn
// or any io.ReadWriteCloser: a pipe, stdin/stdout) and returns why it
// ended. Exactly one side passes initiator true.
//
// The session runs TLS 1.3 over conn, then each side proves it knows the
// database's shared key; a peer that cannot is cut off with ErrUnauthorized
// before it learns anything. Then the sides exchange their feeds and what
// they hold, and each fetches what it lacks; every block is verified before
// it is stored. A non-live session ends, returning nil, once both sides hold
// what the other had when they met. A live one goes on until ctx ends, when
// it says goodbye to the peer (TLS close_notify) and returns ctx's error,
// or until the peer says goodbye, when it returns nil. conn is closed when
// Replicate returns. A read-only database (Options.ReadOnly) does not
// replicate: Replicate closes conn and fails with ErrReadOnly.
//
// The error says whose trouble ended the session; check it with errors.Is:
//   - the network: ErrPeerClosed (the connection ended or was reset
//     without a goodbye: a peer killed, a link cut) and ErrTimeout (nothing
//     moved for ReplicateOptions.Timeout). Trying again may help.
//   - the peer: ErrUnauthorized, ErrVersion, ErrProtocol (a TLS record
//     that fails authentication included: the peer, or something on the
//     path, altered the stream), ErrBadProof and ErrBadSignature (both
//     match ErrVerify).
//   - this side's storage: ErrStorage, wrapping the cause, so that
//     errors.Is(err, syscall.ENOSPC) or errors.Is(err, ErrCorrupt) still
//     tells what failed.
//   - this side: ctx's error, and ErrClosed when the database closed.
func (c *Core) Replicate(ctx context.Context, conn io.ReadWriteCloser, initiator bool, opts *ReplicateOptions) error {
	if conn == nil {
		return fmt.Errorf("replicate: %w: nil connection", ErrInvalidValue)
	}
	s := &session{core: c, raw: conn, initiator: initiator}
	if opts != nil {
		s.opts = *opts
	}
	if s.opts.KeepAlive <= 0 {
		s.opts.KeepAlive = 5 * time.Second
	}
	if s.opts.Timeout <= 0 {
		s.opts.Timeout = 30 * time.Second
	}
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		conn.Close()
		return fmt.Errorf("replicate: %w", ErrClosed)
	}
	if c.opts.ReadOnly {
		conn.Close()
		return fmt.Errorf("replicate: %w", ErrReadOnly)
	}
	err := s.run(ctx)
	if err != nil {
		return fmt.Errorf("replicate: %w", err)
	}
	return nil
}

// session is one replication session.
type session struct {
	core      *Core
	raw       io.ReadWriteCloser
	initiator bool
	opts      ReplicateOptions

	// In a live session, the feeds of this side that changed since the
	// loop last sent haves; feeds add to it from their callbacks.
	changedMu  sync.Mutex
	changed    []*Feed
	changedSet map[*Feed]bool

	peersOf map[*Feed][]*peerFeed // the peer's feeds by their local feed

	tls *tls.Conn
	br  *bufio.Reader

	// The writer goroutine sends what send queues; the queue is unbounded,
	// so the session's loop never blocks on the peer, and bounded in
	// practice by the protocol: answers only to requests, of which the
	// peer may have maxOutstanding.
	outMu      sync.Mutex
	out        [][]byte
	outWake    chan struct{}
	outEnd     bool          // the writer stops once the queue is drained
	outGoodbye bool          // and then sends TLS close_notify
	outDone    chan struct{} // closed when the writer has stopped
	writing    atomic.Int64  // unix nanos a write began or last moved bytes, 0 when none
	lastRead   atomic.Int64  // unix nanos bytes last arrived
	rawEnded   atomic.Bool   // a read of the connection under TLS failed
	newFeeds   int           // feeds the database lacked that this session took
	handled    uint64        // messages taken from the peer

	bytesIn, bytesOut atomic.Uint64

	// Feeds this side announced (ids are indexes) and the peer's.
	mine     []*Feed
	mineID   map[*Feed]uint64
	sentHave map[*Feed]haveState
	peers    []*peerFeed

	wants       []*peerFeed // peer feeds with ranges still wanted, in turn
	next        int
	outstanding []request // in the order sent: answers come in that order
	pendingNew  []pendingFeed

	// Answers are verified and stored by storers, off the loop, so that
	// the loop goes on decoding, serving and requesting meanwhile. storing
	// holds what was answered and is not stored yet; it counts against
	// 2·maxOutstanding together with what is in flight, so the channels
	// never fill.
	storeJobs chan storeJob
	stored    chan storeResult
	storing   []request
	stopping  atomic.Bool // storers skip what is left

	// Feeds the peer offered are added off the loop too, a chunk at a
	// time, so that fetching the first overlaps adding the rest.
	adding []pendingFeed
	added  chan addResult

	workers sync.WaitGroup // storers and the adding goroutine

	peerSynced, sentDone, peerDone bool
	progress                       ReplicateProgress
}

type haveState struct{ length, held uint64 }

// peerFeed is a feed the peer announced.
type peerFeed struct {
	id      uint64
	key     []byte
	local   *Feed // nil until added, or if declined
	length  uint64
	have    []span // ranges the peer holds
	refused []span // ranges the peer answered "not available" for
	want    []span // ranges to request: have, less held, refused and in flight
	queued  bool   // in s.wants

	blockBytes uint64 // mean block size of the last answer, 0 before one

	// unlinked: answers whose signed proof would have raised the length
	// without reaching this side's roots (errNoLink); set aside until the
	// local length changes. link: a request whose answer reaches them, to
	// send next; linkAsked: 1 + the local length one was last asked at.
	// See linkWants.
	unlinked  []unlinkedSpan
	link      *span
	linkAsked uint64

	// signedOnly: an unsigned answer did not meet this side's tree, so
	// requests carry known = 0 and the answers come signed. cut: a signed
	// answer contradicted it (a fork): nothing more is exchanged of the
	// feed in this session. See isolated.
	signedOnly, cut bool
}

// isolated reports whether the session no longer exchanges pf: its local
// feed is forked, or an answer showed a fork this side could not prove.
func (pf *peerFeed) isolated() bool {
	return pf.cut || (pf.local != nil && pf.local.Forked())
}

type pendingFeed struct {
	pf *peerFeed
}

// storers is how many goroutines of a session verify and store answers:
// two, so that one verifies while the other writes.
const storers = 2

type storeJob struct {
	r request // the part of the request the answer holds
	p *Proof
}

type storeResult struct {
	r          request
	err        error
	unsignedAt uint64 // the length of the answer's proof if it had no signature, else 0
	lenBefore  uint64 // the local feed's length before the answer was stored
}

// unsignedAt returns p's length if p has no signature, else 0.
func unsignedAt(p *Proof) uint64 {
	if p.Signature != nil {
		return 0
	}
	return p.Length
}

type addResult struct {
	fs  []*Feed
	err error
}

type request struct {
	pf         *peerFeed
	start, end uint64
	bytes      uint64 // expected (in flight) or actual (storing) size
	known      uint64 // the length the request said this side holds
}

func (s *session) run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Anything that blocks on the connection is released by closing it.
	var closeOnce sync.Once
	closeRaw := func() { closeOnce.Do(func() { s.raw.Close() }) }
	defer closeRaw()
	// Until the handshake is over, an ended context cuts the connection;
	// after it, the loop says goodbye first.
	stopWatch := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			closeRaw()
		case <-stopWatch:
		}
	}()

	s.setPhase("handshake")
	var timedOut atomic.Bool
	hsTimer := time.AfterFunc(s.opts.Timeout, func() {
		timedOut.Store(true)
		closeRaw()
	})
	err = s.handshake(ctx)
	hsTimer.Stop()
	close(stopWatch)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case timedOut.Load() && !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrVersion):
			// (A refused peer that does not hang up is cut off by the
			// timer: the refusal is the news.)
			return fmt.Errorf("%w: the handshake took longer than %v", ErrTimeout, s.opts.Timeout)
		}
		return err
	}

	s.outWake = make(chan struct{}, 1)
	s.outDone = make(chan struct{})
	// Messages read ahead of the session's loop: at most 16, so at most
	// 16 × maxMessage of them wait in memory.
	in := make(chan frame, 16)
	s.storeJobs = make(chan storeJob, 2*maxOutstanding)
	s.stored = make(chan storeResult, 2*maxOutstanding)
	s.added = make(chan addResult, 1)
	s.workers.Add(2 + storers)
	go func() { defer s.workers.Done(); s.readLoop(in) }()
	go func() { defer s.workers.Done(); s.writeLoop() }()
	for range storers {
		go func() { defer s.workers.Done(); s.storeLoop() }()
	}
	defer s.workers.Wait()
	// The reader may be sending a frame when the loop has returned: take
	// what it sends until it stops (closing the connection stops it).
	defer func() {
		for range in {
		}
	}()
	defer close(s.storeJobs)
	defer s.stopping.Store(true)
	defer s.stopWriter(false)
	defer closeRaw()
	s.lastRead.Store(time.Now().UnixNano())

	err = s.loop(ctx, in)
	switch {
	case err == nil:
		// The session is complete, or the peer said goodbye: say it too.
		s.goodbye(ctx, in, false)
		s.setPhase("done")
		return nil
	case ctx.Err() != nil && !errors.Is(err, ErrTimeout):
		s.goodbye(ctx, in, true)
		return ctx.Err()
	case errors.Is(err, ErrClosed):
		s.goodbye(ctx, in, true)
	}
	return err
}

// liveAfterDone moves a live session to its "live" phase once both sides
// said done: at once, so that a goodbye read right after the peer's done
// finds the first exchange over.
func (s *session) liveAfterDone() {
	if s.opts.Live && s.sentDone && s.peerDone && s.progress.Phase != "live" {
		s.setPhase("live")
	}
}

func (s *session) setPhase(p string) {
	s.progress.Phase = p
	s.report()
}

func (s *session) report() {
	if s.opts.Progress == nil {
		return
	}
	p := s.progress
	p.BytesReceived, p.BytesSent = s.bytesIn.Load(), s.bytesOut.Load()
	p.FeedsToGo, p.BlocksToGo = 0, 0
	for _, pf := range s.peers {
		if pf.local == nil {
			continue
		}
		var n uint64
		for _, w := range pf.want {
			n += w.end - w.start
		}
		for _, r := range s.outstanding {
			if r.pf == pf {
				n += r.end - r.start
			}
		}
		for _, r := range s.storing {
			if r.pf == pf {
				n += r.end - r.start
			}
		}
		if n > 0 {
			p.FeedsToGo++
			p.BlocksToGo += n
		}
	}
	s.opts.Progress(p)
}

// rwcConn lets crypto/tls run over any io.ReadWriteCloser.
type rwcConn struct{ io.ReadWriteCloser }

// progressConn notes the session's progress as bytes move on the
// connection, not only as whole messages do: a large message on a slow
// link is neither a silent peer nor a blocked write.
type progressConn struct {
	net.Conn
	s *session

	// pieces: the connection has no deadlines (an io.ReadWriteCloser, or
	// a net.Conn whose SetWriteDeadline fails), so writes go in pieces
	// (see writePieces). Only the writer of the TLS conn uses it.
	pieces bool
	// outer is the write deadline crypto/tls set, in unix nanoseconds; 0
	// for none (see writeSlices).
	outer atomic.Int64
}

func (c *progressConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.s.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil {
		c.s.rawEnded.Store(true)
	}
	return n, err
}

// Write writes p, noting progress as its bytes move, not only once all
// did: one TLS record (up to 16 KiB) takes long on a slow link, and is
// still moving.
func (c *progressConn) Write(p []byte) (int, error) {
	if c.pieces {
		return c.writePieces(p)
	}
	return c.writeSlices(p)
}

// moved notes that a write moved bytes.
func (c *progressConn) moved() {
	if w := c.s.writing.Load(); w != 0 {
		c.s.writing.CompareAndSwap(w, time.Now().UnixNano())
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (rwcConn) LocalAddr() net.Addr                { return pipeAddr{} }
func (rwcConn) RemoteAddr() net.Addr               { return pipeAddr{} }
func (rwcConn) SetDeadline(t time.Time) error      { return nil }
func (rwcConn) SetReadDeadline(t time.Time) error  { return nil }
func (rwcConn) SetWriteDeadline(t time.Time) error { return nil }

// tlsConfig makes a TLS 1.3 configuration with an ephemeral self-signed
// ed25519 certificate. Peers do not check certificates: they authenticate
// each other with the shared key, bound to this TLS session.
func tlsConfig() (*tls.Config, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
	}, nil
}

// handshake runs TLS, then exchanges hellos: version and proof of the
// shared key. Nothing else is sent before the peer's proof checked out.
func (s *session) handshake(ctx context.Context) (err error) {
	cfg, err := tlsConfig()
	if err != nil {
		return err
	}
	nc, ok := s.raw.(net.Conn)
	if !ok {
		nc = rwcConn{s.raw}
	}
	nc = &progressConn{Conn: nc, s: s, pieces: !ok}
	if s.initiator {
		s.tls = tls.Client(nc, cfg)
	} else {
		s.tls = tls.Server(nc, cfg)
	}
	if err := s.tls.HandshakeContext(ctx); err != nil {
		return handshakeErr(err)
	}
	s.br = bufio.NewReaderSize(s.tls, 64<<10)
	cs := s.tls.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return err
	}
	mine := helloMsg(helloMAC(s.core.key, ekm, s.initiator))
	// The initiator proves first; the responder checks that proof before
	// it sends its own, so that a peer without the shared key never sees a
	// mac of it from a responder (PROTOCOL.md §1). Writes go on their own
	// goroutine: over a synchronous pipe, a write waits for the peer's read.
	werr := make(chan error, 1)
	sent := false
	sendHello := func(h []byte) {
		sent = true
		go func() {
			b := binary.AppendUvarint(nil, uint64(len(h)))
			_, err := s.tls.Write(append(b, h...))
			werr <- err
		}()
	}
	defer func() {
		if err != nil {
			s.raw.Close() // releases the write if it blocks
			if sent {
				<-werr
			}
		}
	}()
	if s.initiator {
		sendHello(mine)
	}
	msg, err := readFrame(s.br, 64)
	if err != nil {
		return handshakeErr(err)
	}
	// A later minor version may append fields after the mac (up to the
	// 64-byte limit): they are ignored (PROTOCOL.md §1).
	hello, err := decodeHello(msg)
	if err != nil {
		return err
	}
	var refusal error
	peerMAC := hello.mac
	if hello.major != protoMajor {
		refusal = fmt.Errorf("%w: peer speaks %d.%d, this side %d.%d", ErrVersion, hello.major, hello.minor, protoMajor, protoMinor)
	} else if !hmac.Equal(peerMAC, helloMAC(s.core.key, ekm, !s.initiator)) {
		refusal = ErrUnauthorized
		if s.initiator && bytes.Equal(peerMAC, make([]byte, 32)) {
			refusal = fmt.Errorf("%w: the peer refused this side's proof", ErrUnauthorized)
		}
	}
	if refusal != nil {
		if !s.initiator {
			// A refusal: this side's version, and no mac.
			sendHello(helloMsg(make([]byte, 32)))
		}
		// Say nothing more; let the peer read the hello, so that it
		// learns why too (closing with its bytes unread could reset the
		// connection before it does, and a pipe would lose them), and
		// wait for it to hang up too.
		if err := <-werr; err == nil {
			done := make(chan struct{})
			go func() { s.tls.CloseWrite(); close(done) }()
			io.Copy(io.Discard, io.LimitReader(s.br, 1<<20))
			s.raw.Close()
			<-done
		}
		werr <- nil
		return refusal
	}
	if !s.initiator {
		sendHello(mine)
	}
	werr2 := <-werr
	werr <- nil // for the deferred wait
	if werr2 != nil {
		return handshakeErr(werr2)
	}
	return nil
}

// helloMAC proves knowledge of the shared key, bound to this TLS session
// and to the sender's role.
func helloMAC(key, ekm []byte, initiator bool) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(exporterLabel))
	m.Write(ekm)
	if initiator {
		m.Write([]byte{'I'})
	} else {
		m.Write([]byte{'R'})
	}
	return m.Sum(nil)
}

// handshakeErr classes an error of the handshake: see streamErr. An error
// of crypto/tls that is none of those is the peer speaking no TLS 1.3.
func handshakeErr(err error) error {
	switch {
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrPeerClosed), errors.Is(err, ErrTimeout):
		return err
	case isTLSAlert(err):
		return fmt.Errorf("%w: handshake: %v", ErrProtocol, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isConnErr(err):
		return fmt.Errorf("%w: during the handshake: %v", ErrPeerClosed, err)
	}
	return fmt.Errorf("%w: handshake: %v", ErrProtocol, err)
}

// readFrame reads one message: uvarint length, then that many bytes (type
// and body). The length is checked against max before anything is
// allocated.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, err
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: message cut off in its length", ErrPeerClosed)
		}
		if !isConnErr(err) {
			return nil, fmt.Errorf("%w: bad length prefix: %v", ErrProtocol, err)
		}
		return nil, err
	}
	if n == 0 || n > uint64(max) {
		return nil, fmt.Errorf("%w: message of %d bytes (limit %d)", ErrProtocol, n, max)
	}
	// A large message is allocated in full only once its first
	// frameChunk bytes arrived: a peer cannot make this side hold much
	// memory it did not send (at most one message, of at most max bytes,
	// per connection).
	buf := make([]byte, min(n, frameChunk))
	k, err := io.ReadFull(r, buf)
	if err == nil && uint64(len(buf)) < n {
		full := make([]byte, n)
		copy(full, buf)
		var m int
		m, err = io.ReadFull(r, full[len(buf):])
		k += m
		buf = full
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: message cut off after %d of %d bytes", ErrPeerClosed, k, n)
		}
		return nil, err
	}
	return buf, nil
}

// frameChunk is how much of a message readFrame allocates before its bytes
// arrive.
const frameChunk = 256 << 10

func isConnErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

type frame struct {
	msg []byte
	err error
}

func (s *session) readLoop(in chan<- frame) {
	defer close(in)
	for {
		msg, err := readFrame(s.br, maxMessage)
		if err != nil {
			in <- frame{err: err}
			return
		}
		s.bytesIn.Add(uint64(len(msg)))
		s.lastRead.Store(time.Now().UnixNano())
		in <- frame{msg: msg}
	}
}

// send queues a message; it never blocks.
func (s *session) send(msg []byte) {
	s.outMu.Lock()
	s.out = append(s.out, msg)
	s.outMu.Unlock()
	select {
	case s.outWake <- struct{}{}:
	default:
	}
}

// stopWriter makes the writer stop once it has sent what is queued, and
// with goodbye then close the TLS stream for writing.
func (s *session) stopWriter(goodbye bool) {
	s.outMu.Lock()
	s.outEnd = true
	s.outGoodbye = s.outGoodbye || goodbye
	s.outMu.Unlock()
	select {
	case s.outWake <- struct{}{}:
	default:
	}
}

func (s *session) writeLoop() {
	w := bufio.NewWriterSize(s.tls, 64<<10)
	var lenBuf [binary.MaxVarintLen64]byte
	defer close(s.outDone)
	for {
		s.outMu.Lock()
		batch, end, goodbye := s.out, s.outEnd, s.outGoodbye
		s.out = nil
		if len(batch) > 0 {
			s.writing.Store(time.Now().UnixNano())
		}
		s.outMu.Unlock()
		if len(batch) == 0 {
			if end {
				if goodbye {
					s.tls.CloseWrite()
				}
				return
			}
			<-s.outWake
			continue
		}
		for _, msg := range batch {
			n := binary.PutUvarint(lenBuf[:], uint64(len(msg)))
			if _, err := w.Write(lenBuf[:n]); err != nil {
				s.writing.Store(0)
				return
			}
			if _, err := w.Write(msg); err != nil {
				s.writing.Store(0)
				return
			}
			s.bytesOut.Add(uint64(len(msg)))
		}
		err := w.Flush()
		s.writing.Store(0)
		if err != nil {
			return
		}
	}
}

// loop is the session's state machine. It returns nil when a non-live
// session is complete.
func (s *session) loop(ctx context.Context, in <-chan frame) error {
	if err := s.exchange(ctx, in); err != errCleanEnd {
		return err
	}
	return nil
}

// exchange runs the session until it ends.
func (s *session) exchange(ctx context.Context, in <-chan frame) error {
	s.mineID = map[*Feed]uint64{}
	s.sentHave = map[*Feed]haveState{}
	s.setPhase("exchange")
	changed := s.core.FeedsChanged()
	s.announce()
	s.send(syncedMessage{}.encode())

	var local chan struct{}
	var cancels []func()
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	if s.opts.Live {
		local = make(chan struct{}, 1)
		for _, f := range s.mine {
			cancels = append(cancels, s.watch(f, local))
		}
	}
	tick := time.NewTicker(s.opts.KeepAlive / 2)
	defer tick.Stop()
	lastSent := s.bytesOut.Load()
	for {
		if err := s.fetch(); err != nil {
			return err
		}
		if !s.opts.Live && s.sentDone && s.peerDone {
			return nil
		}
		var feedsChanged <-chan struct{}
		if s.opts.Live {
			feedsChanged = changed
		}
		if testHookIdle != nil && len(in) == 0 && len(s.adding) == 0 && len(s.storing) == 0 && len(s.pendingNew) == 0 {
			testHookIdle(s)
		}
		select {
		case f, ok := <-in:
			if err := s.take(ctx, f, ok); err != nil {
				return err
			}
			// Take whatever else arrived before acting on it.
			for more := true; more; {
				select {
				case f, ok := <-in:
					if err := s.take(ctx, f, ok); err != nil {
						return err
					}
				default:
					more = false
				}
			}
			if err := s.addPending(); err != nil {
				return err
			}
		case res := <-s.stored:
			if err := s.storedAnswer(res); err != nil {
				return err
			}
		case res := <-s.added:
			if err := s.addedFeeds(res); err != nil {
				return err
			}
		case <-feedsChanged:
			changed = s.core.FeedsChanged()
			n := len(s.mine)
			s.announce()
			for _, f := range s.mine[n:] {
				cancels = append(cancels, s.watch(f, local))
				s.trimWantsOf(f) // it may have been asked for before
			}
		case <-local:
			for _, f := range s.takeChanged() {
				s.sendHave(f)
				s.trimWantsOf(f)
			}
		case <-tick.C:
			now := time.Now().UnixNano()
			if w := s.writing.Load(); w != 0 && time.Duration(now-w) > s.opts.Timeout {
				return fmt.Errorf("%w: a write has been blocked for %v", ErrTimeout, s.opts.Timeout)
			}
			if time.Duration(now-s.lastRead.Load()) > s.opts.Timeout {
				return fmt.Errorf("%w: nothing received for %v", ErrTimeout, s.opts.Timeout)
			}
			if out := s.bytesOut.Load(); out == lastSent {
				s.send(pingMessage{}.encode())
			} else {
				lastSent = out
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-s.core.done:
			return fmt.Errorf("the database was closed: %w", ErrClosed)
		}
	}
}

// take handles one frame from the reader; ok false means the reader ended.
// It returns errCleanEnd when the stream ended in a way that ends the
// session properly (see peerEnded).
func (s *session) take(ctx context.Context, f frame, ok bool) error {
	switch {
	case !ok:
		return ErrPeerClosed
	case f.err != nil:
		if err := s.readErr(ctx, f.err); err != nil {
			return err
		}
		return errCleanEnd
	}
	s.handled++
	return s.handle(f.msg)
}

// testHookIdle, if set by a test, runs on the session's loop when it is
// about to wait with nothing of its own to do: every message it took is
// handled, no feed is being added and no answer stored.
var testHookIdle func(*session)

var errCleanEnd = errors.New("the session ended properly")

// readErr is what the reader's error means for the session: nil for a
// goodbye that ends it properly (see peerEnded).
func (s *session) readErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		return s.peerEnded()
	}
	return streamErr(err)
}

// announce sends the local feeds not announced yet, with what they hold.
func (s *session) announce() {
	for _, f := range s.core.Feeds() {
		if _, ok := s.mineID[f]; ok || f.Forked() {
			continue // a forked feed is no longer exchanged
		}
		id := uint64(len(s.mine))
		s.mine = append(s.mine, f)
		s.mineID[f] = id
		s.send(feedMessage{id, f.Key()}.encode())
		s.sendHave(f)
		if testHookAnnounced != nil {
			testHookAnnounced(f)
		}
	}
}

// testHookAnnounced, if set by a test, runs after a feed's first have was
// sent, before a live session watches the feed.
var testHookAnnounced func(*Feed)

// watch has f's changes (in a live session) recorded and signalled on
// local, so that the loop sends haves for the feeds that changed only.
// It counts f as changed once right away: it may have changed between the
// have announce sent and the subscription.
func (s *session) watch(f *Feed, local chan struct{}) (cancel func()) {
	changed := func() {
		s.changedMu.Lock()
		if !s.changedSet[f] {
			if s.changedSet == nil {
				s.changedSet = map[*Feed]bool{}
			}
			s.changedSet[f] = true
			s.changed = append(s.changed, f)
		}
		s.changedMu.Unlock()
		select {
		case local <- struct{}{}:
		default:
		}
	}
	cancel = f.subscribeFunc(changed)
	changed()
	return cancel
}

// takeChanged returns the feeds that changed since the last call.
func (s *session) takeChanged() []*Feed {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	out := s.changed
	s.changed = nil
	clear(s.changedSet)
	return out
}

// sendHave sends the ranges f holds, unless they are what was sent last.
func (s *session) sendHave(f *Feed) {
	if f.Forked() {
		return
	}
	st := haveState{f.Len(), f.Downloaded()}
	if old, ok := s.sentHave[f]; ok && old == st {
		return
	}
	s.sentHave[f] = st
	// Ranges stop at the length sent, even if the feed grew meanwhile:
	// the peer rejects a range past it.
	s.send(haveMessage{s.mineID[f], st.length, f.presentSpans(st.length)}.encode())
}

// handle acts on one message from the peer.
func (s *session) handle(msg []byte) error {
	m, err := decodeMessage(msg)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case feedMessage:
		return s.takeFeed(m)
	case haveMessage:
		return s.takeHave(m)
	case syncedMessage:
		if s.peerSynced {
			return protoErr("synced twice")
		}
		s.peerSynced = true
	case requestMessage:
		return s.serve(m)
	case dataMessage:
		return s.receive(m)
	case notAvailableMessage:
		return s.takeNotAvailable(m)
	case doneMessage:
		if s.peerDone {
			return protoErr("done twice")
		}
		s.peerDone = true
		s.liveAfterDone()
	}
	return nil
}

// takeFeed takes a feed the peer announced: it is added, unless declined.
func (s *session) takeFeed(m feedMessage) error {
	if m.id != uint64(len(s.peers)) {
		return protoErr("feed announced as %d, expected %d", m.id, len(s.peers))
	}
	pf := &peerFeed{id: m.id, key: m.key}
	s.peers = append(s.peers, pf)
	if s.peerSynced && !s.opts.Live {
		return nil // not in the snapshot taken when the sides met
	}
	if s.opts.Accept != nil && !s.opts.Accept(pf.key) {
		return nil
	}
	if f := s.core.Feed(pf.key); f != nil && f.Forked() {
		return nil // declined: a forked feed is no longer exchanged
	}
	if !s.mayAdd(pf.key) {
		return nil
	}
	s.pendingNew = append(s.pendingNew, pendingFeed{pf})
	return nil
}

// takeHave takes what the peer holds of one of its feeds.
func (s *session) takeHave(m haveMessage) error {
	pf, err := s.peerFeed(m.id)
	if err != nil {
		return err
	}
	if m.length > maxTreeLength {
		return protoErr("feed %d claims length %d", m.id, m.length)
	}
	if s.peerSynced && !s.opts.Live {
		return nil // wants come from the snapshot taken when the sides met
	}
	pf.length = max(pf.length, m.length)
	pf.have = m.ranges
	pf.refused = nil
	s.trimWants(pf)
	return nil
}

// takeNotAvailable takes the peer's refusal of the oldest request.
func (s *session) takeNotAvailable(m notAvailableMessage) error {
	start, end := m.start, m.end
	r, err := s.answer(m.id, start)
	if err != nil {
		return err
	}
	if end <= start || end > r.end {
		return protoErr("not-available for [%d, %d) answers a request for [%d, %d)", start, end, r.start, r.end)
	}
	// Refused: not wanted from this peer until it says it has more.
	// A prefix (the peer's damaged entry) leaves the rest wanted.
	r.pf.refused = append(r.pf.refused, span{start, end})
	if end < r.end || len(r.pf.unlinked) > 0 {
		s.trimWants(r.pf) // (a link may be asked now: see linkWants)
	}
	return nil
}

func (s *session) peerFeed(id uint64) (*peerFeed, error) {
	if id >= uint64(len(s.peers)) {
		return nil, protoErr("feed %d was never announced", id)
	}
	return s.peers[id], nil
}

// trimWantsOf works out again, in a sparse database, what this side wants
// of the peer's feeds that are f: calls may have started waiting for
// entries of f. It does so in any database for a peer feed with answers
// set aside as unlinked: f may have grown.
func (s *session) trimWantsOf(f *Feed) {
	sparse := s.core.opts.Sparse || f.hasDamage()
	for _, pf := range s.peersOf[f] {
		if sparse || len(pf.unlinked) > 0 {
			s.trimWants(pf)
		}
	}
}

// trimWants works out what to request of pf: what the peer holds, less
// what this side holds, what the peer refused and what is in flight; in a
// sparse database, only what a local call waits for.
func (s *session) trimWants(pf *peerFeed) {
	pf.want = pf.want[:0]
	if pf.local == nil || pf.local.Writable() || pf.isolated() {
		return // declined, written here, or forked: nothing to fetch
	}
	want := pf.have
	if s.core.opts.Sparse {
		// Entries found damaged are wanted too: a copy heals them.
		want = intersectSpans(want, mergeSpans(pf.local.wantedRanges(), pf.local.damagedSpans()))
	}
	// A store running beside the loop may make entries present between
	// the two look-ups: a run that came out empty is skipped, so that no
	// request asks for nothing.
	for _, w := range want {
		for a := pf.local.NextMissing(w.start); a < w.end; {
			b := w.end
			if a < pf.local.Len() {
				b = min(pf.local.NextPresent(a), w.end)
			}
			if b > a {
				pf.want = append(pf.want, span{a, b})
			}
			if b >= w.end {
				break
			}
			a = pf.local.NextMissing(max(b, a+1))
		}
	}
	for _, r := range pf.refused {
		pf.want = subtractSpan(pf.want, r)
	}
	s.linkWants(pf)
	for _, r := range s.outstanding {
		if r.pf == pf {
			pf.want = subtractSpan(pf.want, span{r.start, r.end})
		}
	}
	for _, r := range s.storing {
		if r.pf == pf {
			pf.want = subtractSpan(pf.want, span{r.start, r.end})
		}
	}
	if (len(pf.want) > 0 || pf.link != nil) && !pf.queued {
		pf.queued = true
		s.wants = append(s.wants, pf)
	}
}

// intersectSpans returns the parts of a that lie in b; both sorted.
func intersectSpans(a, b []span) []span {
	var out []span
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].start, b[j].start), min(a[i].end, b[j].end)
		if lo < hi {
			out = append(out, span{lo, hi})
		}
		if a[i].end < b[j].end {
			i++
		} else {
			j++
		}
	}
	return out
}

func subtractSpan(in []span, x span) []span {
	var out []span
	for _, a := range in {
		if a.end <= x.start || a.start >= x.end {
			out = append(out, a)
			continue
		}
		if a.start < x.start {
			out = append(out, span{a.start, x.start})
		}
		if a.end > x.end {
			out = append(out, span{x.end, a.end})
		}
	}
	return out
}

// addPending starts adding the feeds the peer offered that this side
// lacks, off the loop and a chunk at a time: the first chunk is small, so
// that fetching starts early, and each next one as large as all added so
// far, so that the manifest writes stay few.
func (s *session) addPending() error {
	if len(s.adding) > 0 || len(s.pendingNew) == 0 {
		return nil
	}
	n := min(len(s.pendingNew), max(8, s.progress.Feeds))
	s.adding = slices.Clone(s.pendingNew[:n])
	s.pendingNew = slices.Delete(s.pendingNew, 0, n)
	keys := make([][]byte, len(s.adding))
	for i, p := range s.adding {
		keys[i] = p.pf.key
	}
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		fs, err := s.core.AddFeeds(keys...)
		s.added <- addResult{fs, storageErr(err)}
	}()
	return nil
}

// addedFeeds takes the feeds added for the chunk in progress, and starts
// the next.
func (s *session) addedFeeds(res addResult) error {
	chunk := s.adding
	s.adding = nil
	if res.err != nil {
		return res.err
	}
	for i, p := range chunk {
		p.pf.local = res.fs[i]
		if s.peersOf == nil {
			s.peersOf = map[*Feed][]*peerFeed{}
		}
		s.peersOf[p.pf.local] = append(s.peersOf[p.pf.local], p.pf)
		s.progress.Feeds++
		s.trimWants(p.pf)
	}
	s.report()
	return s.addPending()
}

// fetch sends requests for wanted ranges, taking turns between feeds, and
// says done when nothing is wanted or in flight.
func (s *session) fetch() error {
	if err := s.addPending(); err != nil {
		return err
	}
	for len(s.outstanding) < maxOutstanding && len(s.outstanding)+len(s.storing) < 2*maxOutstanding && len(s.wants) > 0 && s.inFlightBytes() < maxInFlightBytes {
		if s.next >= len(s.wants) {
			s.next = 0
		}
		pf := s.wants[s.next]
		if (len(pf.want) == 0 && pf.link == nil) || pf.local == nil || pf.isolated() {
			pf.queued = false
			s.wants = append(s.wants[:s.next], s.wants[s.next+1:]...)
			continue
		}
		r, ok := pf.linkRequest()
		if !ok {
			w := &pf.want[0]
			end := min(w.end, w.start+requestBlocks(pf))
			r = request{pf: pf, start: w.start, end: end, bytes: (end - w.start) * pf.blockBytes, known: pf.local.Len()}
			if pf.signedOnly {
				r.known = 0
			}
			if w.start = end; w.start >= w.end {
				pf.want = pf.want[1:]
			}
		}
		s.outstanding = append(s.outstanding, r)
		s.send(requestMessage{pf.id, r.start, r.end, r.known}.encode())
		s.next++
	}
	if !s.sentDone && s.peerSynced && len(s.pendingNew) == 0 && len(s.adding) == 0 && len(s.outstanding) == 0 && len(s.storing) == 0 && len(s.wants) == 0 {
		s.sentDone = true
		s.liveAfterDone()
		s.send(doneMessage{}.encode())
		s.report()
	}
	return nil
}

// inFlightBytes is the size of what was asked for and not stored yet.
func (s *session) inFlightBytes() uint64 {
	var n uint64
	for _, r := range s.outstanding {
		n += r.bytes
	}
	for _, r := range s.storing {
		n += r.bytes
	}
	return n
}

// requestBlocks is how many blocks to ask of pf at once: as many as fit
// in one answer by the size of the blocks it sent last, so that with large
// blocks several requests are in flight rather than one answered by parts.
func requestBlocks(pf *peerFeed) uint64 {
	if pf.blockBytes == 0 {
		return maxRequestBlocks
	}
	return min(max(maxAnswerBytes/pf.blockBytes, 1), maxRequestBlocks)
}

// answer matches an answer from the peer to the oldest request in flight.
func (s *session) answer(id, start uint64) (request, error) {
	if len(s.outstanding) == 0 {
		return request{}, protoErr("an answer for feed %d at %d that nobody requested", id, start)
	}
	r := s.outstanding[0]
	if r.pf.id != id || r.start != start {
		return request{}, protoErr("an answer for feed %d at %d; requested was feed %d at %d", id, start, r.pf.id, r.start)
	}
	s.outstanding = s.outstanding[1:]
	return r, nil
}

// serve answers a request from the peer.
func (s *session) serve(m requestMessage) error {
	id, start, end, known := m.id, m.start, m.end, m.known
	if id >= uint64(len(s.mine)) {
		return protoErr("request for feed %d, which was never announced", id)
	}
	if start >= end || end-start > maxRequestBlocks {
		return protoErr("request for [%d, %d)", start, end)
	}
	// The peer may have maxOutstanding requests in flight, and one is in
	// flight until the peer has read its answer, which it cannot do before
	// the writer has written it. So while the peer keeps to that, fewer
	// answers than maxOutstanding wait in the queue for the writer; more
	// is a peer asking without reading, which would grow the queue
	// without bound.
	s.outMu.Lock()
	queued := 0
	for _, m := range s.out {
		if m[0] == msgData || m[0] == msgNotAvailable {
			queued++
		}
	}
	s.outMu.Unlock()
	if queued >= maxOutstanding {
		return protoErr("a request with %d answers unread: more than %d requests in flight", queued, maxOutstanding)
	}
	f := s.mine[id]
	notAvailable := func(end uint64) error {
		s.send(notAvailableMessage{id, start, end}.encode())
		return nil
	}
	if f.Forked() {
		return notAvailable(end) // a forked feed is no longer exchanged
	}
	// Local damage never ends the session: a damaged entry (found before
	// or by this answer's reads, which mark it) is not available, alone,
	// so that the peer asks again for the entries after it; damage to the
	// tree above the entries makes the whole request not available.
	var p *Proof
	for tries := 0; ; tries++ {
		e := min(end, f.NextMissing(start))
		if e <= start {
			if f.isDamaged(start) {
				return notAvailable(start + 1)
			}
			return notAvailable(end)
		}
		var err error
		p, err = f.Proof(start, answerEnd(f, start, e), known)
		if err == nil {
			break
		}
		if errors.Is(err, ErrNotAvailable) || errors.Is(err, ErrOutOfRange) {
			return notAvailable(end)
		}
		if !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("serve feed %x: %w", f.Key()[:4], storageErr(err))
		}
		var ed *entryDamage
		if !errors.As(err, &ed) || tries >= maxServeRetries {
			var ce *CorruptError
			if errors.As(err, &ce) {
				err = ce
			}
			f.reportDamage(Damage{Err: err})
			return notAvailable(end)
		}
		// The damaged entry is marked now: try again without it.
	}
	if k := answerPrefix(p.Blocks); k < len(p.Blocks) {
		var err error
		if p, err = f.Proof(start, start+uint64(k), known); err != nil {
			return notAvailable(end)
		}
	}
	s.send(dataMessage{id, p}.encode())
	s.progress.BlocksSent += uint64(len(p.Blocks))
	return nil
}

// answerEnd returns the end of the answer to a request for the present
// blocks [start, end): as many blocks as fit in maxAnswerBytes (at least
// one), judged by the offsets in their leaves, so that no more is read
// than is sent. If a leaf cannot be read it returns end: Proof reports it.
func answerEnd(f *Feed, start, end uint64) uint64 {
	first, err := f.readNode(2 * start)
	if err != nil {
		return end
	}
	// fits reports whether blocks [start, e) fit in one answer.
	fits := func(e uint64) (bool, error) {
		last, err := f.readNode(2 * (e - 1))
		if err != nil {
			return false, err
		}
		return last.Offset+last.Size-first.Offset <= maxAnswerBytes, nil
	}
	if ok, err := fits(end); err != nil || ok {
		return end
	}
	lo, hi := start+1, end // [start, lo) fits or is one block; [start, hi) does not fit
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := fits(mid)
		if err != nil {
			return end
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// answerPrefix returns how many blocks fit in one answer.
func answerPrefix(blocks [][]byte) int {
	var n int
	for i, b := range blocks {
		n += len(b)
		if i > 0 && n > maxAnswerBytes {
			return i
		}
	}
	return len(blocks)
}

// receive takes an answer from the peer and hands it to the storers,
// which verify and store it.
func (s *session) receive(m dataMessage) error {
	p := m.p
	r, err := s.answer(m.id, p.Start)
	if err != nil {
		return err
	}
	n := uint64(len(p.Blocks))
	if n > r.end-r.start {
		return protoErr("data of %d blocks for a request of %d", n, r.end-r.start)
	}
	var size uint64
	for _, b := range p.Blocks {
		size += uint64(len(b))
	}
	if r.pf.isolated() {
		return nil // forked since it was asked for: dropped
	}
	r.pf.blockBytes = max(size/n, 1)
	got := request{pf: r.pf, start: r.start, end: r.start + n, bytes: size, known: r.known}
	s.storing = append(s.storing, got)
	s.storeJobs <- storeJob{r: got, p: p}
	if got.end < r.end {
		s.trimWants(r.pf) // a prefix: the rest is wanted again
	}
	return nil
}

// storeLoop verifies and stores answers until the session ends.
func (s *session) storeLoop() {
	for j := range s.storeJobs {
		var err error
		before := j.r.pf.local.Len()
		if s.stopping.Load() {
			err = ErrClosed // the session is over; nobody reads this
		} else {
			err = storageErr(j.r.pf.local.Put(j.p))
		}
		s.stored <- storeResult{r: j.r, err: err, unsignedAt: unsignedAt(j.p), lenBefore: before}
	}
}

// storedAnswer takes the result of storing an answer.
func (s *session) storedAnswer(res storeResult) error {
	r := res.r
	if k := slices.Index(s.storing, r); k >= 0 {
		s.storing = slices.Delete(s.storing, k, k+1)
	}
	switch {
	case errors.Is(res.err, ErrForked):
		s.isolate(r.pf, res.err)
		return nil
	case r.known > 0 && res.unsignedAt == r.known && errors.Is(res.err, ErrVerify):
		// An unsigned proof at the length this side said it holds that
		// does not meet this side's tree: the peer may hold another
		// history of the feed. Asked again with known = 0, it must send
		// signed proofs, which verify or are evidence of a fork.
		r.pf.signedOnly = true
		s.trimWants(r.pf)
		return nil
	case errors.Is(res.err, errNoLink):
		s.setAsideUnlinked(r, res.lenBefore)
		return nil
	case res.err != nil:
		return fmt.Errorf("feed %x from the peer: %w", r.pf.key[:4], res.err)
	}
	s.linked(r.pf)
	s.progress.BlocksReceived += r.end - r.start
	s.report()
	return nil
}

// isolate stops exchanging pf's feed in this session, after storing an
// answer showed a fork (err): nothing more is requested of it, answers in
// flight are dropped, and the session goes on with the other feeds. A fork
// with evidence marked the feed, and its Core reported it; one without is
// reported here.
func (s *session) isolate(pf *peerFeed, err error) {
	for _, q := range s.peersOf[pf.local] {
		q.cut, q.want = true, nil
	}
	pf.cut, pf.want = true, nil
	if !pf.local.Forked() {
		s.core.report(fmt.Errorf("replicate: feed %x from the peer: %w", pf.key[:4], err))
	}
	s.report()
}
