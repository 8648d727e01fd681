package kappa

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// countView is a view that does almost nothing: it counts entries.
type countView struct{ n atomic.Int64 }

func (v *countView) Map(es []Entry) error { v.n.Add(int64(len(es))); return nil }

// benchmarkIndex indexes feeds×perFeed entries of 100 bytes, written
// beforehand to directory storage, through a view that only counts. It
// reports entries/s and the heap the indexer holds once caught up.
func benchmarkIndex(b *testing.B, feeds, perFeed int) {
	dir := b.TempDir()
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	value := bytes.Repeat([]byte{'v'}, 100)
	vals := make([][]byte, 1000)
	for i := range vals {
		vals[i] = value
	}
	for f := range feeds {
		w, err := c.Writer(fmt.Sprint("w", f))
		if err != nil {
			b.Fatal(err)
		}
		for left := perFeed; left > 0; left -= len(vals) {
			if _, err := w.Append(vals[:min(left, len(vals))]...); err != nil {
				b.Fatal(err)
			}
		}
	}
	c.Close()
	total := feeds * perFeed
	var heap uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, err := Open(dir, &Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		v := &countView{}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		if _, err := c.Use("count", 1, v); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if v.n.Load() != int64(total) {
			b.Fatalf("indexed %d of %d", v.n.Load(), total)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if after.HeapAlloc > before.HeapAlloc {
			heap = after.HeapAlloc - before.HeapAlloc
		}
		c.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(heap), "heap-bytes")
}

// BenchmarkIndex200kOneFeed: one feed of 200,000 entries. Target: at least
// 2,000,000 entries/s (JS kappa-core: about 130,000/s).
func BenchmarkIndex200kOneFeed(b *testing.B) { benchmarkIndex(b, 1, 200_000) }

// BenchmarkIndex100Feedsx2000: 100 feeds of 2,000 entries. Same target.
func BenchmarkIndex100Feedsx2000(b *testing.B) { benchmarkIndex(b, 100, 2_000) }
