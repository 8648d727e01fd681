package kappa

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// How a session ends, and whose trouble an error is: see doc/PROTOCOL.md §4
// and §5.

// maxGoodbye bounds how long a side whose context ended, or whose database
// closed, waits for its goodbye to go out and for the peer's.
const maxGoodbye = 5 * time.Second

// goodbye ends the session deliberately: the writer sends what is queued,
// then TLS close_notify; then it waits for the peer to end too (its
// close_notify, or the connection's end), for at most the timeout, and at
// most maxGoodbye once ctx ended (or the database closed: ended).
func (s *session) goodbye(ctx context.Context, in <-chan frame, ended bool) {
	s.stopWriter(true)
	wait := s.opts.Timeout
	stop := ctx.Done()
	if ended {
		wait, stop = min(wait, maxGoodbye), nil
	}
	deadline := time.Now().Add(wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	out := s.outDone
	for out != nil || in != nil {
		select {
		case <-out:
			out = nil
		case f, ok := <-in:
			s.took(f)
			if !ok || f.err != nil {
				in = nil
			}
		case <-timer.C:
			return
		case <-stop:
			stop = nil
			if d := time.Now().Add(maxGoodbye); d.Before(deadline) {
				timer.Reset(time.Until(d))
			}
		}
	}
}

// peerEnded is what a stream that ended between two messages means.
// crypto/tls reports both a goodbye (close_notify) and a connection that
// ended between two TLS records as io.EOF; the connection under TLS tells
// them apart: after a goodbye it has not ended yet. A goodbye ends a live
// session with nil; a non-live one only once it is complete (both sides
// said done). A connection that ended without a goodbye is ErrPeerClosed,
// unless the non-live session is complete.
func (s *session) peerEnded() error {
	switch {
	case !s.opts.Live && s.sentDone && s.peerDone:
		return nil
	case s.rawEnded.Load():
		return fmt.Errorf("%w: the connection ended without a goodbye", ErrPeerClosed)
	case s.opts.Live:
		return nil
	}
	return fmt.Errorf("%w: the peer said goodbye before the session was complete", ErrPeerClosed)
}

// streamErr classes an error reading the peer's stream. A TLS alert, sent
// by this side (a record that fails authentication: bad_record_mac) or by
// the peer, means the stream was altered, by the peer or on the path: the
// bytes that arrived break the protocol, ErrProtocol. Any other failure
// of the connection (reset, closed) is the network: ErrPeerClosed.
func streamErr(err error) error {
	switch {
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrPeerClosed), errors.Is(err, ErrTimeout):
		return err
	case isTLSAlert(err):
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return fmt.Errorf("%w: %v", ErrPeerClosed, err)
}

// isTLSAlert reports whether err is a TLS alert that crypto/tls sent
// ("local error") or received ("remote error"). close_notify is io.EOF.
func isTLSAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && (oe.Op == "local error" || oe.Op == "remote error")
}

// storageErr marks an error of storing what the peer sent, or of adding
// its feeds, as this side's storage failing (ErrStorage, wrapping err),
// unless it is the peer's doing (what it sent does not verify or does not
// fit the feed) or the database closing.
func storageErr(err error) error {
	if err == nil {
		return nil
	}
	for _, peers := range []error{ErrVerify, ErrForked, errNoLink, ErrOutOfRange, ErrFull, ErrBlockTooLarge, ErrInvalidValue, ErrNotWritable, ErrClosed} {
		if errors.Is(err, peers) {
			return err
		}
	}
	return fmt.Errorf("%w: %w", ErrStorage, err)
}
