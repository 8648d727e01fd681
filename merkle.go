package kappa

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
	"hash"
	"math/bits"
)

// The merkle tree of a feed is laid out as a flat tree (hypercore's
// flat-tree): node indexes are in-order, so block i is the leaf at index 2i,
// parents are odd, and a node of depth d at offset o has index
// (2o+1)·2^d − 1. The tree of a feed of length n is the list of perfect
// subtrees, its full roots, that cover blocks [0, n), largest first.

// maxTreeLength bounds a feed's length so that node indexes (< 2·length) and
// byte sizes cannot overflow a uint64.
const maxTreeLength = 1 << 60

// maxTreeBytes bounds the sum of the sizes in a tree, for the same reason.
const maxTreeBytes = 1 << 62

// maxStoredLength bounds the length of a feed this package stores: past
// it, a tree node's place in its file (16 + 56·index, index < 2·length)
// would not fit the int64 of a file offset. (With it, a data record's
// place, 16 + bytes + 8·seq, fits too.) Proofs may name lengths up to
// maxTreeLength; Put refuses those past this one with ErrFull, as Append
// does an append past it.
const maxStoredLength = 1 << 56

func flatDepth(i uint64) uint { return uint(bits.TrailingZeros64(^i)) }

func flatOffset(i uint64) uint64 { return i >> (flatDepth(i) + 1) }

func flatIndex(depth uint, offset uint64) uint64 {
	return offset<<(depth+1) | (1<<depth - 1)
}

func flatParent(i uint64) uint64 {
	d := flatDepth(i)
	return flatIndex(d+1, flatOffset(i)>>1)
}

func flatSibling(i uint64) uint64 {
	d := flatDepth(i)
	return flatIndex(d, flatOffset(i)^1)
}

// flatChildren returns the two children of a parent node; ok is false for a
// leaf.
func flatChildren(i uint64) (left, right uint64, ok bool) {
	d := flatDepth(i)
	if d == 0 {
		return 0, 0, false
	}
	o := flatOffset(i) * 2
	return flatIndex(d-1, o), flatIndex(d-1, o+1), true
}

// flatBlocks returns the range of blocks [lo, hi) under node i.
func flatBlocks(i uint64) (lo, hi uint64) {
	d := flatDepth(i)
	lo = flatOffset(i) << d
	return lo, lo + 1<<d
}

// fullRoots appends to dst the indexes of the roots of a tree of length
// blocks, left to right.
func fullRoots(dst []uint64, length uint64) []uint64 {
	var pos uint64
	for length > 0 {
		d := uint(63 - bits.LeadingZeros64(length))
		size := uint64(1) << d
		dst = append(dst, flatIndex(d, pos>>d))
		pos += size
		length -= size
	}
	return dst
}

// Node is one node of a feed's merkle tree: the hash of the bytes under it
// and their number.
type Node struct {
	Index uint64   // flat-tree index
	Hash  [32]byte // SHA-256 of the typed node; see doc/FORMAT.md
	Size  uint64   // bytes of data under the node
}

// Node hashes are typed by their first byte so that a leaf can never pass
// for a parent, nor a list of roots for either.
const (
	leafType   = 0
	parentType = 1
	rootType   = 2
)

// parentHash is SHA-256(0x01 ‖ uint64(size) ‖ left.Hash ‖ right.Hash).
func parentHash(left, right *Node) [32]byte {
	var buf [73]byte
	buf[0] = parentType
	binary.BigEndian.PutUint64(buf[1:], left.Size+right.Size)
	copy(buf[9:], left.Hash[:])
	copy(buf[41:], right.Hash[:])
	return sha256.Sum256(buf[:])
}

// treeHash is SHA-256(0x02 ‖ for each root: hash ‖ uint64(index) ‖
// uint64(size)); it is what a feed signs, together with its length.
func treeHash(roots []storedNode) [32]byte {
	// A tree has at most 64 roots: hash them from one buffer on the stack.
	var buf [1 + 64*rootRecordSize]byte
	buf[0] = rootType
	n := 1
	for i := range roots {
		putRootRecord(buf[n:], &roots[i].Node)
		n += rootRecordSize
	}
	return sha256.Sum256(buf[:n])
}

// rootRecordSize is the size of a root's record in the roots hash.
const rootRecordSize = 48

