package kappa

import (
	"bytes"
	"testing"
)

// FuzzIndexState decodes arbitrary bytes as a view's stored progress. It
// must never panic; whatever decodes must be well formed and encode back to
// the same bytes.
func FuzzIndexState(f *testing.F) {
	k1, k2 := string(bytes.Repeat([]byte{1}, 32)), string(bytes.Repeat([]byte{2}, 32))
	for _, st := range []*indexState{
		{version: 1, feeds: map[string][]span{}},
		{version: 3, feeds: map[string][]span{k1: {{0, 10}}}},
		{version: 1 << 40, feeds: map[string][]span{k1: {{0, 1}, {5, 9}, {100, 1 << 30}}, k2: {{7, 8}}}},
	} {
		f.Add(st.encode())
	}
	f.Add([]byte("KIX1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeIndexState(b)
		if err != nil {
			return
		}
		for k, spans := range st.feeds {
			if len(k) != PublicKeySize || len(spans) == 0 {
				t.Fatalf("decoded a bad feed entry")
			}
			for i, s := range spans {
				if s.start >= s.end || (i > 0 && spans[i-1].end >= s.start) {
					t.Fatalf("decoded bad spans %v", spans)
				}
			}
		}
		if again := st.encode(); !bytes.Equal(again, b) {
			t.Fatalf("decode then encode changed the bytes")
		}
	})
}
