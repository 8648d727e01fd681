package kappa

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Frames on the TLS stream (doc/PROTOCOL.md §2): the reader and writer
// goroutines of a session.

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
		n := int64(len(msg))
		for q := s.readAhead.Load(); q > 0 && q+n > maxReadAheadBytes; q = s.readAhead.Load() {
			if testHookReadWait != nil {
				testHookReadWait(s, q, len(in))
			}
			<-s.readRoom // a take frees room, and every queued frame is taken
		}
		s.readAhead.Add(n)
		select {
		case in <- frame{msg: msg}:
		default:
			if testHookReadWait != nil {
				testHookReadWait(s, s.readAhead.Load()-n, len(in))
			}
			in <- frame{msg: msg}
		}
	}
}

// took accounts for a frame taken from the reader: its bytes no longer
// count as read ahead, and a reader waiting for room may go on.
func (s *session) took(f frame) {
	if len(f.msg) == 0 {
		return
	}
	s.readAhead.Add(-int64(len(f.msg)))
	select {
	case s.readRoom <- struct{}{}:
	default:
	}
}

// testHookReadWait, if set by a test, runs on the reader when it is about
// to wait for room: queued is the bytes of the frames queued (frames of
// them) ahead of the session's loop.
var testHookReadWait func(s *session, queued int64, frames int)

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

// sendAnswer queues an answer to a request (data, not available),
// counted among the queued answers until the writer takes it up.
func (s *session) sendAnswer(msg []byte) {
	s.queuedAnswers.Add(1)
	s.queuedAnswerBytes.Add(int64(len(msg)))
	s.send(msg)
}

// takeUp is the writer beginning to write msg: an answer stops counting
// as queued, and the loop is woken to serve what it deferred. It is done
// before the answer's first byte is written, so that a peer that has read
// it, and asks again, never finds it still counted.
func (s *session) takeUp(msg []byte) {
	if msg[0] != msgData && msg[0] != msgNotAvailable {
		return
	}
	s.queuedAnswers.Add(-1)
	s.queuedAnswerBytes.Add(-int64(len(msg)))
	select {
	case s.outRoom <- struct{}{}:
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

// writeLoop is the writer goroutine: it frames and writes what send
// queues, a batch at a time, noting when a write began (see keepAlive);
// once stopWriter was called and the queue is drained, it stops, with
// goodbye first closing the TLS stream for writing.
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
		for i, msg := range batch {
			batch[i] = nil // (not held once written)
			s.takeUp(msg)
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
