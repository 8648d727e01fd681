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
	"time"
)

// The handshake: TLS 1.3, then hellos that prove the shared key
// (doc/PROTOCOL.md §1).

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
	defer func() {
		if err != nil {
			s.raw.Close()
		}
	}()
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
	s.ekm = ekm
	return s.hellos(ekm)
}

// hellos exchanges the hellos of the handshake over the TLS session whose
// exported keying material is ekm, and refuses a peer of another major
// version or without the shared key (see peerRefusal).
func (s *session) hellos(ekm []byte) (err error) {
	mine := helloMsg(helloMAC(s.core.key, ekm, s.initiator), s.core.node)
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
	if refusal := s.peerRefusal(hello, ekm); refusal != nil {
		if !s.initiator {
			// A refusal: this side's version, and no mac.
			sendHello(helloMsg(make([]byte, 32), nodeID{}))
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
	s.peerNode = hello.node
	if s.hooks != nil && s.hooks.hello != nil {
		return s.hooks.hello(s)
	}
	return nil
}

// peerRefusal is why this side refuses the peer's hello, or nil: another
// major version (ErrVersion), or a mac that proves no knowledge of the
// shared key (ErrUnauthorized).
func (s *session) peerRefusal(hello helloMessage, ekm []byte) error {
	if hello.major != protoMajor {
		return fmt.Errorf("%w: peer speaks %d.%d, this side %d.%d", ErrVersion, hello.major, hello.minor, protoMajor, protoMinor)
	}
	if !hmac.Equal(hello.mac, helloMAC(s.core.key, ekm, !s.initiator)) {
		if s.initiator && bytes.Equal(hello.mac, make([]byte, 32)) {
			return fmt.Errorf("%w: the peer refused this side's proof", ErrUnauthorized)
		}
		return ErrUnauthorized
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
