package kappa

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"testing"
)

func TestFlatTreeMatchesHypercore(t *testing.T) {
	// Reference values from flat-tree's own tests.
	cases := []struct {
		name      string
		got, want uint64
	}{
		{"parent(0)", flatParent(0), 1},
		{"parent(2)", flatParent(2), 1},
		{"parent(1)", flatParent(1), 3},
		{"parent(5)", flatParent(5), 3},
		{"parent(3)", flatParent(3), 7},
		{"sibling(0)", flatSibling(0), 2},
		{"sibling(1)", flatSibling(1), 5},
		{"sibling(9)", flatSibling(9), 13},
		{"index(1,1)", flatIndex(1, 1), 5},
		{"index(3,0)", flatIndex(3, 0), 7},
		{"depth(7)", uint64(flatDepth(7)), 3},
		{"offset(11)", flatOffset(11), 1},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if l, r, ok := flatChildren(3); !ok || l != 1 || r != 5 {
		t.Errorf("children(3) = %d, %d, %v", l, r, ok)
	}
	if _, _, ok := flatChildren(4); ok {
		t.Error("a leaf has children")
	}
	if lo, hi := flatBlocks(11); lo != 4 || hi != 8 { // depth 2, offset 1
		t.Errorf("blocks(11) = [%d, %d), want [4, 8)", lo, hi)
	}
	roots := map[uint64][]uint64{
		0: nil, 1: {0}, 2: {1}, 3: {1, 4}, 4: {3}, 6: {3, 9}, 7: {3, 9, 12}, 8: {7},
	}
	for n, want := range roots {
		if got := fullRoots(nil, n); !slices.Equal(got, want) {
			t.Errorf("fullRoots(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestProofIndexesCoverTheTree(t *testing.T) {
	// For every range of every small tree, the proof nodes and the blocks
	// must cover [0, length) exactly once.
	for length := uint64(1); length <= 40; length++ {
		for start := uint64(0); start <= length; start++ {
			for end := start; end <= length; end++ {
				covered := make([]int, length)
				for b := start; b < end; b++ {
					covered[b]++
				}
				for _, i := range proofIndexes(nil, start, end, length) {
					lo, hi := flatBlocks(i)
					for b := lo; b < hi; b++ {
						if b >= length {
							t.Fatalf("len %d [%d,%d): node %d reaches past the tree", length, start, end, i)
						}
						covered[b]++
					}
				}
				for b, c := range covered {
					if c != 1 {
						t.Fatalf("len %d [%d,%d): block %d covered %d times", length, start, end, b, c)
					}
				}
			}
		}
	}
}

// The tree's hashes, computed with the message padded by leafHasher, are
// SHA-256 of the messages FORMAT.md gives, at every length around a
// block's edge and past the scratch space, and so is the plain way the
// hasher falls back to.
func TestTreeHashesAreSHA256OfTheirMessages(t *testing.T) {
	if !paddedSum() {
		t.Error("this Go's saved SHA-256 state is not laid out as leafHasher reads it: every hash is computed the plain way")
	}
	if haveSHA2() && !twoLanes() {
		t.Error("the CPU has the SHA extensions, but sha256Blocks2 failed its check: pairs of hashes are computed one after the other")
	}
	h := newLeafHasher()
	data := make([]byte, 4<<10)
	for i := range data {
		data[i] = byte(i*31 + i>>8)
	}
	lengths := []int{len(data), 1<<10 + 7}
	for n := 0; n <= 600; n++ {
		lengths = append(lengths, n)
	}
	leaf := func(d []byte) [32]byte {
		msg := binary.BigEndian.AppendUint64([]byte{leafType}, uint64(len(d)))
		return sha256.Sum256(append(msg, d...))
	}
	for i, n := range lengths {
		want := leaf(data[:n])
		if got := h.sum(data[:n]); got != want {
			t.Fatalf("leaf of %d bytes: %x, want %x", n, got, want)
		}
		if got := h.plainSum(data[:n]); got != want {
			t.Fatalf("leaf of %d bytes, plain: %x, want %x", n, got, want)
		}
		// Two at once: of the same length, other bytes; of the next
		// length; and of the one before in the list.
		for _, m := range []int{n, min(n+1, len(data)), lengths[max(i-1, 0)]} {
			other := data[len(data)-m:]
			ga, gb := h.sum2(data[:n], other)
			if wb := leaf(other); ga != want || gb != wb {
				t.Fatalf("leaves of %d and %d bytes at once: %x, %x, want %x, %x", n, m, ga, gb, want, wb)
			}
		}
	}
	for i := 0; i < 100; i++ {
		left := Node{Index: uint64(i), Size: uint64(i) << 40, Hash: sha256.Sum256([]byte{byte(i)})}
		right := Node{Index: uint64(i) + 2, Size: uint64(i*i) + 3, Hash: sha256.Sum256([]byte{byte(i), 1})}
		msg := binary.BigEndian.AppendUint64([]byte{parentType}, left.Size+right.Size)
		msg = append(append(msg, left.Hash[:]...), right.Hash[:]...)
		want := sha256.Sum256(msg)
		if got := h.parent(&left, &right); got != want {
			t.Fatalf("parent %d: %x, want %x", i, got, want)
		}
		if got := parentHash(&left, &right); got != want {
			t.Fatalf("parent %d, plain: %x, want %x", i, got, want)
		}
		swapped := parentHash(&right, &left)
		if g0, g1 := h.parent2(&left, &right, &right, &left); g0 != want || g1 != swapped {
			t.Fatalf("parents %d at once: %x, %x, want %x, %x", i, g0, g1, want, swapped)
		}
	}
}
