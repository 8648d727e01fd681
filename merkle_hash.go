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
//
// sum2 and parent2 hash two messages at once where the CPU has the SHA
// extensions (sha256Blocks2, checked once too: twoLanes); an append's
// build hashes its leaves and parents in pairs with them.
type leafHasher struct {
	h     stateHash
	buf   [3 * sha256.BlockSize]byte // a message's first and last blocks
	state [savedStateSize]byte
	// node and node2 are parents' messages, padded: their padding is set
	// once. lanes are the padded messages of two leaves hashed at once.
	node, node2 [2 * sha256.BlockSize]byte
	lanes       [2][laneBlocks * sha256.BlockSize]byte
}

func newLeafHasher() *leafHasher {
	l := &leafHasher{h: sha256.New().(stateHash)}
	for _, node := range []*[2 * sha256.BlockSize]byte{&l.node, &l.node2} {
		padBlocks(node[:], parentMessage, parentMessage)
	}
	return l
}

// laneBlocks is the most blocks a leaf's padded message may take to be
// hashed beside another (sum2): leaves of up to 238 bytes.
const laneBlocks = 4

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
	l.h.Write(b[:padBlocks(b, n, total)])
	return l.stateHash()
}

// padBlocks pads a message of total bytes whose last n are b[:n], as
// SHA-256 does: 0x80, zeros, and the message's length in bits, to the end
// of a block. It returns the end of the padding.
func padBlocks(b []byte, n int, total uint64) int {
	end := (n + 1 + 8 + sha256.BlockSize - 1) &^ (sha256.BlockSize - 1)
	b[n] = 0x80
	clear(b[n+1 : end-8])
	binary.BigEndian.PutUint64(b[end-8:end], total*8)
	return end
}

// sum2 returns the leaf hashes of a and b (see sum): both at once, where
// the CPU can (twoLanes) and the two padded messages are of as many
// blocks, each of at most laneBlocks.
func (l *leafHasher) sum2(a, b []byte) (ha, hb [32]byte) {
	if len(a) > len(l.lanes[0])-18 || len(b) > len(l.lanes[1])-18 || !twoLanes() {
		return l.sum(a), l.sum(b)
	}
	ea, eb := leafMessage(l.lanes[0][:], a), leafMessage(l.lanes[1][:], b)
	if ea != eb {
		return l.sum(a), l.sum(b)
	}
	sa, sb := sha256IV, sha256IV
	sha256Blocks2(&sa, &sb, &l.lanes[0][0], &l.lanes[1][0], ea/sha256.BlockSize)
	return stateSum(&sa), stateSum(&sb)
}

// leafMessage writes the padded message of a leaf over data into b and
// returns its length.
func leafMessage(b, data []byte) int {
	b[0] = leafType
	binary.BigEndian.PutUint64(b[1:9], uint64(len(data)))
	n := 9 + copy(b[9:], data)
	return padBlocks(b, n, uint64(n))
}

// parent2 returns the hashes of the parents of l0 and r0, and of l1 and r1
// (see parent): both at once, where the CPU can (twoLanes).
func (l *leafHasher) parent2(l0, r0, l1, r1 *Node) (p0, p1 [32]byte) {
	if !twoLanes() {
		return l.parent(l0, r0), l.parent(l1, r1)
	}
	parentMessageOf(&l.node, l0, r0)
	parentMessageOf(&l.node2, l1, r1)
	s0, s1 := sha256IV, sha256IV
	sha256Blocks2(&s0, &s1, &l.node[0], &l.node2[0], len(l.node)/sha256.BlockSize)
	return stateSum(&s0), stateSum(&s1)
}

// parentMessageOf writes the message of the parent of left and right into
// the first parentMessage bytes of b.
func parentMessageOf(b *[2 * sha256.BlockSize]byte, left, right *Node) {
	b[0] = parentType
	binary.BigEndian.PutUint64(b[1:9], left.Size+right.Size)
	copy(b[9:41], left.Hash[:])
	copy(b[41:73], right.Hash[:])
}

// sha256IV is SHA-256's initial state.
var sha256IV = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// stateSum returns the hash a state after a padded message holds.
func stateSum(st *[8]uint32) (sum [32]byte) {
	for i, w := range st {
		binary.BigEndian.PutUint32(sum[4*i:], w)
	}
	return sum
}

// twoLanes reports whether sum2 and parent2 hash two messages at once with
// sha256Blocks2: the CPU has the SHA extensions, and sha256Blocks2 gives
// sha256.Sum256's hashes for messages of every length of padding up to
// three blocks, checked once. If not, they hash one message after the
// other.
var twoLanes = sync.OnceValue(func() bool {
	if !haveSHA2() {
		return false
	}
	var a, b [3 * sha256.BlockSize]byte
	for n := 0; n < 2*sha256.BlockSize+sha256.BlockSize-9; n++ {
		for i := range n {
			a[i], b[i] = byte(i*7+n), byte(i*13+3*n+1)
		}
		wa, wb := sha256.Sum256(a[:n]), sha256.Sum256(b[:n])
		ea, eb := padBlocks(a[:], n, uint64(n)), padBlocks(b[:], n, uint64(n))
		sa, sb := sha256IV, sha256IV
		sha256Blocks2(&sa, &sb, &a[0], &b[0], ea/sha256.BlockSize)
		if ea != eb || stateSum(&sa) != wa || stateSum(&sb) != wb {
			return false
		}
	}
	return true
})

// parent returns the hash of the parent of left and right,
// SHA-256(0x01 ‖ uint64(size) ‖ left.Hash ‖ right.Hash).
func (l *leafHasher) parent(left, right *Node) [32]byte {
	if !paddedSum() {
		return parentHash(left, right)
	}
	parentMessageOf(&l.node, left, right)
	l.h.Reset()
	l.h.Write(l.node[:])
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
	var msg [3 * sha256.BlockSize]byte
	for n := 0; n <= 2*sha256.BlockSize; n++ {
		for i := range n {
			msg[i] = byte(i*7 + n)
		}
		want := sha256.Sum256(msg[:n])
		h.Reset()
		h.Write(msg[:padBlocks(msg[:], n, uint64(n))])
		st, err := h.AppendBinary(nil)
		if err != nil || len(st) != savedStateSize || !bytes.Equal(st[4:4+sha256.Size], want[:]) {
			return false
		}
	}
	return true
})
