package kappa

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks of views: indexing one feed, many feeds, a view with durable
// state, one busy feed among 10,000. (A new view over 10,000 feeds is in
// bench_test.go, with the public API's workloads.)

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
