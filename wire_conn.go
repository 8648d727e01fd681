package kappa

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// The connection under TLS: any io.ReadWriteCloser made a net.Conn, and
// progress noted as bytes move.

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

// writeSlices writes p to a net.Conn a slice of time at a time: each
// Write has a deadline a quarter of the timeout away, and one that times
// out has still written what it could, so the rest goes on in the next
// slice. A fast link writes p in one call; a slow one shows its progress
// every slice. A deadline crypto/tls set (to bound its close_notify) is
// kept.
func (c *progressConn) writeSlices(p []byte) (int, error) {
	slice := max(c.s.opts.Timeout/4, time.Millisecond)
	var done int
	for {
		dl := time.Now().Add(slice)
		outer := c.outer.Load()
		if outer != 0 && outer < dl.UnixNano() {
			dl = time.Unix(0, outer)
		}
		if err := c.Conn.SetWriteDeadline(dl); err != nil {
			// A conn without deadlines after all.
			c.pieces = true
			n, err := c.writePieces(p)
			return done + n, err
		}
		n, err := c.Conn.Write(p)
		done += n
		if n > 0 {
			c.moved()
		}
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || (outer != 0 && time.Now().UnixNano() >= outer) {
			return done, err
		}
		p = p[n:]
	}
}

// SetWriteDeadline notes the deadline crypto/tls sets for writeSlices.
func (c *progressConn) SetWriteDeadline(t time.Time) error {
	c.setOuter(t)
	return nil
}

// SetDeadline sets the read deadline, and notes the write one.
func (c *progressConn) SetDeadline(t time.Time) error {
	c.setOuter(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *progressConn) setOuter(t time.Time) {
	if t.IsZero() {
		c.outer.Store(0)
	} else {
		c.outer.Store(t.UnixNano())
	}
}

// writePieces writes p to a connection without deadlines a piece at a
// time, noting progress after each.
func (c *progressConn) writePieces(p []byte) (int, error) {
	piece := writePiece(c.s.opts.Timeout)
	var done int
	for len(p) > 0 {
		n, err := c.Conn.Write(p[:min(len(p), piece)])
		done += n
		if n > 0 {
			c.moved()
		}
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// writePiece is how much of a write goes at once to a connection without
// deadlines, so that a write on a slow link shows progress: as much as
// moves in the timeout at 64 bytes/s, at least 256 bytes and at most
// 16 KiB.
func writePiece(timeout time.Duration) int {
	return min(max(int(timeout.Seconds()*64), 256), 16<<10)
}
