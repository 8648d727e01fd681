package kappa

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// FuzzTreeHashes: the tree's hashes as leafHasher computes them, one at a
// time and two at once (sha256Blocks2 where the CPU has the SHA
// extensions), are sha256.Sum256 of the messages FORMAT.md gives, for any
// blocks and any parents.
func FuzzTreeHashes(f *testing.F) {
	f.Add([]byte(`{"a":1}`), []byte(`{"b":2}`), uint64(7), uint64(9))
	f.Add(make([]byte, 110), make([]byte, 111), uint64(0), uint64(1)<<62)
	f.Add(make([]byte, 238), make([]byte, 239), uint64(1)<<40, uint64(3))
	h := newLeafHasher()
	leaf := func(d []byte) [32]byte {
		msg := binary.BigEndian.AppendUint64([]byte{leafType}, uint64(len(d)))
		return sha256.Sum256(append(msg, d...))
	}
	f.Fuzz(func(t *testing.T, a, b []byte, sa, sb uint64) {
		wa, wb := leaf(a), leaf(b)
		if got := h.sum(a); got != wa {
			t.Fatalf("leaf of %d bytes: %x, want %x", len(a), got, wa)
		}
		if ga, gb := h.sum2(a, b); ga != wa || gb != wb {
			t.Fatalf("leaves of %d and %d bytes at once: %x, %x, want %x, %x", len(a), len(b), ga, gb, wa, wb)
		}
		l0, r0 := Node{Hash: wa, Size: sa}, Node{Hash: wb, Size: sb}
		l1, r1 := Node{Hash: wb, Size: sb / 2}, Node{Hash: wa, Size: sa / 3}
		w0, w1 := parentHash(&l0, &r0), parentHash(&l1, &r1)
		if got := h.parent(&l0, &r0); got != w0 {
			t.Fatalf("parent: %x, want %x", got, w0)
		}
		if g0, g1 := h.parent2(&l0, &r0, &l1, &r1); g0 != w0 || g1 != w1 {
			t.Fatalf("parents at once: %x, %x, want %x, %x", g0, g1, w0, w1)
		}
	})
}
