package kappa

import (
	"testing"
)

// FuzzBitset runs operations on a bitset and on a []bool model: each op is
// three bytes (kind, a, b) with positions up to a few words.
func FuzzBitset(f *testing.F) {
	f.Add([]byte{0, 0, 10, 1, 3, 20, 2, 0, 200, 3, 5, 0, 4, 0, 255, 5, 100, 7})
	f.Add([]byte{0, 60, 200, 0, 0, 64, 1, 0, 255, 2, 63, 130, 4, 1, 129, 5, 33, 0})
	f.Add([]byte{5, 0, 0, 0, 1, 1, 5, 255, 255, 1, 0, 255})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const limit = 300 // bits the model covers; positions are a*b%limit style
		var b bitset
		model := make([]bool, limit+64)
		pos := func(x byte, hi bool) uint64 {
			p := uint64(x)
			if hi {
				p += 45 // reach past the fourth word
			}
			return p
		}
		count := func() uint64 {
			var n uint64
			for _, v := range model {
				if v {
					n++
				}
			}
			return n
		}
		for len(ops) >= 3 {
			kind, a, c := ops[0], ops[1], ops[2]
			ops = ops[3:]
			x, y := pos(a, kind&0x80 != 0), pos(c, kind&0x40 != 0)
			switch kind & 0x0f % 6 {
			case 0: // setRange
				b.setRange(x, y)
				for i := x; i < y; i++ {
					model[i] = true
				}
			case 1: // nextClear
				want := y
				for i := x; i < y; i++ {
					if !model[i] {
						want = i
						break
					}
				}
				if got := b.nextClear(x, y); got != want {
					t.Fatalf("nextClear(%d, %d) = %d, want %d", x, y, got, want)
				}
			case 2: // nextSet
				want := y
				for i := x; i < y; i++ {
					if model[i] {
						want = i
						break
					}
				}
				if got := b.nextSet(x, y); got != want {
					t.Fatalf("nextSet(%d, %d) = %d, want %d", x, y, got, want)
				}
			case 3: // get
				if b.get(x) != model[x] {
					t.Fatalf("get(%d) = %v", x, b.get(x))
				}
			case 4: // bytesFor
				if x > y {
					x, y = y, x
				}
				got := b.bytesFor(x, y)
				lo, hi := x/8, (y+7)/8
				if uint64(len(got)) != hi-lo {
					t.Fatalf("bytesFor(%d, %d) has %d bytes", x, y, len(got))
				}
				for j := lo; j < hi; j++ {
					var want byte
					for k := uint64(0); k < 8; k++ {
						if i := 8*j + k; i < uint64(len(model)) && model[i] {
							want |= 1 << k
						}
					}
					if got[j-lo] != want {
						t.Fatalf("bytesFor(%d, %d) byte %d = %08b, want %08b", x, y, j, got[j-lo], want)
					}
				}
			case 5: // round trip through the file form, cut at length y
				buf := b.bytesFor(0, uint64(len(model)))
				var r bitset
				r.fromBytes(buf, y)
				for i := range uint64(len(model)) {
					if i >= y {
						model[i] = false
					}
					if r.get(i) != model[i] {
						t.Fatalf("fromBytes(…, %d): bit %d = %v", y, i, r.get(i))
					}
				}
				b = r
			}
			if b.count() != count() {
				t.Fatalf("count %d, model %d", b.count(), count())
			}
		}
	})
}
