package kappa

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// codecMessage builds a well-formed message of type typ (mod 9) from fuzz
// input: a, b, c, d for its integers, data for its bytes.
func codecMessage(typ byte, a, b, c, d uint64, data []byte) any {
	take := func(n int) []byte {
		out := make([]byte, n)
		copy(out, data)
		if len(data) > n {
			data = data[n:]
		} else {
			data = nil
		}
		return out
	}
	switch typ % 9 {
	case msgHello:
		h := helloMessage{major: byte(a), minor: byte(b), mac: take(32)}
		if h.minor >= 2 { // a node id is read from 1.2 on
			copy(h.node[:], take(16))
		}
		return h
	case msgFeed:
		return feedMessage{a, take(PublicKeySize)}
	case msgHave:
		// Ranges from the bytes of data: each byte a gap (at least 1 after
		// the first) and a length (at least 1), below length.
		var ranges []span
		var end uint64
		for i, x := range data {
			gap, l := uint64(x>>4), uint64(x&15)+1
			if i > 0 && gap == 0 {
				gap = 1
			}
			ranges = append(ranges, span{end + gap, end + gap + l})
			end += gap + l
		}
		return haveMessage{a, end + b%(maxTreeLength-end), ranges}
	case msgSynced:
		return syncedMessage{}
	case msgRequest:
		return requestMessage{a, b, c, d}
	case msgData:
		p := &Proof{Start: b, Length: c}
		nb := 1 + int(d%4)
		for range nb {
			p.Blocks = append(p.Blocks, take(int(a%5)))
		}
		for range int(d / 4 % 4) {
			n := Node{Index: a ^ d, Size: c}
			copy(n.Hash[:], take(32))
			p.Nodes = append(p.Nodes, n)
		}
		if c%2 == 1 {
			p.Signature = take(64)
		}
		return dataMessage{a, p}
	case msgNotAvailable:
		return notAvailableMessage{a, b, c}
	case msgDone:
		return doneMessage{}
	}
	return pingMessage{}
}

// encodeAny encodes a message of the session or a hello.
func encodeAny(m any) []byte {
	if h, ok := m.(helloMessage); ok {
		return h.encode()
	}
	return m.(message).encode()
}

// decodeAny decodes a message of the session or, for type 0, a hello.
func decodeAny(msg []byte) (any, error) {
	if len(msg) > 0 && msg[0] == msgHello {
		return decodeHello(msg)
	}
	return decodeMessage(msg)
}

// normal makes the nil and empty slices of a decoded message alike, for
// comparison.
func normal(m any) any {
	switch m := m.(type) {
	case haveMessage:
		if len(m.ranges) == 0 {
			m.ranges = nil
		}
		return m
	case dataMessage:
		p := *m.p
		if len(p.Nodes) == 0 {
			p.Nodes = nil
		}
		m.p = &p
		return m
	}
	return m
}

// FuzzWireCodecRoundTrip builds a message of every type from the fuzz
// input, encodes it, and checks that it decodes to itself.
func FuzzWireCodecRoundTrip(f *testing.F) {
	for typ := range byte(9) {
		f.Add(typ, uint64(0), uint64(0), uint64(0), uint64(0), []byte(nil))
		f.Add(typ, uint64(3), uint64(1<<40), uint64(7), uint64(13), bytes.Repeat([]byte{0x31, 0x02, 0xff}, 40))
		f.Add(typ, ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), []byte{0, 1, 2, 3})
	}
	f.Fuzz(func(t *testing.T, typ byte, a, b, c, d uint64, data []byte) {
		m := codecMessage(typ, a, b, c, d, data)
		msg := encodeAny(m)
		got, err := decodeAny(msg)
		if err != nil {
			t.Fatalf("%#v: encoded as %x, decodes with %v", m, msg, err)
		}
		if !reflect.DeepEqual(normal(got), normal(m)) {
			t.Fatalf("%#v: encoded as %x, decodes to %#v", m, msg, got)
		}
	})
}

// FuzzWireCodecDecode decodes arbitrary bytes as a message: nothing
// panics, a refusal is ErrProtocol, and what decodes encodes to bytes that
// decode to the same message.
func FuzzWireCodecDecode(f *testing.F) {
	for typ := range byte(9) {
		m := codecMessage(typ, 2, 5, 9, 6, bytes.Repeat([]byte{0x21}, 70))
		msg := encodeAny(m)
		f.Add(msg)
		f.Add(bytes.Clone(msg[:len(msg)/2])) // its own bytes: cut, not a view of more
		f.Add(append(msg, 0))
	}
	f.Add([]byte{})
	f.Add([]byte{9})
	f.Add([]byte{msgHave, 0, 5, 200})
	f.Add([]byte{msgHave, 0, 5, 2, 0, 2, 0, 1})
	f.Add([]byte{msgData, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, err := decodeAny(msg)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("%x: %v, want ErrProtocol", msg, err)
			}
			return
		}
		again, err := decodeAny(encodeAny(m))
		if err != nil {
			t.Fatalf("%x decodes to %#v, whose encoding fails with %v", msg, m, err)
		}
		if !reflect.DeepEqual(normal(again), normal(m)) {
			t.Fatalf("%x decodes to %#v, its encoding to %#v", msg, m, again)
		}
	})
}
