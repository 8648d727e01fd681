package kappa

import (
	"context"
	"fmt"
	"runtime"
	"testing"
)

// Benchmarks of one feed: appends, reads, opening and memory. See
// bench_test.go for the reference limits and the public API's workloads.

func BenchmarkAppendBatch1000x100B(b *testing.B) {
	benchmarkAppendBatch(b, &FeedOptions{NoSync: true})
}

// The default: every Append durable when it returns.
func BenchmarkAppendBatch1000x100BSync(b *testing.B) {
	benchmarkAppendBatch(b, nil)
}

func benchmarkAppendBatch(b *testing.B, opts *FeedOptions) {
	f := benchFeed(b, opts)
	vals := benchValues(benchBatch, benchValueSize)
	for b.Loop() {
		if _, err := f.Append(vals...); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, int64(b.N)*benchBatch, int64(b.N)*benchBatch*benchValueSize)
}

func BenchmarkAppendSingle100B(b *testing.B) {
	benchmarkAppendSingle(b, &FeedOptions{NoSync: true})
}

func BenchmarkAppendSingle100BSync(b *testing.B) {
	benchmarkAppendSingle(b, nil)
}

func benchmarkAppendSingle(b *testing.B, opts *FeedOptions) {
	f := benchFeed(b, opts)
	vals := benchValues(benchBatch, benchValueSize)
	for i := 0; b.Loop(); i++ {
		if _, err := f.Append(vals[i%benchBatch]); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, int64(b.N), int64(b.N)*benchValueSize)
}

// 100 local writers of one database take turns appending one value each:
// every Append records the heads of the other writers that changed since
// this writer's previous one (here all 99), reduced by the causal index to
// those no other head follows (here one: the previous writer's last entry
// follows all the others). It reports entries/s and the context bytes per
// entry.
func BenchmarkAppendContext100Writers(b *testing.B) {
	c, err := Open(b.TempDir(), &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ws := make([]*Feed, 100)
	for i := range ws {
		if ws[i], err = c.Writer(fmt.Sprint("w", i)); err != nil {
			b.Fatal(err)
		}
	}
	vals := benchValues(benchBatch, benchValueSize)
	for i := 0; b.Loop(); i++ {
		if _, err := ws[i%len(ws)].Append(vals[i%benchBatch]); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, int64(b.N), 0)
	var blocks uint64
	for _, w := range ws {
		blocks += w.ByteLen()
	}
	b.ReportMetric(float64(blocks-uint64(b.N)*(1+benchValueSize))/float64(b.N), "context-B/entry")
}

// Reading.

const benchReadLength = 200_000

func BenchmarkGetSequential200k(b *testing.B) {
	s, prefix := benchWriterFixture(b, benchReadLength)
	f := openFixture(b, s, prefix, benchReadLength)
	defer f.Close()
	ctx := context.Background()
	for b.Loop() {
		for seq := range uint64(benchReadLength) {
			v, err := f.Get(ctx, seq)
			if err != nil {
				b.Fatal(err)
			}
			if len(v) != benchValueSize {
				b.Fatalf("entry %d is %d bytes", seq, len(v))
			}
		}
	}
	reportRate(b, int64(b.N)*benchReadLength, int64(b.N)*benchReadLength*benchValueSize)
}

func BenchmarkGetBatchSequential200k(b *testing.B) {
	s, prefix := benchWriterFixture(b, benchReadLength)
	f := openFixture(b, s, prefix, benchReadLength)
	defer f.Close()
	ctx := context.Background()
	for b.Loop() {
		for start := uint64(0); start < benchReadLength; start += benchBatch {
			vs, err := f.GetBatch(ctx, start, start+benchBatch)
			if err != nil {
				b.Fatal(err)
			}
			if len(vs) != benchBatch {
				b.Fatalf("batch at %d has %d entries", start, len(vs))
			}
		}
	}
	reportRate(b, int64(b.N)*benchReadLength, int64(b.N)*benchReadLength*benchValueSize)
}

// Opening.

func BenchmarkOpenFeed10k(b *testing.B) { benchmarkOpenFeed(b, 10_000) }

func BenchmarkOpenFeed1M(b *testing.B) { benchmarkOpenFeed(b, 1_000_000) }

// benchmarkOpenFeed measures OpenFeed and Close of an n-entry writer on an
// open DirStorage.
func benchmarkOpenFeed(b *testing.B, n int) {
	s, prefix := benchWriterFixture(b, n)
	openFixture(b, s, prefix, n).Close()
	opts := &FeedOptions{NoSync: true}
	for b.Loop() {
		f, err := OpenFeed(s, prefix, opts)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/open")
}

// BenchmarkFeedMemory1M reports the heap an open feed of a million entries
// holds: for the writer its roots and constant state, for a replica that
// holds every entry also its bitfield, a bit per entry. Each iteration opens
// the feed and measures HeapAlloc after a GC against the value just before;
// the mean is reported, and ns/op (mostly GC) is suppressed.
func BenchmarkFeedMemory1M(b *testing.B) {
	const n = 1_000_000
	b.Run("writer", func(b *testing.B) {
		s, prefix := benchWriterFixture(b, n)
		benchmarkFeedMemory(b, s, prefix, n)
	})
	b.Run("replica", func(b *testing.B) {
		s, prefix := benchReplicaFixture(b, n)
		benchmarkFeedMemory(b, s, prefix, n)
	})
}

func benchmarkFeedMemory(b *testing.B, s Storage, prefix string, n int) {
	openFixture(b, s, prefix, n).Close()
	opts := &FeedOptions{NoSync: true}
	var ms runtime.MemStats
	var total float64
	for b.Loop() {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		f, err := OpenFeed(s, prefix, opts)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		total += float64(ms.HeapAlloc) - float64(before)
		runtime.KeepAlive(f)
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(total/float64(b.N), "heap-bytes/feed")
	b.ReportMetric(0, "ns/op")
}

// A lone writer of a database (no other feed): its appends record no
// context and add to the causal index without a lock held long; compare
// with BenchmarkAppendSingle100B (a feed opened alone).
func BenchmarkAppendSingle100BCoreWriter(b *testing.B) {
	c, err := Open(b.TempDir(), &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	vals := benchValues(benchBatch, benchValueSize)
	for i := 0; b.Loop(); i++ {
		if _, err := w.Append(vals[i%benchBatch]); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, int64(b.N), int64(b.N)*benchValueSize)
}
