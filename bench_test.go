package kappa

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks on directory storage. This file holds the reference limits
// of the machine and the public API's workloads (the BenchmarkAPI ones and
// BenchmarkIndex10kFeedsNewView, which the README's table quotes next to
// JS kappa-core: see bench/js);
// bench_feed_test.go, bench_index_test.go, bench_replicate_test.go,
// bench_causal_test.go and bench_swarm_test.go measure the parts. Every
// benchmark reports its throughput as entries/s (and MB/s where entries
// have a size), so that one run can be read against the reference limits
// of the same machine: BenchmarkRefEd25519Sign (a single Append can go no
// faster than one signature), BenchmarkRefSHA256Block100 (every entry is
// hashed once on write and once on read) and BenchmarkRefWriteFsync100B (a
// synced Append can go no faster than one write and fsync).
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
	sign := benchRefSign(b)
	for b.Loop() {
		sign()
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
	base := b.TempDir()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dir := filepath.Join(base, strconv.Itoa(i))
		c := apiOpen(b, dir, false)
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
		// Removed at once, as the JS benchmark removes its directory:
		// a run does not write beside the pages of all the runs before.
		if err := os.RemoveAll(dir); err != nil {
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
	dir := b.TempDir()
	c := apiOpen(b, dir, synced)
	defer c.Close()
	w, err := c.Writer("w")
	if err != nil {
		b.Fatal(err)
	}
	vals := apiValues(apiBatch)
	if goroutines == 1 {
		benchmarkAPIAppendOne(b, w, vals, dir, synced)
		return
	}
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

// benchmarkAPIAppendOne appends vals one per call to w, and between
// rounds of appends, with the timer stopped, runs the reference its target
// is read against: an ed25519 signature of 40 bytes (as
// BenchmarkRefEd25519Sign) or, synced, a write of 100 bytes and an fsync of
// a file in dir (as BenchmarkRefWriteFsync100B). It reports the reference's
// rate and the appends' as a percentage of it ("%ref"): measured in turns,
// on a machine whose speed drifts from run to run (a virtual machine's
// does), the two are compared at the same speed. Synced, it also times a
// signature followed by the write and fsync (as
// BenchmarkRefSignWriteFsync100B/serial), the least a durable signed
// append does one after the other, and reports the appends' rate as a
// percentage of that ("%signed-ref").
func benchmarkAPIAppendOne(b *testing.B, w *Feed, vals [][]byte, dir string, synced bool) {
	const round, refs = 512, 64 // appends, then references
	ref := benchRefSign(b)
	var signed func() // synced: a signature, then a write and fsync
	if synced {
		ref = benchRefWriteFsync(b, dir)
		sign := benchRefSign(b)
		signed = func() { sign(); ref() }
	}
	var refTime, signedTime time.Duration
	var refN int
	b.ResetTimer()
	for i := range b.N {
		if _, err := w.Append(vals[i%apiBatch]); err != nil {
			b.Fatal(err)
		}
		if i%round == round-1 || i == b.N-1 {
			b.StopTimer()
			for range refs {
				t := time.Now()
				ref()
				refTime += time.Since(t)
				if signed != nil {
					t = time.Now()
					signed()
					signedTime += time.Since(t)
				}
			}
			refN += refs
			b.StartTimer()
		}
	}
	b.StopTimer()
	reportRate(b, int64(b.N), 0)
	rate := float64(b.N) / b.Elapsed().Seconds()
	refRate := float64(refN) / refTime.Seconds()
	b.ReportMetric(refRate, "ref/s")
	b.ReportMetric(100*rate/refRate, "%ref")
	if signed != nil {
		b.ReportMetric(100*rate/(float64(refN)/signedTime.Seconds()), "%signed-ref")
	}
}

// benchRefSign returns BenchmarkRefEd25519Sign's operation.
func benchRefSign(b *testing.B) func() {
	_, sec, err := ed25519.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	var msg [40]byte
	return func() { ed25519.Sign(sec, msg[:]) }
}

// benchRefWriteFsync returns BenchmarkRefWriteFsync100B's operation, on a
// file in dir.
func benchRefWriteFsync(b *testing.B, dir string) func() {
	f, err := os.Create(filepath.Join(dir, "ref-log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	rec := make([]byte, 100)
	return func() {
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAPIAppendJSONSingle: one value per Append, no fsync. Target: at
// least 80% of BenchmarkRefEd25519Sign; "%ref" is the appends' rate as a
// percentage of signatures timed in turns with them.
func BenchmarkAPIAppendJSONSingle(b *testing.B) { benchmarkAPIAppendSingle(b, 1, false) }

// BenchmarkAPIAppendJSONSingleSync: one value per Append, synced (the
// default). Target: at least 80% of BenchmarkRefWriteFsync100B; "%ref" is
// the appends' rate as a percentage of writes and fsyncs of 100 bytes timed
// in turns with them, on the same disk.
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

// BenchmarkRefSignWriteFsync100B: what a synced append that signs cannot
// do better than: an ed25519 signature of 40 bytes and a write of 100
// bytes with an fsync, one after the other ("serial"), or the signature
// made on another goroutine during the write and fsync ("concurrent"). On
// a virtual machine the two may cost the same: CPU work beside an fsync
// can slow the fsync by about what it takes (see README.md, Durability).
func BenchmarkRefSignWriteFsync100B(b *testing.B) {
	for _, concurrent := range []bool{false, true} {
		name := "serial"
		if concurrent {
			name = "concurrent"
		}
		b.Run(name, func(b *testing.B) {
			write := benchRefWriteFsync(b, b.TempDir())
			sign := benchRefSign(b)
			for b.Loop() {
				if !concurrent {
					sign()
					write()
					continue
				}
				done := make(chan struct{})
				go func() {
					sign()
					close(done)
				}()
				write()
				<-done
			}
			reportRate(b, int64(b.N), int64(b.N)*100)
		})
	}
}

// BenchmarkRefWriteFsync100B: the disk's own limit for a durable append:
// 100 bytes appended to a file and fsynced, in the benchmark's temporary
// directory, as a database's files would be.
func BenchmarkRefWriteFsync100B(b *testing.B) {
	write := benchRefWriteFsync(b, b.TempDir())
	for b.Loop() {
		write()
	}
	reportRate(b, int64(b.N), int64(b.N)*100)
}
