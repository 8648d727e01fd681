package kappa

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzBlockContext decodes arbitrary blocks of a feed: decoding never
// panics, the value is the block's tail, a well-formed block re-encodes to
// the same bytes and its context obeys every rule.
func FuzzBlockContext(f *testing.F) {
	own := bytes.Repeat([]byte{0x55}, 32)
	a, b := bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x99}, 32)
	f.Add([]byte{0x00})
	f.Add([]byte{0x00, 'h', 'i'})
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Add([]byte{0x80, 0x00, 'x'})                                         // n not in its shortest encoding
	f.Add(encodeBlock([]Pos{{a, 3}}, []byte("v")))                         // one pair
	f.Add(encodeBlock([]Pos{{a, 300}, {b, 0}}, nil))                       // two pairs, no value
	f.Add(append([]byte{34, 1}, append(own, 0)...))                        // names its own feed
	f.Add(append([]byte{67, 2}, append(append(b, 0), append(a, 0)...)...)) // keys out of order
	f.Add([]byte{5, 1, 2, 3})                                              // n runs past the end
	f.Fuzz(func(t *testing.T, block []byte) {
		ctx, value, malformed := decodeBlock(block, own)
		if !bytes.HasSuffix(block, value) {
			t.Fatalf("value %x is not the tail of block %x", value, block)
		}
		if !bytes.Equal(blockValue(block), value) {
			t.Fatalf("blockValue %x, decodeBlock's value %x", blockValue(block), value)
		}
		if malformed {
			if ctx != nil {
				t.Fatalf("malformed block %x has a context", block)
			}
			return
		}
		for i, p := range ctx {
			if len(p.Feed) != 32 || bytes.Equal(p.Feed, own) || (i > 0 && bytes.Compare(ctx[i-1].Feed, p.Feed) >= 0) {
				t.Fatalf("well-formed block %x has a context that breaks a rule: %v", block, ctx)
			}
		}
		if got := encodeBlock(ctx, value); !bytes.Equal(got, block) {
			t.Fatalf("block %x re-encodes to %x", block, got)
		}
		if n, k := binary.Uvarint(block); k <= 0 || int(n) != contextSize(ctx) {
			t.Fatalf("block %x: n is not the context's size %d", block, contextSize(ctx))
		}
	})
}
