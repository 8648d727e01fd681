package kappa

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

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

// TestHostileNonReaderHoldsBoundedAnswers: a peer with the key that uses
// its maxOutstanding requests on answers of 4 MiB and stops reading makes
// the honest side build answers only while less than maxQueuedAnswerBytes
// wait for its writer; the other requests wait unanswered, and are
// answered, in order, once the peer reads. Without the bound, the 16
// answers (64 MiB) sit in memory until the write times out.
func TestHostileNonReaderHoldsBoundedAnswers(t *testing.T) {
	_, honest := sharedPair(t, nil)
	const blocks, per = 64, 4
	bigWriter(t, honest, blocks, 1<<20-1) // blocks of 1 MiB: 0x00 ‖ value
	considered := make(chan struct{}, 1)
	h := meetHostile(t, "tcp", honest, &ReplicateOptions{Accept: func([]byte) bool {
		considered <- struct{}{}
		return false
	}})
	h.until(msgSynced)
	before := heapAfterGC()
	var reqs [][]byte
	for i := range uint64(blocks / per) {
		reqs = append(reqs, requestMsg(0, i*per, (i+1)*per, 0))
	}
	// The honest side takes messages in order: once it has considered the
	// feed offered after the requests, it has taken them all.
	reqs = append(reqs, feedMsg(0, bytes.Repeat([]byte{1}, 32)))
	if err := h.send(reqs...); err != nil {
		t.Fatal(err)
	}
	await(t, considered, "the honest side taking the requests")
	grown := int64(heapAfterGC()) - int64(before)
	t.Logf("heap grown by %.1f MB with %d requests for %d MiB each unread", float64(grown)/1e6, blocks/per, per)
	if grown > 32<<20 {
		t.Fatalf("the honest side's heap grew by %d MiB for answers its peer does not read", grown>>20)
	}
	for i := range uint64(blocks / per) {
		m := parseMessage[dataMessage](t, h.until(msgData))
		if m.id != 0 || m.p.Start != i*per || len(m.p.Blocks) != per {
			t.Fatalf("answer %d: feed %d, blocks [%d, %d)", i, m.id, m.p.Start, m.p.Start+uint64(len(m.p.Blocks)))
		}
		if b := m.p.Blocks[per-1]; len(b) != 1<<20 || b[1] != byte(i*per+per-1) {
			t.Fatalf("answer %d: a wrong block", i)
		}
	}
	h.endCleanly()
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

// TestHostileHavesHoldBoundedMemory: a peer with the key that sends haves
// of a million ranges each, for feed after feed, makes the honest side keep
// at most maxHaveKept ranges of one and maxHeldRanges of all: a range
// held takes 16 bytes where it took 2 of the message, and unbounded, eight
// such haves held 128 MB (and more in the wants worked out from them).
func TestHostileHavesHoldBoundedMemory(t *testing.T) {
	good, honest := sharedPair(t, nil)
	mustAppend(t, mustWriter(t, honest, "w"), "x")
	h := meetHostile(t, "tcp", honest, nil)
	h.until(msgSynced)
	const feeds, ranges = 24, 1 << 20
	have := make([]span, ranges)
	for i := range have {
		have[i] = span{2 * uint64(i), 2*uint64(i) + 1}
	}
	before := heapAfterGC()
	for i := range uint64(feeds) {
		kp, err := NewKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		if err := h.send(feedMsg(i, kp.PublicKey), haveMsg(i, 2*ranges, have...)); err != nil {
			t.Fatal(err)
		}
	}
	// The honest side takes messages in order: once it answers a request
	// sent after the haves, it has taken them.
	if err := h.send(requestMsg(0, 0, 1, 0)); err != nil {
		t.Fatal(err)
	}
	h.until(msgData)
	grown := int64(heapAfterGC()) - int64(before)
	runtime.KeepAlive(have) // held before and after: not counted
	t.Logf("heap grown by %.1f MB", float64(grown)/1e6)
	if grown > 64<<20 {
		t.Fatalf("the honest side's heap grew by %d MB for %d haves of %d ranges", grown>>20, feeds, ranges)
	}
	// The honest side wants what the haves offered, and gets nothing:
	// the test leaves, and the honest side replicates on with others.
	h.raw.Close()
	t.Logf("the honest side: %v", h.result())
	recovers(t, "tcp", good, honest)
}

// TestReadAheadIsBoundedInBytes: while the session's loop is busy, its
// reader reads ahead of it at most maxReadAheadBytes of messages (or one
// larger), not 16 of the largest: a peer that sends 3 MiB messages meanwhile
// finds the reader waiting with at most two queued. Once the loop goes on,
// it takes them (here: an unknown type, ErrProtocol) and the session ends.
func TestReadAheadIsBoundedInBytes(t *testing.T) {
	_, honest := sharedPair(t, nil)
	release := make(chan struct{})
	var blocked atomic.Bool
	testHookIdle = func(s *session) {
		if s.core == honest && blocked.CompareAndSwap(false, true) {
			<-release // the loop is busy elsewhere
		}
	}
	type wait struct {
		queued int64
		frames int
	}
	waits := make(chan wait, 1)
	testHookReadWait = func(s *session, queued int64, frames int) {
		if s.core == honest {
			select {
			case waits <- wait{queued, frames}:
			default:
			}
		}
	}
	t.Cleanup(func() { testHookIdle, testHookReadWait = nil, nil })

	h := meetHostile(t, "pipe", honest, nil) // no buffer in between
	h.until(msgSynced)
	h.drain()
	big := make([]byte, 3<<20)
	big[0] = 0x7f // an unknown type: the loop refuses it, once it looks
	sent := make(chan int, 1)
	go func() {
		n := 0
		for range 40 { // more than the 16 the channel queues
			if h.send(big) != nil {
				break
			}
			n++
		}
		sent <- n
	}()
	var w wait
	select {
	case w = <-waits:
	case err := <-h.honest:
		t.Fatalf("the honest side ended first: %v", err)
	case <-time.After(hostileWait):
		t.Fatalf("the reader did not wait in %v", hostileWait)
	}
	close(release)
	t.Logf("the reader waited with %d messages of %d bytes queued", w.frames, w.queued)
	if w.queued > maxReadAheadBytes && w.frames > 1 {
		t.Errorf("the reader waited with %d messages of %d bytes queued; want at most %d bytes, or one message", w.frames, w.queued, maxReadAheadBytes)
	}
	if err := h.result(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
	t.Logf("the peer wrote %d messages of 3 MiB", <-sent)
}

// TestReadAheadWaitsAndGoesOn: haves of 3 MiB that arrive while the
// session's loop is busy make its reader wait for room; once the loop goes
// on, the reader does too: the loop takes every have, and the session ends
// cleanly.
func TestReadAheadWaitsAndGoesOn(t *testing.T) {
	ff := newFeedFixture(t, 5, 0, 5, 0)
	release := make(chan struct{})
	var blocked atomic.Bool
	testHookIdle = func(s *session) {
		if s.core == ff.honest && blocked.CompareAndSwap(false, true) {
			<-release // the loop is busy elsewhere
		}
	}
	waited := make(chan int64, 1)
	testHookReadWait = func(s *session, queued int64, frames int) {
		if s.core == ff.honest {
			select {
			case waited <- queued:
			default:
			}
		}
	}
	t.Cleanup(func() { testHookIdle, testHookReadWait = nil, nil })
	opts := &ReplicateOptions{Accept: func([]byte) bool { return false }}
	h := meetHostile(t, "pipe", ff.honest, opts)
	h.until(msgSynced)
	h.drain()
	// 1,500,000 ranges of one entry, a gap of one between: 3 MiB.
	var ranges []span
	for i := range uint64(1_500_000) {
		ranges = append(ranges, span{2*i + 1, 2*i + 2})
	}
	have := haveMsg(0, 3_000_001, ranges...)
	if err := h.send(feedMsg(0, ff.w.Key())); err != nil {
		t.Fatal(err)
	}
	const haves = 6
	sent := make(chan error, 1)
	go func() {
		for range haves {
			if err := h.send(have); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	select {
	case q := <-waited:
		t.Logf("the reader waited with %d bytes queued (a have is %d bytes)", q, len(have))
	case err := <-h.honest:
		t.Fatalf("the honest side ended first: %v", err)
	case <-time.After(hostileWait):
		t.Fatalf("the reader did not wait in %v", hostileWait)
	}
	close(release)
	if err := <-sent; err != nil {
		t.Fatalf("sending the haves: %v (the honest side: %v)", err, h.result())
	}
	h.endCleanly()
}
