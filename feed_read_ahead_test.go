package kappa

import (
	"bytes"
	"errors"
	"runtime"
	"testing"
)

// A reader that Gets every entry in turn is served from windows read (and
// verified) ahead of it: it gets every value, ErrCorrupt for each damaged
// entry and nothing else, each damaged entry is reported once, a reader
// that jumps is not served from the window, and closing leaves no
// goroutine behind.
func TestSequentialGetReadsAheadAndStopsAtDamage(t *testing.T) {
	before := runtime.NumGoroutine()
	db := newDamageDB(t, numbered(3000, 9), 0)
	damaged := map[int]bool{300: true, 301: true, 1100: true, 2999: true}
	s := damageCopy(db.s)
	for seq := range damaged {
		b, _ := s.fileBytes(wData)
		b = bytes.Clone(b)
		b[db.recordPos(seq)+dataLenLen+2] ^= 4
		s.setFileBytes(wData, b)
	}
	var ev events
	c, err := New(s, ev.options(db.key))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Feed(db.feed)
	for pass := range 2 { // the second finds the damage marked
		for seq := range 3000 {
			v, err := w.Get(ctxT(t), uint64(seq))
			if damaged[seq] {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("pass %d: get %d: %q, %v; want ErrCorrupt", pass, seq, v, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(v, db.values[seq]) {
				t.Fatalf("pass %d: get %d: %q, %v; want %q", pass, seq, v, err, db.values[seq])
			}
		}
	}
	// A reader that jumps is not served from the window.
	for _, seq := range []int{0, 1, 2, 200, 201, 1500, 1501, 400, 2000} {
		if v, err := w.Get(ctxT(t), uint64(seq)); err != nil || !bytes.Equal(v, db.values[seq]) {
			t.Fatalf("get %d: %q, %v; want %q", seq, v, err, db.values[seq])
		}
	}
	if ds := ev.damaged(); len(ds) != len(damaged) {
		t.Fatalf("%d damaged entries reported, want %d: %v", len(ds), len(damaged), ds)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	goroutinesSettle(t, before)
}