// putRootRecord writes the record of root into dst: hash ‖ uint64(index)
// ‖ uint64(size).
func putRootRecord(dst []byte, root *Node) {
	copy(dst[:32], root.Hash[:])
	binary.BigEndian.PutUint64(dst[32:], root.Index)
	binary.BigEndian.PutUint64(dst[40:], root.Size)
}

// rootsHasher computes treeHash of a writer's roots, append after append,
// hashing again only the roots that changed: an append changes the last
// few, and a large tree has up to 64. It keeps the roots it hashed last
// and the SHA-256 state after each; a root in common is one of the same
// index, size and hash, so a roots hash never depends on what came before.
type rootsHasher struct {
	roots  []storedNode
	states [][]byte // states[i]: the state after roots[:i+1]
	rec    [rootRecordSize]byte
	h      stateHash
}

// stateHash is a hash whose state can be saved and restored, as
// crypto/sha256's is.
type stateHash interface {
	hash.Hash
	encoding.BinaryAppender
	encoding.BinaryUnmarshaler
}

// hash returns treeHash(roots).
func (r *rootsHasher) hash(roots []storedNode) [32]byte {
	if r.h == nil {
		r.h = sha256.New().(stateHash) // as crypto/sha256 documents
	}
	k := 0
	for k < len(roots) && k < len(r.roots) && roots[k].Node == r.roots[k].Node {
		k++
	}
	rec := r.rec[:]
	if k == 0 {
		r.h.Reset()
		rec[0] = rootType
		r.h.Write(rec[:1])
	} else if err := r.h.UnmarshalBinary(r.states[k-1]); err != nil {
		r.roots = r.roots[:0] // not a state it saved: start again next time
		return treeHash(roots)
	}
	r.roots = append(r.roots[:k], roots[k:]...)
	for i := k; i < len(roots); i++ {
		putRootRecord(rec, &roots[i].Node)
		r.h.Write(rec)
		if i == len(r.states) {
			r.states = append(r.states, nil)
		}
		var err error
		if r.states[i], err = r.h.AppendBinary(r.states[i][:0]); err != nil {
			r.roots = r.roots[:0]
			return treeHash(roots)
		}
	}
	return [32]byte(r.h.Sum(rec[:0]))
}

// MaxBlockSize is the largest value a feed accepts, as in hypercore. A
// block, the value with the causal context stored before it (see
// doc/FORMAT.md), may be larger by up to 960 KiB.
const MaxBlockSize = 8 << 20

// Proof is what a peer needs to verify entries of a feed it does not hold:
// the entries, the merkle nodes that link them to the roots of the tree at
// Length, and the writer's signature of those roots. A Proof with no
// Signature links the entries to roots the receiver already trusts.
type Proof struct {
	Start     uint64   // sequence number of Blocks[0]
	Blocks    [][]byte // the blocks of entries Start, Start+1, … (context and value, doc/FORMAT.md); may be empty to prove only Length
	Nodes     []Node   // the other nodes: the largest subtrees holding none of the blocks, left to right
	Length    uint64   // length of the tree the proof reaches
	Signature []byte   // signature of the roots at Length, or nil
}

// proofIndexes appends to dst the indexes of the nodes that, together with
// the blocks [start, end), determine every root of a tree of length blocks:
// the largest subtrees that hold none of the blocks, left to right. With
// start == end these are the roots themselves.
func proofIndexes(dst []uint64, start, end, length uint64) []uint64 {
	var roots [64]uint64
	for _, r := range fullRoots(roots[:0], length) {
		dst = coverNode(dst, r, start, end)
	}
	return dst
}

func coverNode(dst []uint64, i, start, end uint64) []uint64 {
	lo, hi := flatBlocks(i)
	switch {
	case hi <= start || lo >= end || start == end:
		// With no blocks, only whole roots: a hash commits to the sum of
		// its children's sizes, so two sibling nodes sent side by side
		// could trade bytes unnoticed.
		return append(dst, i)
	case start <= lo && hi <= end:
		return dst
	}
	l, r, _ := flatChildren(i) // a leaf is always one of the cases above
	dst = coverNode(dst, l, start, end)
	return coverNode(dst, r, start, end)
}

// storedNode is a node together with the byte offset in the feed's data of
// the first block under it; it is what the tree file holds.
type storedNode struct {
	Node
	Offset uint64
}

// provenTree is what checking a proof's hashes yields: the roots of the
// proof's length and every node the proof determines, with byte offsets.
type provenTree struct {
	roots []storedNode
	nodes []storedNode // leaves and parents computed from blocks, then uncles, in index-walk order
}

