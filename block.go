package kappa

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// Pos names one entry: a feed's public key and a sequence number.
type Pos struct {
	Feed []byte // the feed's public key (32 bytes)
	Seq  uint64
}

// A block is what a feed stores, hashes into its leaf and sends to peers:
// the causal context its writer recorded, then the value (see doc/FORMAT.md,
// "Blocks"):
//
//	block   = uvarint n ‖ context (n bytes) ‖ value
//	context = uvarint count ‖ count × (key (32 bytes) ‖ uvarint seq)
//
// n = 0 (the one byte 0x00) for a block without context. A context holds at
// least one pair, its keys strictly increasing and none equal to the block's
// own feed key, every uvarint in its shortest encoding, and nothing after
// its last pair. A block that breaks a rule is malformed: it is stored and
// served as any block, its value is what follows a prefix that fits (else
// the whole block), and it has no context.

// maxContextBytes bounds a block's prefix, uvarint n ‖ context (960 KiB):
// a block of a value of MaxBlockSize and its context, with the proof that
// carries it, fits in one message of the protocol (maxMessage).
const maxContextBytes = 1<<20 - 64<<10

// maxBlockBytes is the largest block: a value of MaxBlockSize after the
// largest prefix.
const maxBlockBytes = MaxBlockSize + maxContextBytes

// posPairMin is the least size of a context pair: a key and a one-byte seq.
const posPairMin = 32 + 1

// contextSize returns the size of the encoding of ctx (without the uvarint
// n that precedes it); 0 for an empty context.
func contextSize(ctx []Pos) int {
	if len(ctx) == 0 {
		return 0
	}
	n := uvarintLen(uint64(len(ctx)))
	for _, p := range ctx {
		n += 32 + uvarintLen(p.Seq)
	}
	return n
}

// appendBlockPrefix appends to b the prefix of a block with context ctx:
// uvarint n ‖ context. ctx must be well-formed (see normalizeContext); an
// empty ctx gives the one byte 0x00.
func appendBlockPrefix(b []byte, ctx []Pos) []byte {
	n := contextSize(ctx)
	b = binary.AppendUvarint(b, uint64(n))
	if n == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(ctx)))
	for _, p := range ctx {
		b = append(b, p.Feed...)
		b = binary.AppendUvarint(b, p.Seq)
	}
	return b
}

// encodeBlock returns the block of value with context ctx, which must be
// well-formed (see normalizeContext).
func encodeBlock(ctx []Pos, value []byte) []byte {
	b := make([]byte, 0, uvarintLen(uint64(contextSize(ctx)))+contextSize(ctx)+len(value))
	b = appendBlockPrefix(b, ctx)
	return append(b, value...)
}

// normalizeContext makes ctx well-formed for a block of feed own: it drops
// Pos of feed own and Pos whose key is not 32 bytes, keeps the highest Seq
// of each feed, and sorts by key. It may reorder ctx in place; it returns nil
// for an empty result.
func normalizeContext(ctx []Pos, own []byte) []Pos {
	ctx = slices.DeleteFunc(ctx, func(p Pos) bool { return len(p.Feed) != 32 || bytes.Equal(p.Feed, own) })
	if len(ctx) == 0 {
		return nil
	}
	slices.SortFunc(ctx, func(a, b Pos) int {
		if c := bytes.Compare(a.Feed, b.Feed); c != 0 {
			return c
		}
		return -cmpUint64(a.Seq, b.Seq) // highest first: Compact keeps it
	})
	return slices.CompactFunc(ctx, func(a, b Pos) bool { return bytes.Equal(a.Feed, b.Feed) })
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// blockValue returns the value of block: the bytes after its prefix
// (uvarint n ‖ n bytes) if that prefix fits in the block, else the whole
// block (a malformed block). It is a slice of block and does not allocate.
func blockValue(block []byte) []byte {
	n, k := binary.Uvarint(block)
	if k <= 0 || n > uint64(len(block)-k) {
		return block
	}
	return block[k+int(n):]
}

// decodeBlock decodes a block of the feed whose key is own. It returns the
// context (nil if none, or if the block is malformed; the Pos's keys are
// slices of block), the value (see blockValue) and whether the block is
// malformed. It never panics and allocates only the context's Pos.
func decodeBlock(block, own []byte) (ctx []Pos, value []byte, malformed bool) {
	n, k := binary.Uvarint(block)
	if k <= 0 || n > uint64(len(block)-k) {
		return nil, block, true
	}
	value = block[k+int(n):]
	if k != uvarintLen(n) {
		return nil, value, true // not the shortest encoding
	}
	if n == 0 {
		return nil, value, false
	}
	ctx, ok := decodeContext(block[k:k+int(n)], own)
	if !ok {
		return nil, value, true
	}
	return ctx, value, false
}

// decodeContext decodes a context of exactly len(b) bytes of a block of feed
// own, checking every rule; ok is false if one fails.
func decodeContext(b, own []byte) ([]Pos, bool) {
	count, k := binary.Uvarint(b)
	if k <= 0 || k != uvarintLen(count) || count == 0 || count > uint64(len(b)-k)/posPairMin {
		return nil, false
	}
	b = b[k:]
	ctx := make([]Pos, 0, count)
	for range count {
		if len(b) < posPairMin {
			return nil, false
		}
		key := b[:32:32]
		if bytes.Equal(key, own) || (len(ctx) > 0 && bytes.Compare(ctx[len(ctx)-1].Feed, key) >= 0) {
			return nil, false
		}
		seq, k := binary.Uvarint(b[32:])
		if k <= 0 || k != uvarintLen(seq) {
			return nil, false
		}
		ctx = append(ctx, Pos{Feed: key, Seq: seq})
		b = b[32+k:]
	}
	if len(b) != 0 {
		return nil, false
	}
	return ctx, true
}

// uvarintLen is the size of the shortest uvarint encoding of v.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// noContext is the prefix of a block without context: n = 0.
var noContext = []byte{0}
