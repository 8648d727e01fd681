package kappa

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
)

// A view reads batches of one feed ahead of the batch it maps, several at
// once. A batch that ends early at a damaged entry drops those read after
// it: the view still gets the feed's entries in order, every one but the
// damaged ones, each once and with its value, and each damaged entry is
// reported once. Damage is placed in the first batch (read from the data
// file alone), in two entries side by side, across batches and in the
// last entry.
func TestViewReadingAheadMapsInOrderPastDamage(t *testing.T) {
	const n = 2000
	damaged := []int{5, 505, 506, 1203, 1999}
	db := newDamageDB(t, numbered(n, 9), 0)
	var ev events
	c, _ := openWithDamagedValues(t, db, &ev, damaged...)
	defer c.Close()
	var mu sync.Mutex
	var got []int
	// An entry out of order (or twice) ends the wait at once.
	ctx, disorder := context.WithCancel(ctxT(t))
	defer disorder()
	x := mustUse(t, c, "v", 1, &batcher{max: 10, fn: func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			if !bytes.Equal(e.Value, db.values[e.Seq]) {
				t.Errorf("entry %d mapped as %q, want %q", e.Seq, e.Value, db.values[e.Seq])
			}
			if len(got) > 0 && int(e.Seq) <= got[len(got)-1] {
				t.Errorf("entry %d mapped after entry %d", e.Seq, got[len(got)-1])
				disorder()
			}
			got = append(got, int(e.Seq))
		}
		return nil
	}})
	if err := x.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	var want []int
	for seq := range n {
		if !slices.Contains(damaged, seq) {
			want = append(want, seq)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("the view got %d entries, want %d; the %dth is %d, want %d", len(got), len(want), i, got[i], want[i])
			}
		}
		t.Fatalf("the view got %d entries, want %d", len(got), len(want))
	}
	if ds := ev.damaged(); len(ds) != len(damaged) {
		t.Fatalf("%d damaged entries reported, want %d: %v", len(ds), len(damaged), ds)
	}
}
