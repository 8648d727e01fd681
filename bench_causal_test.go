package kappa

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// Benchmarks of causal order: the causal index, Compare, causal views.

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