// proofTree recomputes the tree of a proof: it hashes the blocks, combines
// them with the proof's nodes (which must come in the order proofIndexes
// gives) and returns the roots at p.Length. It checks shape and sizes but not
// the signature; the caller decides what the roots must match. The nodes
// are appended to buf.
func proofTree(p *Proof, h *leafHasher, buf []storedNode) (*provenTree, error) {
	if p.Length == 0 || p.Length > maxTreeLength {
		return nil, fmt.Errorf("%w: length %d out of range", ErrBadProof, p.Length)
	}
	end := p.Start + uint64(len(p.Blocks))
	if p.Start > p.Length || end > p.Length || end < p.Start {
		return nil, fmt.Errorf("%w: blocks [%d, %d) outside length %d", ErrBadProof, p.Start, end, p.Length)
	}
	w := proofWalker{p: p, end: end, h: h, out: buf}
	var roots [64]uint64
	t := &provenTree{}
	var off uint64
	for _, r := range fullRoots(roots[:0], p.Length) {
		n, err := w.node(r, off)
		if err != nil {
			return nil, err
		}
		t.roots = append(t.roots, storedNode{n, off})
		if off += n.Size; off > maxTreeBytes {
			return nil, fmt.Errorf("%w: tree larger than %d bytes", ErrBadProof, uint64(maxTreeBytes))
		}
	}
	if w.next != len(p.Nodes) {
		return nil, fmt.Errorf("%w: %d proof nodes left over", ErrBadProof, len(p.Nodes)-w.next)
	}
	t.nodes = w.out
	return t, nil
}

// offsetOf returns the byte offset of node i of the proven tree.
func (t *provenTree) offsetOf(i uint64) uint64 {
	for _, n := range t.nodes {
		if n.Index == i {
			return n.Offset
		}
	}
	return 0
}

// proofWalker walks the tree of a Proof to verify it; see node.
type proofWalker struct {
	p    *Proof
	end  uint64
	h    *leafHasher
	next int // next unused proof node
	out  []storedNode
}

// node returns node i of the proven tree, whose bytes start at off, and
// appends it and every node below it that it computes to w.out. A node
// outside the proof's blocks is the next proof node, which must be node i:
// proof nodes are taken in the order of this walk (left before right, each
// root in turn), and any other order is ErrBadProof. A node over the
// blocks is computed from its children, a leaf from its block.
func (w *proofWalker) node(i, off uint64) (Node, error) {
	lo, hi := flatBlocks(i)
	if hi <= w.p.Start || lo >= w.end || w.p.Start == w.end { // as coverNode
		if w.next >= len(w.p.Nodes) {
			return Node{}, fmt.Errorf("%w: proof is missing node %d", ErrBadProof, i)
		}
		n := w.p.Nodes[w.next]
		w.next++
		if n.Index != i {
			return Node{}, fmt.Errorf("%w: proof has node %d where %d belongs", ErrBadProof, n.Index, i)
		}
		if n.Size > maxTreeBytes || (flatDepth(i) == 0 && n.Size > maxBlockBytes) {
			return Node{}, fmt.Errorf("%w: node %d claims %d bytes", ErrBadProof, i, n.Size)
		}
		w.out = append(w.out, storedNode{n, off})
		return n, nil
	}
	if l, r, ok := flatChildren(i); ok {
		left, err := w.node(l, off)
		if err != nil {
			return Node{}, err
		}
		right, err := w.node(r, off+left.Size)
		if err != nil {
			return Node{}, err
		}
		if left.Size+right.Size > maxTreeBytes {
			return Node{}, fmt.Errorf("%w: node %d claims too many bytes", ErrBadProof, i)
		}
		n := Node{Index: i, Hash: w.h.parent(&left, &right), Size: left.Size + right.Size}
		w.out = append(w.out, storedNode{n, off})
		return n, nil
	}
	data := w.p.Blocks[lo-w.p.Start]
	if len(data) > maxBlockBytes {
		// A peer's fault like any other bad proof; it still says why.
		return Node{}, fmt.Errorf("%w: block %d is %d bytes: %w", ErrBadProof, lo, len(data), ErrBlockTooLarge)
	}
	n := Node{Index: i, Hash: w.h.sum(data), Size: uint64(len(data))}
	w.out = append(w.out, storedNode{n, off})
	return n, nil
}
