package kappa

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks of feeds on directory storage. Every benchmark reports its
// throughput as entries/s (and MB/s where entries have a size), so that one
// run can be read against the reference limits of the same machine:
// BenchmarkRefEd25519Sign (a single Append can go no faster than one
// signature) and BenchmarkRefSHA256Block100 (every entry is hashed once on
// write and once on read).
//
// All use FeedOptions{NoSync: true} except those whose name ends in Sync.
// Large feeds that are only read are built once per process, outside any
// timer, in a fixture directory under os.TempDir (see benchFixtures).

const (
	benchValueSize = 100
	benchBatch     = 1000
)

// benchValues returns n distinct values of size bytes, sharing one buffer.
func benchValues(n, size int) [][]byte {
	rng := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	buf := make([]byte, n*size)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = buf[i*size : (i+1)*size : (i+1)*size]
	}
	return vals
}

// reportRate reports entries/s and, if bytes > 0, MB/s (10^6 bytes) over the
// benchmark's timed duration. Call it after the b.Loop loop.
func reportRate(b *testing.B, entries, bytes int64) {
	sec := b.Elapsed().Seconds()
	if sec <= 0 {
		return
	}
	b.ReportMetric(float64(entries)/sec, "entries/s")
	if bytes > 0 {
		b.ReportMetric(float64(bytes)/1e6/sec, "MB/s")
	}
}

// benchFeed opens a feed under a fresh temporary directory, closed when the
// benchmark ends.
func benchFeed(b *testing.B, opts *FeedOptions) *Feed {
	b.Helper()
	s, err := OpenDir(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	f, err := OpenFeed(s, "f/", opts)
	if err != nil {
		s.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := f.Close(); err != nil {
			b.Error(err)
		}
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	return f
}

// benchFixtures holds the feeds that benchmarks only read, built on first
// use and kept for the rest of the process in one DirStorage under
// os.TempDir, since a benchmark's TempDir is removed when it ends. The
// storage stays open (and so locked) until TestMain removes it; directories
// left by killed processes are removed once their lock is free (see
// sweepBenchDirs).
var benchFixtures struct {
	once sync.Once
	s    *DirStorage
	err  error

	mu    sync.Mutex
	built map[string]bool // prefixes of complete fixture feeds
}

const benchDirPattern = "kappa-go-bench-*"

func benchFixtureStorage(b *testing.B) *DirStorage {
	b.Helper()
	fx := &benchFixtures
	fx.once.Do(func() {
		sweepBenchDirs()
		dir, err := os.MkdirTemp("", benchDirPattern)
		if err != nil {
			fx.err = err
			return
		}
		fx.s, fx.err = OpenDir(dir, nil)
		fx.built = make(map[string]bool)
	})
	if fx.err != nil {
		b.Fatalf("benchmark fixtures: %v", fx.err)
	}
	return fx.s
}

// removeBenchFixtures deletes this process's fixture directory; TestMain
// calls it after the tests and benchmarks.
func removeBenchFixtures() {
	if fx := &benchFixtures; fx.s != nil {
		fx.s.Close()
		os.RemoveAll(fx.s.Dir())
	}
}

// sweepBenchDirs removes fixture directories of earlier benchmark
// processes: those whose lock can be taken, so no process holds them. A
// directory younger than a minute is left alone, since its process may
// not have locked it yet.
func sweepBenchDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), benchDirPattern))
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		s, err := OpenDir(dir, nil)
		if err != nil {
			continue // locked: in use
		}
		s.Close()
		os.RemoveAll(dir)
	}
}

