package kv

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// benchReplica is a database in memory with a kv view on disk.
func benchReplica(b *testing.B) (*kappa.Core, *KV, *kappa.Feed) {
	b.Helper()
	c, err := kappa.New(kappa.NewMemStorage(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	s, err := Open(c, "kv", filepath.Join(b.TempDir(), "kv"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	return c, s, w
}

// appendPuts appends n puts of keys fmt("key%08d", (first+i) % keys), in
// Append calls of 10,000.
func appendPuts(b *testing.B, w *kappa.Feed, first, n, keys int) {
	b.Helper()
	batch := make([][]byte, 0, 10000)
	for i := range n {
		v, err := encodeRecord(record{key: fmt.Sprintf("key%08d", (first+i)%keys), value: []byte("value of some twenty")})
		if err != nil {
			b.Fatal(err)
		}
		batch = append(batch, v)
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := w.Append(batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchmarkPutsApplied: puts (one writer, 10,000 keys) applied by the view
// per second: the entries are appended first, then the view indexes them
// (decode, apply, one record of the file and its fsync per batch of 100).
func BenchmarkPutsApplied(b *testing.B) {
	_, s, w := benchReplica(b)
	const n = 100000
	var applied int
	var elapsed time.Duration
	for b.Loop() {
		b.StopTimer()
		if err := s.index.Pause(testCtx(b)); err != nil {
			b.Fatal(err)
		}
		appendPuts(b, w, applied, n, 10000)
		b.StartTimer()
		start := time.Now()
		s.index.Resume()
		if err := s.Ready(testCtx(b)); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		applied += n
	}
	b.ReportMetric(float64(applied)/elapsed.Seconds(), "puts/s")
}

// BenchmarkGet1MKeys: Get of one key among 1,000,000 (ns/op).
func BenchmarkGet1MKeys(b *testing.B) {
	_, s, w := benchReplica(b)
	const keys = 1000000
	appendPuts(b, w, 0, keys, keys)
	if err := s.Ready(testCtx(b)); err != nil {
		b.Fatal(err)
	}
	probe := make([]string, 4096)
	for i := range probe {
		probe[i] = fmt.Sprintf("key%08d", i*7919%keys)
	}
	i := 0
	for b.Loop() {
		vs, err := s.Get(probe[i%len(probe)])
		if err != nil || len(vs) != 1 {
			b.Fatalf("%v %d", err, len(vs))
		}
		i++
	}
}
