package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
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
	var ev events
	c, w := openWithDamagedValues(t, db, &ev, slices.Collect(maps.Keys(damaged))...)
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

// A large read checks its entries on several cores, by chunks, but ends
// as a read in order does: at the first damaged entry, reported alone;
// damage further on is found (and reported) by the read that gets there.
func TestLargeReadEndsAtTheFirstDamagedEntry(t *testing.T) {
	var ev events
	c, w := openWithDamagedValues(t, newDamageDB(t, numbered(1000, 9), 0), &ev, 700, 300, 999)
	defer c.Close()
	for _, tc := range []struct {
		start, end, bad int
		reported        int
	}{
		{0, 1000, 300, 1},
		{301, 1000, 700, 2},
		{701, 1000, 999, 3},
		{0, 300, -1, 3},
		{301, 700, -1, 3},
	} {
		vals, err := w.GetBatch(ctxT(t), uint64(tc.start), uint64(tc.end))
		if tc.bad < 0 {
			if err != nil || len(vals) != tc.end-tc.start {
				t.Fatalf("get [%d, %d): %d values, %v", tc.start, tc.end, len(vals), err)
			}
		} else if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("entry %d ", tc.bad)) {
			t.Fatalf("get [%d, %d): %v; want ErrCorrupt for entry %d", tc.start, tc.end, err, tc.bad)
		}
		if ds := ev.damaged(); len(ds) != tc.reported {
			t.Fatalf("after get [%d, %d): %d damaged entries reported, want %d: %v", tc.start, tc.end, len(ds), tc.reported, ds)
		}
	}
}

// openWithDamagedValues opens a copy of db whose values of entries seqs
// have a bit flipped, reporting to ev, and returns it and db's feed.
func openWithDamagedValues(t *testing.T, db *damageDB, ev *events, seqs ...int) (*Core, *Feed) {
	t.Helper()
	s := damageCopy(db.s)
	for _, seq := range seqs {
		b, _ := s.fileBytes(wData)
		b = bytes.Clone(b)
		b[db.recordPos(seq)+dataLenLen+2] ^= 4
		s.setFileBytes(wData, b)
	}
	c, err := New(s, ev.options(db.key))
	if err != nil {
		t.Fatal(err)
	}
	return c, c.Feed(db.feed)
}

// Get serves a sequential reader from its window without waiting, but not
// after Close: the next entry, read into the window before, fails with
// ErrClosed like any other.
func TestGetAfterCloseIsNotServedFromTheWindow(t *testing.T) {
	c := newCore(t, nil)
	w := mustWriter(t, c, "w")
	if _, err := w.Append(numbered(1000, 9)...); err != nil {
		t.Fatal(err)
	}
	for seq := range 10 {
		if _, err := w.Get(ctxT(t), uint64(seq)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Get(ctxT(t), 10); !errors.Is(err, ErrClosed) {
		t.Fatalf("get 10 after Close: %q, %v; want ErrClosed", v, err)
	}
}