// benchWriterFixture returns the prefix of a writable fixture feed of n
// entries of benchValueSize bytes, building it with batched appends if this
// process has not yet. The feed is closed; open it with OpenFeed.
func benchWriterFixture(b *testing.B, n int) (*DirStorage, string) {
	b.Helper()
	s := benchFixtureStorage(b)
	prefix := fmt.Sprintf("writer-%d/", n)
	fx := &benchFixtures
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if fx.built[prefix] {
		return s, prefix
	}
	f, err := OpenFeed(s, prefix, &FeedOptions{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	vals := benchValues(benchBatch, benchValueSize)
	for done := int(f.Len()); done < n; {
		k := min(benchBatch, n-done)
		if _, err := f.Append(vals[:k]...); err != nil {
			b.Fatal(err)
		}
		done += k
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	fx.built[prefix] = true
	return s, prefix
}

// benchReplicaFixture returns the prefix of a read-only replica holding all
// n entries of the writer fixture of n, built by Proof and Put in chunks.
func benchReplicaFixture(b *testing.B, n int) (*DirStorage, string) {
	b.Helper()
	s, wprefix := benchWriterFixture(b, n)
	prefix := fmt.Sprintf("replica-%d/", n)
	fx := &benchFixtures
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if fx.built[prefix] {
		return s, prefix
	}
	src, err := OpenFeed(s, wprefix, &FeedOptions{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := OpenFeed(s, prefix, &FeedOptions{Key: src.Key(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := replicate(src, dst, benchBatch); err != nil {
		b.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		b.Fatal(err)
	}
	fx.built[prefix] = true
	return s, prefix
}

// replicate copies every entry of src into dst with Proof and Put of chunk
// entries at a time, as a peer would: a proof carries a signature only
// while dst does not yet trust src's length.
func replicate(src, dst *Feed, chunk uint64) error {
	n := src.Len()
	for start := uint64(0); start < n; start += chunk {
		end := min(start+chunk, n)
		p, err := src.Proof(start, end, dst.Len())
		if err != nil {
			return err
		}
		if err := dst.Put(p); err != nil {
			return err
		}
	}
	if got := dst.Downloaded(); got != n {
		return fmt.Errorf("replica holds %d of %d entries", got, n)
	}
	return nil
}

// openFixture opens a fixture feed for the benchmark and checks its length.
func openFixture(b *testing.B, s Storage, prefix string, n int) *Feed {
	b.Helper()
	f, err := OpenFeed(s, prefix, &FeedOptions{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	if f.Len() != uint64(n) {
		f.Close()
		b.Fatalf("fixture %s has %d entries, want %d", prefix, f.Len(), n)
	}
	return f
}

// Reference limits.

func BenchmarkRefEd25519Sign(b *testing.B) {
	_, sec, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	var msg [40]byte // what a feed signs: tree hash and length
	for b.Loop() {
		ed25519.Sign(sec, msg[:])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
}

func BenchmarkRefSHA256Block100(b *testing.B) {
	block := benchValues(1, benchValueSize)[0]
	for b.Loop() {
		sha256.Sum256(block)
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/sec, "hashes/s")
	b.ReportMetric(float64(b.N*benchValueSize)/1e6/sec, "MB/s")
}

// Writing.

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

// Replication.

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
	writeBenchFeeds(b, c, feeds, perFeed, benchValueSize)
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
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

// Many feeds. A database of 10,000 writers of 10 entries of 100 bytes, on
// directory storage, built once per process (benchIndexDB). The indexer's
// work must follow the feeds that changed, not all feeds.

const (
	benchManyFeeds   = 10_000
	benchManyPerFeed = 10
	benchBusyEntries = 200_000
)

// BenchmarkIndex10kFeedsNewView: a new view indexes the 100,000 entries of
// the 10,000 feeds, from Use until Ready returns; opening the database is
// not timed. Reports entries/s (target: at least 1,000,000), the peak heap
// in use while opening and indexing (peak-heap-MB; target: under 100), the
// heap an open, idle feed holds (idle-feed-B: heap after opening and a GC,
// over the feeds; target: a few hundred bytes) and what the caught-up view
// adds per feed (view-B/feed), and the heap in use after a GC once the view
// caught up (live-heap-MB). The peak is sampled in one more run, before the
// timed ones, so that sampling does not slow them.
func BenchmarkIndex10kFeedsNewView(b *testing.B) {
	dir := benchIndexDB(b, "new", benchManyFeeds, benchManyPerFeed)
	const total = benchManyFeeds * benchManyPerFeed
	ctx := context.Background()
	var idle, view, live float64
	run := func() {
		base := heapAfterGC()
		c, err := Open(dir, &Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		opened := heapAfterGC()
		v := &countView{}
		b.StartTimer()
		if _, err := c.Use("count", 1, v); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if v.n.Load() != total {
			b.Fatalf("indexed %d of %d", v.n.Load(), total)
		}
		indexed := heapAfterGC()
		idle = (float64(opened) - float64(base)) / benchManyFeeds
		view = (float64(indexed) - float64(opened)) / benchManyFeeds
		live = float64(indexed)
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	heapAfterGC() // the fixture's garbage is not this run's
	h := sampleHeap(5 * time.Millisecond)
	run()
	peak := float64(h.Stop())
	b.StartTimer() // b.Loop starts the count afresh
	for b.Loop() {
		b.StopTimer()
		run()
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*total, 0)
	b.ReportMetric(peak/1e6, "peak-heap-MB")
	b.ReportMetric(idle, "idle-feed-B")
	b.ReportMetric(view, "view-B/feed")
	b.ReportMetric(live/1e6, "live-heap-MB")
}

// BenchmarkOpen10kFeeds opens a database of 10,000 writers of 10 entries
// each (directory storage, NoSync): each feed's newest signature is
// checked, feeds side by side.
func BenchmarkOpen10kFeeds(b *testing.B) {
	dir := benchIndexDB(b, "new", benchManyFeeds, benchManyPerFeed)
	for b.Loop() {
		c, err := Open(dir, &Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/open")
}

// fileStateView counts entries, and keeps its count (its data) and its
// progress in one file. Map only adds to a count pending in memory; each
// StoreState writes the durable count plus the pending one, followed by the
// state, to a new file, fsyncs it and renames it over the old one. So the
// count and the progress that covers it change in one atomic step, and the
// view counts every entry exactly once across crashes (the View contract).
// The fsync before the rename is what the contract needs: without it a
// crash could leave the new name on a file whose bytes never landed. The
// directory is not fsynced: a rename lost with it leaves the older count
// and state, which agree with each other.
type fileStateView struct {
	path string

	mu      sync.Mutex
	count   int64 // in the file
	pending int64 // mapped since the last StoreState
	stored  int   // bytes of state stored so far
	stores  int
	buf     []byte
}

func (v *fileStateView) Map(es []Entry) error {
	v.mu.Lock()
	v.pending += int64(len(es))
	v.mu.Unlock()
	return nil
}

// FetchState reads the count and the state back from the file.
func (v *fileStateView) FetchState() ([]byte, error) {
	b, err := os.ReadFile(v.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 8 {
		return nil, fmt.Errorf("%s: %d bytes, shorter than its count", v.path, len(b))
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.count, v.pending = int64(binary.BigEndian.Uint64(b)), 0
	return b[8:], nil
}

// StoreState replaces the file with the count and state.
func (v *fileStateView) StoreState(state []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	count := v.count + v.pending
	v.buf = binary.BigEndian.AppendUint64(v.buf[:0], uint64(count))
	v.buf = append(v.buf, state...)
	tmp := v.path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(v.buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, v.path)
	}
	if err != nil {
		return err
	}
	v.count, v.pending = count, 0
	v.stored += len(state)
	v.stores++
	return nil
}

// ClearIndex drops the count; StoreState follows with the progress reset.
func (v *fileStateView) ClearIndex() error {
	v.mu.Lock()
	v.count, v.pending = 0, 0
	v.mu.Unlock()
	return nil
}

// BenchmarkIndex10kFeedsNewDurableView is BenchmarkIndex10kFeedsNewView
// with a view that stores its count and progress in a file, replaced
// atomically and fsynced by each StoreState (fileStateView): the state names
// every feed, so storing it after each batch would cost 10,000 feeds' worth
// per batch. Each run opens the database afresh (not timed) and indexes
// from Use until Ready returns, into a new file; the file is read back
// after each run (not timed) to check the count. It reports entries/s, the
// state bytes stored per run and the StoreState calls (each one fsync).
func BenchmarkIndex10kFeedsNewDurableView(b *testing.B) {
	dir := benchIndexDB(b, "new", benchManyFeeds, benchManyPerFeed)
	const total = benchManyFeeds * benchManyPerFeed
	ctx := context.Background()
	viewDir := b.TempDir()
	var stored, stores int
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		c, err := Open(dir, &Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		v := &fileStateView{path: filepath.Join(viewDir, fmt.Sprint("durable", i))}
		b.StartTimer()
		if _, err := c.Use("durable", 1, v); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		back := &fileStateView{path: v.path}
		if _, err := back.FetchState(); err != nil {
			b.Fatal(err)
		}
		if back.count != total {
			b.Fatalf("the file counts %d of %d entries", back.count, total)
		}
		stored, stores = v.stored, v.stores
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*total, 0)
	b.ReportMetric(float64(stored)/1e6, "state-MB-stored")
	b.ReportMetric(float64(stores), "stores")
}

// BenchmarkIndex10kFeedsOneBusy: 200,000 entries appended (while the view
// is paused, not timed) to one of the 10,000 feeds are indexed, from Resume
// until Ready returns. Reports entries/s (target: at least 1,000,000) and
// the peak heap in use while indexing (target: under 100 MB; live-heap-MB is
// the heap after a GC once the view caught up). So that every
// run starts from the same database, the busy feed's files are copied to a
// scratch directory and the database is opened with New over both (see
// overlayStorage); every file is still on directory storage.
func BenchmarkIndex10kFeedsOneBusy(b *testing.B) {
	dir := benchIndexDB(b, "new", benchManyFeeds, benchManyPerFeed)
	ctx := context.Background()
	vals := benchValues(benchBatch, benchValueSize)
	var peak, live float64
	for b.Loop() {
		b.StopTimer()
		s := openBusyOverlay(b, dir, feedPrefix(0))
		c, err := New(s, &Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		v := &countView{}
		if _, err := c.Use("count", 1, v); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			b.Fatal(err)
		}
		if err := c.Pause(ctx); err != nil {
			b.Fatal(err)
		}
		w := c.FindWriter("w0")
		for range benchBusyEntries / benchBatch {
			if _, err := w.Append(vals...); err != nil {
				b.Fatal(err)
			}
		}
		before := v.n.Load()
		h := sampleHeap(5 * time.Millisecond)
		b.StartTimer()
		if err := c.Resume(); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		peak = max(peak, float64(h.Stop()))
		if got := v.n.Load() - before; got != benchBusyEntries {
			b.Fatalf("indexed %d of %d new entries", got, benchBusyEntries)
		}
		live = float64(heapAfterGC())
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*benchBusyEntries, int64(b.N)*benchBusyEntries*benchValueSize)
	b.ReportMetric(peak/1e6, "peak-heap-MB")
	b.ReportMetric(live/1e6, "live-heap-MB")
}

// Replication sessions. A source database is built once per process (see
// benchReplicateSource); each iteration replicates it, non-live, into a
// fresh empty database on directory storage, over TLS on real TCP through
// 127.0.0.1. Making the empty database and the connection is not timed; the
// TLS handshake is. Besides entries/s and MB/s each reports the peak heap
// of the process while it replicates (peak-heap-MB: HeapInuse sampled every
// 5 ms, source and both sides of the session included).
// BenchmarkRefTLSLoopback is the reference: what TLS alone moves over the
// same kind of connection.

// benchDBs holds the fixture databases built so far in this process, by
// name: creating 10,000 writers takes seconds.
var benchDBs struct {
	mu    sync.Mutex
	built map[string]benchSource
}

type benchSource struct {
	dir string
	key []byte // its shared key
}

// benchDB returns the directory and shared key of a database (directory
// storage, NoSync) of feeds writers named "w0", "w1"…, each of perFeed
// entries of size bytes, building it under the fixture directory (see
// benchFixtures) if this process has not yet. Benchmarks that change the
// database use a name of their own.
func benchDB(b *testing.B, name string, feeds, perFeed, size int) benchSource {
	b.Helper()
	fx := &benchDBs
	fx.mu.Lock()
	defer fx.mu.Unlock()
	name = fmt.Sprintf("%s-%dx%dx%d", name, feeds, perFeed, size)
	if src, ok := fx.built[name]; ok {
		return src
	}
	dir := filepath.Join(benchFixtureStorage(b).Dir(), name)
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	writeBenchFeeds(b, c, feeds, perFeed, size)
	src := benchSource{dir: dir, key: c.SharedKey()}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
	if fx.built == nil {
		fx.built = make(map[string]benchSource)
	}
	fx.built[name] = src
	return src
}

// benchIndexDB is benchDB of entries of benchValueSize bytes, for the
// indexer benchmarks: its directory.
func benchIndexDB(b *testing.B, name string, feeds, perFeed int) string {
	return benchDB(b, "index-"+name, feeds, perFeed, benchValueSize).dir
}

// writeBenchFeeds adds writers "w0", "w1"… to c, each with perFeed entries
// of size bytes, in appends of at most 1,000 entries and 16 MiB. The
// writers record no causal context (see withoutContexts): each block is
// 0x00 ‖ value, as if every feed came from a writer elsewhere that appended
// alone, and the numbers stay comparable with those of format 3.
func writeBenchFeeds(b *testing.B, c *Core, feeds, perFeed, size int) {
	b.Helper()
	withoutContexts(c)
	vals := benchValues(min(perFeed, benchBatch, max(1, 16<<20/size)), size)
	for i := range feeds {
		w, err := c.Writer(fmt.Sprint("w", i))
		if err != nil {
			b.Fatal(err)
		}
		for left := perFeed; left > 0; left -= len(vals) {
			if _, err := w.Append(vals[:min(left, len(vals))]...); err != nil {
				b.Fatal(err)
			}
		}
	}
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

// BenchmarkRefTLSLoopback is the reference for replication: TLS 1.3 as
// Replicate sets it up, moving 256 writes of 1 MiB per iteration (as much
// as BenchmarkReplicate256x1MiB) over loopback TCP. The handshake is not
// timed.
func BenchmarkRefTLSLoopback(b *testing.B) {
	const writes, size = 256, 1 << 20
	ca, cb := connPair(b, "tcp")
	cfgA, err := tlsConfig()
	if err != nil {
		b.Fatal(err)
	}
	cfgB, err := tlsConfig()
	if err != nil {
		b.Fatal(err)
	}
	client, server := tls.Client(ca, cfgA), tls.Server(cb, cfgB)
	defer client.Close()
	defer server.Close()
	hs := make(chan error, 1)
	go func() { hs <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-hs; err != nil {
		b.Fatal(err)
	}
	msg := benchValues(1, size)[0]
	buf := make([]byte, size)
	for b.Loop() {
		werr := make(chan error, 1)
		go func() {
			for range writes {
				if _, err := client.Write(msg); err != nil {
					werr <- err
					return
				}
			}
			werr <- nil
		}()
		for range writes {
			if _, err := io.ReadFull(server, buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-werr; err != nil {
			b.Fatal(err)
		}
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)*writes*size/1e6/sec, "MB/s")
	b.ReportMetric(float64(b.N)*writes/sec, "writes/s")
}

// BenchmarkCausalCompare100Writers: the causal index over 100 writers ×
// 1,000 entries (100,000 entries) appended in segments of 1–10 entries,
// each segment's deps being the context a writer records: the heads of what
// it had received from 1–3 random peers just before (random interleaving),
// less those its previous entry follows (delta), reduced to those no other
// follows. ns/op is one compare of a random pair of entries; build
// entries/s is the rate of indexing all segments given in a random order
// (deps not added yet wait); bytes/entry is the heap the built index keeps.
func BenchmarkCausalCompare100Writers(b *testing.B) {
	const writers, perWriter = 100, 1000
	segs := causalBenchSegs(writers, perWriter)
	rng := rand.New(rand.NewPCG(2, 18))
	order := rng.Perm(len(segs))
	x := new(causalIndex)
	start := time.Now()
	for _, i := range order {
		s := segs[i]
		x.add(s.feed, s.start, s.end, s.deps)
	}
	build := time.Since(start)
	for w := range writers {
		if n := x.indexedLen(w); n != perWriter {
			b.Fatalf("feed %d: %d entries indexed, want %d", w, n, perWriter)
		}
	}
	pairs := make([]pos, 1<<16)
	for i := range pairs {
		pairs[i] = pos{rng.IntN(writers), rng.Uint64N(perWriter)}
	}
	var counts [5]int
	i := 0
	for b.Loop() {
		counts[x.compare(pairs[i&(len(pairs)-1)], pairs[(i+1)&(len(pairs)-1)])]++
		i++
	}
	if counts[Unknown] != 0 {
		b.Fatalf("%d compares unknown", counts[Unknown])
	}
	b.ReportMetric(float64(writers*perWriter)/build.Seconds(), "build-entries/s")
	var with, without runtime.MemStats // the heap the index keeps: with it less without it
	runtime.GC()
	runtime.ReadMemStats(&with)
	runtime.KeepAlive(x)
	x = nil
	runtime.GC()
	runtime.ReadMemStats(&without)
	b.ReportMetric(float64(int64(with.HeapAlloc)-int64(without.HeapAlloc))/(writers*perWriter), "bytes/entry")
	b.ReportMetric(float64(counts[Concurrent])/float64(i), "concurrent-fraction")
}

// causalBenchSegs makes the history of BenchmarkCausalCompare100Writers
// (deterministic): it builds an index in order to compute the contexts
// with reduce, as the Core will.
func causalBenchSegs(writers int, perWriter uint64) []causalSeg {
	rng := rand.New(rand.NewPCG(1, 18))
	var x causalIndex
	had := make([][]uint64, writers)
	for w := range had {
		had[w] = make([]uint64, writers)
	}
	lens := make([]uint64, writers)
	live := make([]int, writers)
	for w := range live {
		live[w] = w
	}
	var segs []causalSeg
	var heads []dep
	for len(live) > 0 {
		li := rng.IntN(len(live))
		w := live[li]
		for range 1 + rng.IntN(3) {
			v := rng.IntN(writers)
			if v == w {
				continue
			}
			for g, n := range had[v] {
				had[w][g] = max(had[w][g], n)
			}
			had[w][v] = lens[v]
		}
		heads = heads[:0]
		for g, n := range had[w] {
			if n > 0 {
				heads = append(heads, dep{g, n - 1})
			}
		}
		keep := x.reduce(w, lens[w], heads)
		n := min(1+rng.Uint64N(10), perWriter-lens[w])
		s := causalSeg{w, lens[w], lens[w] + n, keep}
		x.add(s.feed, s.start, s.end, s.deps)
		segs = append(segs, s)
		lens[w] += n
		had[w][w] = lens[w]
		if lens[w] == perWriter {
			live[li] = live[len(live)-1]
			live = live[:len(live)-1]
		}
	}
	return segs
}

// causalCountView is countView with causal delivery.
type causalCountView struct{ countView }

func (*causalCountView) Causal() bool { return true }

// BenchmarkIndexCausal100Writersx1000: a causal view indexes 100 writers ×
// 1,000 entries of 100 bytes, from Use until Ready returns (opening the
// database is not timed). The writers appended in turns, 100 entries per
// Append, so the first entry of each call names the heads of the 99 others
// (1,000 contexts of 99 Pos); the replica got the feeds by Put of signed
// proofs, the last writer's feed first, so the indexer meets each feed
// before the feeds it depends on and must make it wait. Reports entries/s
// (target: at least 1,000,000).
func BenchmarkIndexCausal100Writersx1000(b *testing.B) {
	const writers, perFeed, perAppend = 100, 1000, 100
	src, err := Open(b.TempDir(), &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ws := make([]*Feed, writers)
	for i := range ws {
		if ws[i], err = src.Writer(fmt.Sprint("w", i)); err != nil {
			b.Fatal(err)
		}
	}
	vals := benchValues(perAppend, benchValueSize)
	for range perFeed / perAppend {
		for _, w := range ws {
			if _, err := w.Append(vals...); err != nil {
				b.Fatal(err)
			}
		}
	}
	dir := b.TempDir()
	c, err := Open(dir, &Options{NoSync: true, SharedKey: src.SharedKey()})
	if err != nil {
		b.Fatal(err)
	}
	for i := len(ws) - 1; i >= 0; i-- {
		r, err := c.AddFeed(ws[i].Key())
		if err != nil {
			b.Fatal(err)
		}
		p, err := ws[i].Proof(0, ws[i].Len(), 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Put(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
	total := writers * perFeed
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, err := Open(dir, &Options{NoSync: true, SharedKey: src.SharedKey()})
		if err != nil {
			b.Fatal(err)
		}
		v := &causalCountView{}
		b.StartTimer()
		x, err := c.Use("causal", 1, v)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if v.n.Load() != int64(total) {
			b.Fatalf("indexed %d of %d; waiting %v", v.n.Load(), total, x.Status().Waiting)
		}
		c.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkSwarmIdlePeer connects 50 nodes (empty in-memory databases:
// the cost measured is the connection's, not its feeds') to one node as
// static peers, waits until every session is synced and idle, and
// reports what an idle peer connection
// costs: live heap plus goroutine stacks (after a GC), and goroutines,
// per connection. Both ends of each connection run in this process, so
// each figure is for both: the peer's swarm (its dial loop) and session,
// and the hub's session. The databases are opened before the baseline.
func BenchmarkSwarmIdlePeer(b *testing.B) {
	const peers = 50
	mem := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc + ms.StackInuse
	}
	var perPeer, goPerPeer float64
	run := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		hub, err := New(NewMemStorage(), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer hub.Close()
		hs, err := hub.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		cores := make([]*Core, peers)
		for i := range cores {
			c, err := New(NewMemStorage(), &Options{SharedKey: hub.SharedKey()})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			cores[i] = c
		}
		baseMem, baseG := mem(), runtime.NumGoroutine()
		for _, c := range cores {
			if _, err := c.Swarm(&SwarmOptions{Peers: []string{hs.Addr().String()}}); err != nil {
				b.Fatal(err)
			}
		}
		for {
			changed := hs.changes()
			if _, running := sessionCounts(hs); running == peers {
				break
			}
			select {
			case <-changed:
			case <-ctx.Done():
				b.Fatal("the peers did not all connect")
			}
		}
		if err := hs.Synced(ctx); err != nil {
			b.Fatal(err)
		}
		perPeer = (float64(mem()) - float64(baseMem)) / peers
		goPerPeer = float64(runtime.NumGoroutine()-baseG) / peers
		hs.Close()
	}
	for b.Loop() {
		run()
	}
	b.ReportMetric(perPeer, "B/peer")
	b.ReportMetric(goPerPeer, "goroutines/peer")
}

// BenchmarkSwarm8NodesLAN: eight nodes of one database, each holding 1,000
// entries of its own (100 B), start their swarms at once and find each
// other by LAN discovery on this machine: real multicast where it works
// (listening on every interface, since beacons come from the interface's
// address), else the in-memory beacon hub on 127.0.0.1. Reported: ms from
// start until every node holds all 8,000 entries and Synced returned on
// every node (target: under 2 s on a 2-core machine), and, within it, ms
// until every node had found the seven others (discovery-ms).
func BenchmarkSwarm8NodesLAN(b *testing.B) {
	const nodes, entries = 8, 1000
	multicast, why := multicastWorks(b)
	if !multicast {
		b.Logf("no multicast here (%s): beacons through the in-memory hub", why)
	}
	vals := benchValues(entries, benchValueSize)
	var discovery, synced time.Duration
	for b.Loop() {
		b.StopTimer()
		var hub *beaconHub
		if !multicast {
			hub = newBeaconHub()
		}
		var key []byte
		cores := make([]*Core, nodes)
		for i := range cores {
			c, err := New(NewMemStorage(), &Options{SharedKey: key})
			if err != nil {
				b.Fatal(err)
			}
			key = c.SharedKey()
			w, err := c.Writer("w")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Append(vals...); err != nil {
				b.Fatal(err)
			}
			cores[i] = c
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		b.StartTimer()
		start := time.Now()
		sws := make([]*Swarm, nodes)
		for i, c := range cores {
			opts := &SwarmOptions{LAN: true, Listen: ":0"}
			if hub != nil {
				opts = &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(net.IPv4(127, 0, 0, 1))}
			}
			sw, err := c.Swarm(opts)
			if err != nil {
				b.Fatal(err)
			}
			sws[i] = sw
		}
		found := func() bool {
			for _, sw := range sws {
				sw.mu.Lock()
				n := len(sw.lanNodes)
				sw.mu.Unlock()
				if n < nodes-1 {
					return false
				}
			}
			return true
		}
		holdAll := func() bool {
			for _, c := range cores {
				fs := c.Feeds()
				if len(fs) != nodes {
					return false
				}
				for _, f := range fs {
					if f.Len() != entries || !f.HasRange(0, entries) {
						return false
					}
				}
			}
			return true
		}
		waitSwarms(b, ctx, sws, "every node found the others", found)
		discovery += time.Since(start)
		waitSwarms(b, ctx, sws, "every node holds every entry", holdAll)
		for _, sw := range sws {
			if err := sw.Synced(ctx); err != nil {
				b.Fatal(err)
			}
		}
		synced += time.Since(start)
		b.StopTimer()
		for i := range cores {
			sws[i].Close()
			cores[i].Close()
		}
		cancel()
		b.StartTimer()
	}
	b.ReportMetric(synced.Seconds()*1e3/float64(b.N), "ms/sync")
	b.ReportMetric(discovery.Seconds()*1e3/float64(b.N), "discovery-ms")
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

// Core.Compare of random pairs of 100,000 entries of 100 writers of one
// database, which appended in turns random calls of 1–10 values (each
// call's context reduced): what a view pays to call it inside Map.
func BenchmarkCompare100Writers100k(b *testing.B) {
	c, err := Open(b.TempDir(), &Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(100, 100_000))
	ws := make([]*Feed, 100)
	for i := range ws {
		if ws[i], err = c.Writer(fmt.Sprint("w", i)); err != nil {
			b.Fatal(err)
		}
	}
	vals := benchValues(10, benchValueSize)
	var all []Pos
	for len(all) < 100_000 {
		w := ws[rng.IntN(len(ws))]
		k := min(1+rng.IntN(10), 100_000-len(all))
		seq, err := w.Append(vals[:k]...)
		if err != nil {
			b.Fatal(err)
		}
		for i := range uint64(k) {
			all = append(all, Pos{w.Key(), seq + i})
		}
	}
	pairs := make([][2]Pos, 1<<16)
	for i := range pairs {
		pairs[i] = [2]Pos{all[rng.IntN(len(all))], all[rng.IntN(len(all))]}
	}
	var n [Same + 1]int
	for i := 0; b.Loop(); i++ {
		p := &pairs[i&(len(pairs)-1)]
		o, err := c.Compare(p[0], p[1])
		if err != nil {
			b.Fatal(err)
		}
		n[o]++
	}
	if n[Unknown] > 0 {
		b.Fatalf("%d comparisons unknown", n[Unknown])
	}
	b.ReportMetric(float64(n[Before]+n[After])/float64(b.N), "ordered/op")
}

// The public API's workloads: what users run, through Open, Writer,
// Append, Use, Ready and Get on directory storage (Open's), with a
// database opened with ValueEncoding JSON and values of about 100 bytes.
// Each records causal contexts as every database does. The README's
// table quotes them, next to JS kappa-core 7 on the same workloads; read
// the synced rates against BenchmarkRefWriteFsync100B.

const (
	apiEntries = 200_000
	apiBatch   = 1_000
)

// apiValues returns n distinct JSON documents of about 100 bytes.
func apiValues(n int) [][]byte {
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = fmt.Appendf(nil, `{"type":"chat","author":"user-%03d","seq":%d,"text":"the quick brown fox %08x","ok":true}`, i%1000, i, uint32(i)*2654435761)
	}
	return vals
}

// apiOpen opens (or creates) the JSON database in dir, without fsync
// unless sync is set.
func apiOpen(b *testing.B, dir string, sync bool) *Core {
	b.Helper()
	c, err := Open(dir, &Options{ValueEncoding: JSON, NoSync: !sync})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// apiFixture returns the directory of a closed JSON database whose writer
// "w" holds apiEntries values, appended in calls of apiBatch; built once per
// process.
func apiFixture(b *testing.B) string {
	b.Helper()
	s := benchFixtureStorage(b)
	dir := filepath.Join(s.Dir(), "api-json")
	fx := &benchFixtures
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if fx.built[dir] {
		return dir
	}
	c := apiOpen(b, dir, false)
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	vals := apiValues(apiBatch)
	for w.Len() < apiEntries {
		if _, err := w.Append(vals...); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
	fx.built[dir] = true
	return dir
}

// BenchmarkAPIAppendJSONBatch: 200,000 JSON values appended to a new
// database's writer in calls of 1,000 (no fsync, as JS never syncs).
// Opening and closing are not timed. Target: at least 2,000,000 entries/s
// and 10 times JS kappa-core.
func BenchmarkAPIAppendJSONBatch(b *testing.B) {
	vals := apiValues(apiBatch)
	for b.Loop() {
		b.StopTimer()
		c := apiOpen(b, b.TempDir(), false)
		w, err := c.Writer("w")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for range apiEntries / apiBatch {
			if _, err := w.Append(vals...); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*apiEntries, 0)
}

// bytesView counts entries and their bytes; its batches are of 100.
type bytesView struct{ n, bytes int }

func (v *bytesView) Map(es []Entry) error {
	v.n += len(es)
	for _, e := range es {
		v.bytes += len(e.Value)
	}
	return nil
}
func (v *bytesView) MaxBatch() int { return 100 }

// decodeView decodes every entry with encoding/json; its batches are of
// 100.
type decodeView struct{ n, seqs int }

func (v *decodeView) Map(es []Entry) error {
	for _, e := range es {
		var m struct {
			Type, Author, Text string
			Seq                int
			OK                 bool
		}
		if err := e.Decode(&m); err != nil {
			return err
		}
		v.n++
		v.seqs += m.Seq
	}
	return nil
}
func (v *decodeView) MaxBatch() int { return 100 }

// benchmarkAPIIndex opens the fixture database of 200,000 JSON values, uses
// view and waits for Ready: all three timed, closing not.
func benchmarkAPIIndex(b *testing.B, view func() (View, func() int)) {
	dir := apiFixture(b)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		v, count := view()
		b.StartTimer()
		c := apiOpen(b, dir, false)
		if _, err := c.Use("v", 1, v); err != nil {
			b.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if n := count(); n != apiEntries {
			b.Fatalf("indexed %d of %d", n, apiEntries)
		}
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, int64(b.N)*apiEntries, 0)
}

// BenchmarkAPIIndexJSONCount: reopen the database, Use a view that counts
// bytes (MaxBatch 100), Ready. Target: at least 2,000,000 entries/s and 10
// times JS kappa-core.
func BenchmarkAPIIndexJSONCount(b *testing.B) {
	benchmarkAPIIndex(b, func() (View, func() int) {
		v := new(bytesView)
		return v, func() int { return v.n }
	})
}

// BenchmarkAPIIndexJSONDecode: the same with a view that decodes every
// entry with encoding/json (Entry.Decode). Reported, no target.
func BenchmarkAPIIndexJSONDecode(b *testing.B) {
	benchmarkAPIIndex(b, func() (View, func() int) {
		v := new(decodeView)
		return v, func() int { return v.n }
	})
}

// benchmarkAPIAppendSingle appends one JSON value per call to a writer of
// a new database, from goroutines goroutines at once, with or without
// fsync.
func benchmarkAPIAppendSingle(b *testing.B, goroutines int, synced bool) {
	c := apiOpen(b, b.TempDir(), synced)
	defer c.Close()
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	vals := apiValues(apiBatch)
	var next atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if _, err := w.Append(vals[i%apiBatch]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportRate(b, int64(b.N), 0)
}

// BenchmarkAPIAppendJSONSingle: one value per Append, no fsync. Target: at
// least 80% of BenchmarkRefEd25519Sign.
func BenchmarkAPIAppendJSONSingle(b *testing.B) { benchmarkAPIAppendSingle(b, 1, false) }

// BenchmarkAPIAppendJSONSingleSync: one value per Append, synced (the
// default). Target: at least 80% of BenchmarkRefWriteFsync100B.
func BenchmarkAPIAppendJSONSingleSync(b *testing.B) { benchmarkAPIAppendSingle(b, 1, true) }

// BenchmarkAPIAppendJSONSingleSync16: 16 goroutines, each appending one
// value per call, synced: concurrent calls share a commit.
func BenchmarkAPIAppendJSONSingleSync16(b *testing.B) { benchmarkAPIAppendSingle(b, 16, true) }

// BenchmarkAPIGetJSON: Get each of the 200,000 entries of the reopened
// fixture database in turn. Target: at least 2,000,000 entries/s.
func BenchmarkAPIGetJSON(b *testing.B) {
	c := apiOpen(b, apiFixture(b), false)
	defer c.Close()
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var n int
	for i := 0; b.Loop(); i++ {
		v, err := w.Get(ctx, uint64(i%apiEntries))
		if err != nil {
			b.Fatal(err)
		}
		n += len(v)
	}
	reportRate(b, int64(b.N), int64(n))
}

// BenchmarkRefWriteFsync100B: the disk's own limit for a durable append:
// 100 bytes appended to a file and fsynced, in the benchmark's temporary
// directory, as a database's files would be.
func BenchmarkRefWriteFsync100B(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	rec := make([]byte, 100)
	for b.Loop() {
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, int64(b.N), int64(b.N)*100)
}
