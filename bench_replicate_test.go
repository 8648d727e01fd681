package kappa

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// Benchmarks of replication: proofs and puts, sessions over TCP.

// BenchmarkReplicateProofPut measures copying a 10,000-entry feed into a
// fresh replica (on a fresh DirStorage, made outside the timer) with Proof
// and Put of 256 entries at a time.
func BenchmarkReplicateProofPut(b *testing.B) {
	const n, chunk = 10_000, 256
	s, prefix := benchWriterFixture(b, n)
	src := openFixture(b, s, prefix, n)
	defer src.Close()
	tmp := b.TempDir()
	opts := &FeedOptions{Key: src.Key(), NoSync: true}
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dir := filepath.Join(tmp, fmt.Sprint(i))
		ds, err := OpenDir(dir, nil)
		if err != nil {
			b.Fatal(err)
		}
		dst, err := OpenFeed(ds, "r/", opts)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		if err := replicate(src, dst, chunk); err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		if err := dst.Close(); err != nil {
			b.Fatal(err)
		}
		if err := ds.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*n, int64(b.N)*n*benchValueSize)
}

// benchmarkReplicate replicates a source of feeds×perFeed entries of size
// bytes into a fresh database per iteration, which syncs what it stores if
// sync is set (the default of a database) and not otherwise.
func benchmarkReplicate(b *testing.B, feeds, perFeed, size int, sync bool) {
	fixture := benchDB(b, "replicate", feeds, perFeed, size)
	src, err := Open(fixture.dir, &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	tmp := b.TempDir()
	total := int64(feeds) * int64(perFeed)
	var peak uint64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dir := filepath.Join(tmp, fmt.Sprint(i))
		dst, err := Open(dir, &Options{NoSync: !sync, SharedKey: fixture.key})
		if err != nil {
			b.Fatal(err)
		}
		ca, cb := connPair(b, "tcp")
		runtime.GC()
		h := sampleHeap(5 * time.Millisecond)
		b.StartTimer()

		errs := make(chan error, 1)
		go func() { errs <- src.Replicate(ctx, cb, false, nil) }()
		errA := dst.Replicate(ctx, ca, true, nil)
		errB := <-errs

		b.StopTimer()
		peak = max(peak, h.Stop())
		if errA != nil || errB != nil {
			b.Fatalf("replicate: %v / %v", errA, errB)
		}
		if got := len(dst.Feeds()); got != feeds {
			b.Fatalf("replica has %d feeds, want %d", got, feeds)
		}
		for _, f := range dst.Feeds() {
			if f.Len() != uint64(perFeed) || f.Downloaded() != uint64(perFeed) {
				b.Fatalf("feed %x: length %d, held %d; want %d", f.Key()[:4], f.Len(), f.Downloaded(), perFeed)
			}
		}
		if err := dst.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*total, int64(b.N)*total*int64(size))
	b.ReportMetric(float64(peak)/1e6, "peak-heap-MB")
}

// BenchmarkReplicate1Feed100k: one feed of 100,000 entries of 100 bytes.
// Target: at least 1,000,000 entries/s (JS kappa-core: about 19,000/s).
func BenchmarkReplicate1Feed100k(b *testing.B) {
	benchmarkReplicate(b, 1, 100_000, benchValueSize, false)
}

// BenchmarkReplicate1Feed100kSync is BenchmarkReplicate1Feed100k into a
// database with sync on, the default: every stored answer is durable.
func BenchmarkReplicate1Feed100kSync(b *testing.B) {
	benchmarkReplicate(b, 1, 100_000, benchValueSize, true)
}

// BenchmarkReplicate100Feedsx1000: 100 feeds of 1,000 entries of 100 bytes.
// Target: at least 500,000 entries/s with a peak heap under 100 MB (JS:
// about 13,600/s at about 740 MB).
func BenchmarkReplicate100Feedsx1000(b *testing.B) {
	benchmarkReplicate(b, 100, 1_000, benchValueSize, false)
}

// BenchmarkReplicate100Feedsx1000Sync is BenchmarkReplicate100Feedsx1000
// into a database with sync on, the default.
func BenchmarkReplicate100Feedsx1000Sync(b *testing.B) {
	benchmarkReplicate(b, 100, 1_000, benchValueSize, true)
}

// BenchmarkReplicate256x1MiB: one feed of 256 entries of 1 MiB. Target: at
// least 300 MB/s; compare BenchmarkRefTLSLoopback.
func BenchmarkReplicate256x1MiB(b *testing.B) { benchmarkReplicate(b, 1, 256, 1<<20, false) }
