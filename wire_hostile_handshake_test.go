package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

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
