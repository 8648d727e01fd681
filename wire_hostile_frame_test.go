package kappa

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

func TestHostileOversizedLength(t *testing.T) {
	prefixes := map[string][]byte{
		"1<<62":            binary.AppendUvarint(nil, 1<<62),
		"maxMessage+1":     binary.AppendUvarint(nil, maxMessage+1),
		"over 64 bits":     bytes.Repeat([]byte{0xff}, 11),
		"zero":             {0},
		"max uint64":       binary.AppendUvarint(nil, ^uint64(0)),
		"1<<62 then bytes": append(binary.AppendUvarint(nil, 1<<62), bytes.Repeat([]byte{1}, 1000)...),
	}
	for _, kind := range connKinds {
		for name, prefix := range prefixes {
			t.Run(kind+"/"+name, func(t *testing.T) {
				ff := newFeedFixture(t, 5, 0, 3, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				h.drain()
				h.tls.Write(prefix)
				if err := h.result(); !errors.Is(err, ErrProtocol) {
					t.Fatalf("got %v, want ErrProtocol", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// readFrame refuses a length over its limit before it reads or allocates
// the body: the error is ErrProtocol, not a stream cut short, and nothing
// near the size was allocated.
func TestReadFrameChecksTheLengthFirst(t *testing.T) {
	for _, n := range []uint64{maxMessage + 1, 1 << 40, 1 << 62, ^uint64(0)} {
		r := bufio.NewReader(bytes.NewReader(binary.AppendUvarint(nil, n)))
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		_, err := readFrame(r, maxMessage)
		runtime.ReadMemStats(&m1)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("length %d: %v, want ErrProtocol", n, err)
		}
		if d := m1.TotalAlloc - m0.TotalAlloc; d > maxMessage/4 {
			t.Fatalf("length %d: %d bytes allocated", n, d)
		}
	}
}

func TestHostileMessageCutOff(t *testing.T) {
	cases := []struct {
		name string
		part []byte // what is sent of the message
	}{
		{"in its body", append(binary.AppendUvarint(nil, 100), bytes.Repeat([]byte{msgData}, 10)...)},
		{"in its length", []byte{0x80, 0x80}},
		{"after its length", binary.AppendUvarint(nil, 50)},
	}
	ends := []struct {
		name string
		end  func(h *hostile)
	}{
		{"close_notify", func(h *hostile) { h.tls.CloseWrite() }},
		{"closed connection", func(h *hostile) { h.raw.Close() }},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			for _, e := range ends {
				t.Run(kind+"/"+tc.name+"/"+e.name, func(t *testing.T) {
					ff := newFeedFixture(t, 5, 0, 3, 0)
					before := imageOf(t, ff.honest)
					h := meetHostile(t, kind, ff.honest, nil)
					h.until(msgSynced) // the honest side has written all it will
					h.drain()
					h.tls.Write(tc.part)
					e.end(h)
					if err := h.result(); !errors.Is(err, ErrPeerClosed) {
						t.Fatalf("got %v, want ErrPeerClosed", err)
					}
					unchanged(t, ff.honest, before)
					recovers(t, kind, ff.src, ff.honest)
				})
			}
		}
	}
}
