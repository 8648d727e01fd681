package kappa

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

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
