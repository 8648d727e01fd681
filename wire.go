package kappa

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// The replication protocol: see doc/PROTOCOL.md. This file: Replicate,
// its options and the session's state. The rest, by concern:
//
//	wire_conn.go       the connection under TLS, progress as bytes move
//	wire_handshake.go  TLS and hellos
//	wire_frame.go      frames, the reader and writer goroutines
//	wire_codec.go      the messages: one type, encoder and decoder each
//	wire_exchange.go   the session's loop, announcing, taking messages
//	wire_fetch.go      wants, requests, answers verified and stored
//	wire_serve.go      answers to the peer's requests
//	wire_spans.go      span sets
//	wire_end.go        how a session ends, and whose trouble an error is

const (
	protoMajor = 1
	protoMinor = 2

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

	// maxQueuedAnswerBytes bounds the answers a side builds ahead of its
	// writer: a request that arrives while this much waits to be written
	// is answered once the writer has taken some of it up. So a peer that
	// asks and stops reading holds about this much, the answer built last
	// and the one being written, not maxOutstanding answers.
	maxQueuedAnswerBytes = 4 << 20

	// maxReadAheadBytes bounds the messages the reader queues ahead of
	// the session's loop: it queues another only while those queued and
	// it take at most this much together (the frame limit, so one always
	// fits). So a peer that sends the largest messages while the loop is
	// busy makes a side hold about this much and two messages (the one
	// the loop handles, the one the reader holds), not 17 of them; two
	// answers of maxAnswerBytes still queue together.
	maxReadAheadBytes = maxMessage

	exporterLabel = "EXPORTER-kappa-replicate-v1"
)

// ReplicateOptions configure a replication session. The zero value (and
// nil) means non-live, accepting every feed the peer offers, up to
// DefaultMaxNewFeeds new ones (see MaxNewFeeds).
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
// what the other had when they met (a sparse side: what its local calls
// asked for, see Options.Sparse). A live one goes on until ctx ends, when
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
	s := &session{core: c, raw: conn, initiator: initiator, calls: make(chan func()), loopDone: make(chan struct{})}
	if opts != nil {
		s.opts = *opts
	}
	return c.replicateSession(ctx, s)
}

// replicateSession runs the session s, made by Replicate or replicateWith.
func (c *Core) replicateSession(ctx context.Context, s *session) error {
	defer s.endLoop()
	conn := s.raw
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

// sessionHooks tie a session to the swarm that runs it (swarm*.go); a
// session that Replicate runs has none.
type sessionHooks struct {
	// hello runs once both hellos went through (s.peerNode is set): an
	// error ends the session before either side sent anything more.
	hello func(s *session) error
	// changed runs on the session's loop after it acted on something
	// (messages, stored answers, local changes); it must not block.
	changed func()
}

// replicateWith is Replicate for a session run with hooks.
func (c *Core) replicateWith(ctx context.Context, conn io.ReadWriteCloser, initiator bool, opts *ReplicateOptions, hooks *sessionHooks, started func(*session)) error {
	s := &session{core: c, raw: conn, initiator: initiator, hooks: hooks, calls: make(chan func()), loopDone: make(chan struct{})}
	if opts != nil {
		s.opts = *opts
	}
	if started != nil {
		started(s)
	}
	return c.replicateSession(ctx, s)
}

// session is one replication session.
type session struct {
	core      *Core
	raw       io.ReadWriteCloser
	initiator bool
	opts      ReplicateOptions
	hooks     *sessionHooks
	peerNode  nodeID // the peer's node id, from its hello; zero if it sent none
	ekm       []byte // the TLS exporter value of the handshake

	// calls are functions run on the session's loop, for a swarm that
	// asks about the session's state; loopDone is closed when the loop
	// stopped taking them.
	calls    chan func()
	loopDone chan struct{}
	loopOnce sync.Once
	inLoop   atomic.Bool // the loop has started taking calls

	// In a live session, the feeds of this side that changed since the
	// loop last sent haves; feeds add to it from their callbacks.
	changedMu  sync.Mutex
	changed    []*Feed
	changedSet map[*Feed]bool

	peersOf map[*Feed][]*peerFeed // the peer's feeds by their local feed
	// heldRanges counts the ranges of the peer's haves kept in its
	// peerFeeds (at most maxHeldRanges).
	heldRanges int

	tls *tls.Conn
	br  *bufio.Reader

	// The writer goroutine sends what send queues; the queue is unbounded,
	// so the session's loop never blocks on the peer, and bounded in
	// practice: answers go only to requests, of which the peer may have
	// maxOutstanding, and are built ahead of the writer only up to
	// maxQueuedAnswerBytes.
	outMu      sync.Mutex
	out        [][]byte
	outWake    chan struct{}
	outEnd     bool          // the writer stops once the queue is drained
	outGoodbye bool          // and then sends TLS close_notify
	outDone    chan struct{} // closed when the writer has stopped

	// Answers (data, not available) queued and not yet taken up by the
	// writer: their number and bytes. While the bytes reach
	// maxQueuedAnswerBytes, the loop defers the peer's requests, in order,
	// and the writer wakes it through outRoom as it takes answers up; see
	// serve.
	queuedAnswers, queuedAnswerBytes atomic.Int64
	outRoom                          chan struct{}
	deferred                         []requestMessage

	// readAhead is the bytes of the messages the reader queued and the
	// loop (or the goodbye, or the final drain) has not taken yet; each
	// take wakes the reader through readRoom. See maxReadAheadBytes.
	readAhead atomic.Int64
	readRoom  chan struct{}

	writing  atomic.Int64 // unix nanos a write began or last moved bytes, 0 when none
	lastRead atomic.Int64 // unix nanos bytes last arrived
	rawEnded atomic.Bool  // a read of the connection under TLS failed
	newFeeds int          // feeds the database lacked that this session took
	handled  uint64       // messages taken from the peer

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

// run runs the session: the handshake, bounded by the timeout and cut off
// when ctx ends; then the reader, writer and storers beside the loop; and
// the goodbye. It returns why the session ended, nil for a complete one
// or a peer's goodbye.
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
	s.outRoom = make(chan struct{}, 1)
	s.outDone = make(chan struct{})
	// Messages read ahead of the session's loop: at most 16 queued, of
	// at most maxReadAheadBytes together (or one larger), and one read
	// and waiting for room.
	in := make(chan frame, 16)
	s.readRoom = make(chan struct{}, 1)
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
		for f := range in {
			s.took(f)
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
