package kappa

import "math/bits"

// bitset is a growable set of sequence numbers, a bit each: a replica's
// record of which entries it holds.
type bitset struct {
	words []uint64
	n     uint64 // members
}

// get reports whether i is in the set.
func (b *bitset) get(i uint64) bool {
	w := i / 64
	return w < uint64(len(b.words)) && b.words[w]&(1<<(i%64)) != 0
}

// setRange adds [start, end) to the set, growing it as needed.
func (b *bitset) setRange(start, end uint64) {
	if start >= end {
		return
	}
	if need := (end + 63) / 64; need > uint64(len(b.words)) {
		if need <= uint64(cap(b.words)) {
			b.words = b.words[:need]
		} else {
			grown := make([]uint64, need, need+need/4)
			copy(grown, b.words)
			b.words = grown
		}
	}
	for i := start; i < end; {
		w, bit := i/64, i%64
		if bit == 0 && end-i >= 64 {
			b.n += 64 - uint64(bits.OnesCount64(b.words[w]))
			b.words[w] = ^uint64(0)
			i += 64
			continue
		}
		if b.words[w]&(1<<bit) == 0 {
			b.words[w] |= 1 << bit
			b.n++
		}
		i++
	}
}

// nextClear returns the first i in [from, limit) not in the set, or limit.
func (b *bitset) nextClear(from, limit uint64) uint64 {
	for i := from; i < limit; {
		w := i / 64
		if w >= uint64(len(b.words)) {
			return i
		}
		word := ^b.words[w] >> (i % 64)
		if word != 0 {
			return min(i+uint64(bits.TrailingZeros64(word)), limit)
		}
		i = (w + 1) * 64
	}
	return limit
}

// nextSet returns the first i in [from, limit) in the set, or limit.
func (b *bitset) nextSet(from, limit uint64) uint64 {
	for i := from; i < limit; {
		w := i / 64
		if w >= uint64(len(b.words)) {
			return limit
		}
		word := b.words[w] >> (i % 64)
		if word != 0 {
			return min(i+uint64(bits.TrailingZeros64(word)), limit)
		}
		i = (w + 1) * 64
	}
	return limit
}

func (b *bitset) count() uint64 { return b.n }

// fromBytes loads the set from its file form (bit i is bit i%8 of byte
// i/8), keeping only members below length.
func (b *bitset) fromBytes(buf []byte, length uint64) {
	b.words = make([]uint64, (len(buf)+7)/8)
	for j, c := range buf {
		b.words[j/8] |= uint64(c) << (8 * (j % 8))
	}
	if w := length / 64; w < uint64(len(b.words)) {
		b.words[w] &= 1<<(length%64) - 1
		clear(b.words[w+1:])
	}
	b.n = 0
	for _, w := range b.words {
		b.n += uint64(bits.OnesCount64(w))
	}
}

// bytesFor returns the file form of the bytes that hold [start, end).
func (b *bitset) bytesFor(start, end uint64) []byte {
	lo, hi := start/8, (end+7)/8
	out := make([]byte, hi-lo)
	for j := lo; j < hi; j++ {
		w := j / 8
		if w < uint64(len(b.words)) {
			out[j-lo] = byte(b.words[w] >> (8 * (j % 8)))
		}
	}
	return out
}
