package kappa

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"sync"
)

// leafHasher computes the tree's hashes, leaves (leafHash) and parents
// (parentHash), reusing its digest and scratch space, so it does not
// allocate. One is used by one goroutine at a time.
//
// It pads each message itself, as SHA-256 does, and hands the digest only
// whole blocks: the digest's state after them is then the hash, and it is
// read from the digest's saved state (AppendBinary) rather than by Sum,
// which would copy the digest and write the padding through it again.
// That takes about a quarter off a hash of one or two blocks. The layout
// of a saved state is crypto/sha256's own, not a documented one: paddedSum
// checks it against sha256.Sum256 once, and if it ever differs every hash
// is computed the plain way.
type leafHasher struct {
	h     stateHash
	buf   [3 * sha256.BlockSize]byte // a message's first and last blocks
	state [savedStateSize]byte
	// node is a parent's message, padded: its padding is set once.
	node [2 * sha256.BlockSize]byte
}

func newLeafHasher() *leafHasher {
	l := &leafHasher{h: sha256.New().(stateHash)}
	l.node[parentMessage] = 0x80
	binary.BigEndian.PutUint64(l.node[len(l.node)-8:], parentMessage*8)
	return l
}

// parentMessage is the length of a parent's message: 0x01 ‖ uint64(size)
// ‖ left hash ‖ right hash.
const parentMessage = 1 + 8 + 2*sha256.Size

// savedStateSize is the length of crypto/sha256's saved state: a 4-byte
// magic, the eight state words big-endian, the partial block and the
// length.
const savedStateSize = 4 + sha256.Size + sha256.BlockSize + 8

// sum returns the hash of a leaf over data, SHA-256(0x00 ‖
// uint64(len(data)) ‖ data).
func (l *leafHasher) sum(data []byte) [32]byte {
	if !paddedSum() {
		return l.plainSum(data)
	}
	b := l.buf[:]
	b[0] = leafType
	binary.BigEndian.PutUint64(b[1:9], uint64(len(data)))
	total := uint64(9 + len(data))
	l.h.Reset()
	n := 9
	if len(data) > len(l.buf)-9-9 {
		// Too long for the scratch space: its whole blocks are hashed
		// where they are, the first and the last through the scratch.
		k := copy(b[9:sha256.BlockSize], data)
		l.h.Write(b[:sha256.BlockSize])
		whole := (len(data) - k) &^ (sha256.BlockSize - 1)
		l.h.Write(data[k : k+whole])
		data, n = data[k+whole:], 0
	}
	n += copy(b[n:], data)
	// The padding: 0x80, zeros, and the message's length in bits, to the
	// end of a block.
	end := (n + 1 + 8 + sha256.BlockSize - 1) &^ (sha256.BlockSize - 1)
	b[n] = 0x80
	clear(b[n+1 : end-8])
	binary.BigEndian.PutUint64(b[end-8:end], total*8)
	l.h.Write(b[:end])
	return l.stateHash()
}

// parent returns the hash of the parent of left and right,
// SHA-256(0x01 ‖ uint64(size) ‖ left.Hash ‖ right.Hash).
func (l *leafHasher) parent(left, right *Node) [32]byte {
	if !paddedSum() {
		return parentHash(left, right)
	}
	b := l.node[:]
	b[0] = parentType
	binary.BigEndian.PutUint64(b[1:9], left.Size+right.Size)
	copy(b[9:41], left.Hash[:])
	copy(b[41:73], right.Hash[:])
	l.h.Reset()
	l.h.Write(b)
	return l.stateHash()
}

// stateHash returns the digest's state, after a padded message: the hash.
func (l *leafHasher) stateHash() (sum [32]byte) {
	st, _ := l.h.AppendBinary(l.state[:0])
	copy(sum[:], st[4:4+sha256.Size])
	return sum
}

// plainSum is sum without padding the message here.
func (l *leafHasher) plainSum(data []byte) [32]byte {
	var pre [9]byte
	pre[0] = leafType
	binary.BigEndian.PutUint64(pre[1:], uint64(len(data)))
	l.h.Reset()
	l.h.Write(pre[:])
	l.h.Write(data)
	return [32]byte(l.h.Sum(l.state[:0]))
}

// paddedSum reports whether a digest's state after whole blocks, as
// AppendBinary saves it, holds the state words where leafHasher reads
// them: it hashes messages of every length of padding this way and
// compares each with sha256.Sum256.
var paddedSum = sync.OnceValue(func() bool {
	h := sha256.New().(stateHash)
	msg := make([]byte, 3*sha256.BlockSize)
	for i := range msg {
		msg[i] = byte(i*7 + 1)
	}
	for n := 0; n <= 2*sha256.BlockSize; n++ {
		end := (n + 1 + 8 + sha256.BlockSize - 1) &^ (sha256.BlockSize - 1)
		padded := append(msg[:n:n], 0x80)
		padded = append(padded, make([]byte, end-n-1-8)...)
		padded = binary.BigEndian.AppendUint64(padded, uint64(n)*8)
		h.Reset()
		h.Write(padded)
		st, err := h.AppendBinary(nil)
		want := sha256.Sum256(msg[:n])
		if err != nil || len(st) != savedStateSize || !bytes.Equal(st[4:4+sha256.Size], want[:]) {
			return false
		}
	}
	return true
})
