package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// damageDB is a database of one writer "w" (plus "other", if asked), built
// once in memory and copied for each case.
type damageDB struct {
	s      *MemStorage
	key    []byte // the shared key
	values [][]byte
	feed   []byte // w's public key
}

func newDamageDB(t testing.TB, values [][]byte, other int) *damageDB {
	t.Helper()
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	if _, err := w.Append(values...); err != nil {
		t.Fatal(err)
	}
	if other > 0 {
		appendN(t, mustWriter(t, c, "other"), other, "other ")
	}
	db := &damageDB{s: s, key: c.SharedKey(), values: values, feed: w.Key()}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return db
}

// recordPos is where entry seq's data record lies in w's data file.
func (db *damageDB) recordPos(seq int) int64 {
	var off uint64
	for _, v := range db.values[:seq] {
		off += uint64(bareBlockLen(v))
	}
	return dataPos(uint64(seq), off)
}

// flipped returns a copy of the database with bit bit of byte at of file
// name flipped.
func (db *damageDB) flipped(t testing.TB, name string, at int64, bit uint) *MemStorage {
	t.Helper()
	s := damageCopy(db.s)
	b, ok := s.fileBytes(name)
	if !ok || at >= int64(len(b)) {
		t.Fatalf("%s has no byte %d", name, at)
	}
	b = bytes.Clone(b)
	b[at] ^= 1 << bit
	s.setFileBytes(name, b)
	return s
}

// events collects what a database reports.
type events struct {
	mu      sync.Mutex
	errs    []error
	repairs []Repair
}

func (e *events) options(key []byte) *Options {
	return &Options{SharedKey: key,
		OnError:  func(err error) { e.mu.Lock(); e.errs = append(e.errs, err); e.mu.Unlock() },
		OnRepair: func(r Repair) { e.mu.Lock(); e.repairs = append(e.repairs, r); e.mu.Unlock() },
	}
}

func (e *events) damaged() []Damage {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Damage
	for _, err := range e.errs {
		var d Damage
		if errors.As(err, &d) {
			out = append(out, d)
		}
	}
	return out
}

func (e *events) repaired(reason string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.ContainsFunc(e.repairs, func(r Repair) bool { return strings.Contains(r.Reason, reason) })
}

func openDamaged(t testing.TB, s Storage, opts *Options) *Core {
	t.Helper()
	c, err := New(s, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// seqView records the entries it maps, by feed key and seq.
type seqView struct {
	mu     sync.Mutex
	mapped map[string][]uint64
	values map[string]map[uint64][]byte
}

func (v *seqView) Map(es []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mapped == nil {
		v.mapped, v.values = map[string][]uint64{}, map[string]map[uint64][]byte{}
	}
	for _, e := range es {
		k := string(e.Key)
		v.mapped[k] = append(v.mapped[k], e.Seq)
		if v.values[k] == nil {
			v.values[k] = map[uint64][]byte{}
		}
		v.values[k][e.Seq] = bytes.Clone(e.Value)
	}
	return nil
}

// seqs returns the entries of feed key mapped, sorted, each once.
func (v *seqView) seqs(key []byte) []uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := slices.Clone(v.mapped[string(key)])
	slices.Sort(s)
	return slices.Compact(s)
}

// indexed runs a new view over c and returns it once Ready.
func indexed(t testing.TB, c *Core, name string) (*Index, *seqView) {
	t.Helper()
	v := &seqView{}
	x := mustUse(t, c, name, 1, v)
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatalf("view %s: ready: %v", name, err)
	}
	return x, v
}

// allBut returns 0…n-1 without skip.
func allBut(n int, skip ...int) []uint64 {
	var out []uint64
	for i := range n {
		if !slices.Contains(skip, i) {
			out = append(out, uint64(i))
		}
	}
	return out
}

func numbered(n int, size int) [][]byte {
	vs := make([][]byte, n)
	for i := range vs {
		vs[i] = []byte(fmt.Sprintf("entry %d %s", i, strings.Repeat("x", i%size)))
	}
	return vs
}

const wData = "feeds/0/" + fileData

func TestStaleChecksumIsRewrittenAndEveryEntryIndexed(t *testing.T) {
	db := newDamageDB(t, numbered(150, 7), 0)
	const seq = 42
	pos := db.recordPos(seq)
	crcAt := pos + dataLenLen + int64(bareBlockLen(db.values[seq])) + 2
	s := db.flipped(t, wData, crcAt, 5)

	// The library's Verify: a stale checksum, no problem.
	var ev events
	c := openDamaged(t, damageCopy(s), ev.options(db.key))
	st, err := c.Verify(ctxT(t), &VerifyOptions{OnDamage: func(d Damage) { t.Errorf("verify found %v", d) }})
	if err != nil || st.Problems != 0 || st.Stale != 1 || st.Entries != 150 {
		t.Fatalf("verify: %+v, %v; want 150 entries, 1 stale checksum, no problem", st, err)
	}

	// A new view maps every entry; the stale checksum is rewritten.
	ev = events{}
	c = openDamaged(t, s, ev.options(db.key))
	_, v := indexed(t, c, "v")
	if got := v.seqs(db.feed); !slices.Equal(got, allBut(150)) {
		t.Fatalf("the view mapped %d entries, want all 150", len(got))
	}
	if d := ev.damaged(); len(d) > 0 || len(c.Damaged()) > 0 {
		t.Fatalf("damage reported for a stale checksum: %v %v", d, c.Damaged())
	}
	if !ev.repaired(fmt.Sprintf("entry %d: stale record checksum rewritten", seq)) {
		t.Fatalf("no repair reported: %v", ev.repairs)
	}
	got, _ := s.fileBytes(wData)
	want, _ := db.s.fileBytes(wData)
	if !bytes.Equal(got, want) {
		t.Fatal("the stale checksum was not rewritten on disk")
	}
}

func TestDamagedValueIsSkippedByViewsAndListed(t *testing.T) {
	db := newDamageDB(t, numbered(200, 5), 0)
	const seq = 57
	pos := db.recordPos(seq)
	s := db.flipped(t, wData, pos+dataLenLen+3, 1)
	var ev events
	c := openDamaged(t, s, ev.options(db.key))
	_, v := indexed(t, c, "v")
	if got := v.seqs(db.feed); !slices.Equal(got, allBut(200, seq)) {
		t.Fatalf("the view mapped %v, want every entry but %d", got, seq)
	}
	// Reported to OnError and listed, with feed, seq, file and offset.
	check := func(what string, ds []Damage) {
		t.Helper()
		var ce *CorruptError
		if len(ds) != 1 || !ds[0].Entry || ds[0].Seq != seq || !bytes.Equal(ds[0].Key, db.feed) ||
			!errors.As(ds[0].Err, &ce) || ce.File != wData || ce.Offset != pos {
			t.Fatalf("%s: %v, want entry %d of feed %x in %s at %d", what, ds, seq, db.feed[:4], wData, pos)
		}
	}
	check("reported", ev.damaged())
	check("Damaged", c.Damaged())
	w := c.Feed(db.feed)
	if _, err := w.Get(ctxT(t), seq); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get %d: %v, want ErrCorrupt", seq, err)
	}
	if _, err := w.GetBatch(ctxT(t), seq-1, seq+2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get batch around %d: %v, want ErrCorrupt", seq, err)
	}
	for _, n := range []uint64{seq - 1, seq + 1} {
		if v, err := w.Get(ctxT(t), n); err != nil || !bytes.Equal(v, db.values[n]) {
			t.Fatalf("get %d: %q, %v", n, v, err)
		}
	}
	if w.Has(seq) || w.Downloaded() != 199 || w.NextMissing(0) != seq || w.NextPresent(seq) != seq+1 {
		t.Fatalf("the damaged entry is still present: has %v, downloaded %d", w.Has(seq), w.Downloaded())
	}
	// Nor is it in the ranges a have sends to peers.
	if got := w.presentSpans(200); !slices.Equal(got, []span{{0, seq}, {seq + 1, 200}}) {
		t.Fatalf("present ranges %v", got)
	}
	// Reported once, however often it is read.
	check("reported after reads", ev.damaged())
}

func TestServingPeerWithDamagedBlockServesEverythingElse(t *testing.T) {
	db := newDamageDB(t, numbered(303, 9), 40)
	const seq = 100
	s := db.flipped(t, wData, db.recordPos(seq)+dataLenLen, 0)
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			var ev events
			server := openDamaged(t, damageCopy(s), ev.options(db.key))
			fresh := openDamaged(t, NewMemStorage(), &Options{SharedKey: db.key})
			if ea, eb := replicatePair(t, kind, fresh, server, nil, nil); ea != nil || eb != nil {
				t.Fatalf("replicate: %v / %v", ea, eb)
			}
			r := fresh.Feed(db.feed)
			if r == nil || r.Len() != 303 || r.Downloaded() != 302 || r.Has(seq) {
				t.Fatalf("the fresh peer holds %v", r)
			}
			got, err := r.GetBatch(ctxT(t), 0, seq)
			if err != nil || !slices.EqualFunc(got, db.values[:seq], bytes.Equal) {
				t.Fatalf("entries before the damage: %v", err)
			}
			if got, err = r.GetBatch(ctxT(t), seq+1, 303); err != nil || !slices.EqualFunc(got, db.values[seq+1:], bytes.Equal) {
				t.Fatalf("entries after the damage: %v", err)
			}
			for _, f := range server.Feeds() {
				if bytes.Equal(f.Key(), db.feed) {
					continue
				}
				if g := fresh.Feed(f.Key()); g == nil || g.Downloaded() != 40 {
					t.Fatalf("the unrelated feed did not arrive whole: %v", g)
				}
			}
			if ds := ev.damaged(); len(ds) != 1 || ds[0].Seq != seq || !ds[0].Entry {
				t.Fatalf("the server reported %v", ds)
			}
		})
	}
}

func TestReplicaHealsDamagedBlockFromPeer(t *testing.T) {
	db := newDamageDB(t, numbered(120, 6), 0)
	const seq = 30
	// A replica of w, from a healthy peer.
	healthy := openDamaged(t, damageCopy(db.s), &Options{SharedKey: db.key})
	base := NewMemStorage()
	rc := openDamaged(t, base, &Options{SharedKey: db.key})
	mustReplicate(t, "pipe", rc, healthy)
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	rdb := &damageDB{s: base, values: db.values}
	for _, tc := range []struct {
		name   string
		file   string
		at     int64
		sparse bool
	}{
		{"value", wData, rdb.recordPos(seq) + dataLenLen + 1, false},
		{"length", wData, rdb.recordPos(seq) + 3, false},
		{"leaf", "feeds/0/" + fileTree, headerSize + 2*seq*nodeSize + 7, false},
		{"sparse", wData, rdb.recordPos(seq) + dataLenLen + 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev events
			opts := ev.options(db.key)
			opts.Sparse = tc.sparse
			c := openDamaged(t, rdb.flipped(t, tc.file, tc.at, 3), opts)
			// A read finds the damage (a view reading from the start
			// checks record checksums, not leaves).
			if _, err := c.Feed(db.feed).Get(ctxT(t), seq); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("get %d: %v, want ErrCorrupt", seq, err)
			}
			x, v := indexed(t, c, "v")
			if got := v.seqs(db.feed); !slices.Equal(got, allBut(120, seq)) {
				t.Fatalf("before healing the view mapped %v", got)
			}
			if ds := c.Damaged(); len(ds) != 1 || ds[0].Seq != seq {
				t.Fatalf("damaged: %v", ds)
			}
			if got := c.Feed(db.feed).presentSpans(120); !slices.Equal(got, []span{{0, seq}, {seq + 1, 120}}) {
				t.Fatalf("present ranges %v", got)
			}
			mustReplicate(t, "pipe", c, healthy)
			if ds := c.Damaged(); len(ds) != 0 {
				t.Fatalf("still damaged after replicating: %v", ds)
			}
			if !ev.repaired(fmt.Sprintf("entry %d: damaged record rewritten from a verified copy", seq)) {
				t.Fatalf("no repair reported: %v", ev.repairs)
			}
			if tc.name == "leaf" && !ev.repaired("damaged tree record at offset") {
				t.Fatalf("the leaf's rewrite was not reported: %v", ev.repairs)
			}
			r := c.Feed(db.feed)
			if got, err := r.Get(ctxT(t), seq); err != nil || !bytes.Equal(got, db.values[seq]) {
				t.Fatalf("get %d after healing: %q, %v", seq, got, err)
			}
			if err := x.Ready(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			if got := v.seqs(db.feed); !slices.Equal(got, allBut(120)) {
				t.Fatalf("after healing the view mapped %v", got)
			}
			st, err := c.Verify(ctxT(t), nil)
			if err != nil || st.Problems != 0 {
				t.Fatalf("verify after healing: %+v, %v", st, err)
			}
		})
	}
}

// Every bit of every data record of a small feed, flipped one at a time:
// Get, GetBatch, a new view, Verify and replication agree on each entry
// (returned intact everywhere, or refused everywhere and fetched again from
// a healthy peer), and no other entry is lost. With -short, three bits of
// each byte.
func TestEveryBitFlipOfADataRecordIsFoundOneWay(t *testing.T) {
	values := [][]byte{[]byte("abc"), {}, []byte("hello"), []byte("xy")}
	db := newDamageDB(t, values, 0)
	healthy := openDamaged(t, damageCopy(db.s), &Options{SharedKey: db.key})
	ctx := ctxT(t)
	for seq := range values {
		pos := db.recordPos(seq)
		size := int64(dataFrame + bareBlockLen(values[seq]))
		for at := pos; at < pos+size; at++ {
			for bit := range uint(8) {
				if testing.Short() && bit%3 != 0 {
					continue // -short: bits 0, 3 and 6 of each byte
				}
				crc := at >= pos+size-4
				name := fmt.Sprintf("entry %d byte %d bit %d", seq, at-pos, bit)
				s := db.flipped(t, wData, at, bit)
				refused := func(n int) bool { return n == seq && !crc }

				// A new view, first.
				var ev events
				c1 := openDamaged(t, damageCopy(s), ev.options(db.key))
				_, v := indexed(t, c1, "v")
				var want []uint64
				for n := range values {
					if !refused(n) {
						want = append(want, uint64(n))
					}
				}
				if got := v.seqs(db.feed); !slices.Equal(got, want) {
					t.Fatalf("%s: the view mapped %v, want %v", name, got, want)
				}
				for _, n := range want {
					if !bytes.Equal(v.values[string(db.feed)][n], values[n]) {
						t.Fatalf("%s: the view mapped %q as entry %d", name, v.values[string(db.feed)][n], n)
					}
				}
				// Get and GetBatch agree.
				f := c1.Feed(db.feed)
				for n := range values {
					got, err := f.Get(ctx, uint64(n))
					batch, berr := f.GetBatch(ctx, uint64(n), uint64(n)+1)
					if refused(n) {
						if !errors.Is(err, ErrCorrupt) || !errors.Is(berr, ErrCorrupt) {
							t.Fatalf("%s: entry %d: get %v, get batch %v; want ErrCorrupt", name, n, err, berr)
						}
						continue
					}
					if err != nil || berr != nil || !bytes.Equal(got, values[n]) || !bytes.Equal(batch[0], values[n]) {
						t.Fatalf("%s: entry %d: get %q %v, get batch %v", name, n, got, err, berr)
					}
				}
				if _, err := f.GetBatch(ctx, 0, uint64(len(values))); (err != nil) != !crc {
					t.Fatalf("%s: get batch of all: %v", name, err)
				}
				c1.Close()

				// Verify, on its own copy.
				c2 := openDamaged(t, damageCopy(s), &Options{SharedKey: db.key})
				st, err := c2.Verify(ctx, nil)
				wantProblems, wantStale := 1, 0
				if crc {
					wantProblems, wantStale = 0, 1
				}
				if err != nil || st.Problems != wantProblems || st.Stale != wantStale || st.Entries != uint64(len(values)-wantProblems) {
					t.Fatalf("%s: verify: %+v, %v", name, st, err)
				}
				c2.Close()

				// A fresh peer gets every intact entry from the
				// damaged database, and the rest from a healthy peer.
				c3 := openDamaged(t, s, &Options{SharedKey: db.key})
				fresh := openDamaged(t, NewMemStorage(), &Options{SharedKey: db.key})
				mustReplicate(t, "pipe", fresh, c3)
				r := fresh.Feed(db.feed)
				for n := range values {
					if r.Has(uint64(n)) == refused(n) {
						t.Fatalf("%s: the fresh peer's Has(%d) = %v", name, n, r.Has(uint64(n)))
					}
				}
				if ds := c3.Damaged(); len(ds) != wantProblems {
					t.Fatalf("%s: the server lists %v", name, ds)
				}
				mustReplicate(t, "pipe", fresh, healthy)
				all, err := r.GetBatch(ctx, 0, uint64(len(values)))
				if err != nil || !slices.EqualFunc(all, values, bytes.Equal) {
					t.Fatalf("%s: the fresh peer after a healthy one: %v", name, err)
				}
				fresh.Close()
				c3.Close()
			}
		}
	}
}

// Verify finds damage done after the database was opened in every kind of
// record a read checks, including those only opening reads (bitfield pages,
// manifest records), and marks a damaged entry as a read would.
func TestVerifyFindsDamageInEveryKindOfRecord(t *testing.T) {
	db := newDamageDB(t, numbered(20, 4), 0)
	healthy := openDamaged(t, damageCopy(db.s), &Options{SharedKey: db.key})
	s := NewMemStorage()
	c := openDamaged(t, s, &Options{SharedKey: db.key})
	mustReplicate(t, "pipe", c, healthy)
	st, err := c.Verify(ctxT(t), nil)
	if err != nil || st.Problems != 0 || st.Entries != 20 || st.Signatures != 1 || st.Feeds != 1 {
		t.Fatalf("verify of a healthy replica: %+v, %v", st, err)
	}
	rdb := &damageDB{s: s, values: db.values}
	for _, tc := range []struct {
		file string
		at   int64
	}{
		{"feeds/0/" + fileBitfield, headerSize + 1},
		{fileManifest, headerSize + 10},
		{"feeds/0/" + fileTree, headerSize + 1*nodeSize + 5}, // a parent
		{"feeds/0/" + fileSignatures, headerSize + 30},
		{wData, rdb.recordPos(7) + dataLenLen},
	} {
		b, _ := s.fileBytes(tc.file)
		b[tc.at] ^= 2
		s.setFileBytes(tc.file, b)
		var got []Damage
		st, err := c.Verify(ctxT(t), &VerifyOptions{OnDamage: func(d Damage) { got = append(got, d) }})
		var ce *CorruptError
		if err != nil || st.Problems != 1 || len(got) != 1 || !errors.As(got[0].Err, &ce) || ce.File != tc.file {
			t.Fatalf("verify after damaging %s: %+v, %v, %v", tc.file, st, err, got)
		}
		b[tc.at] ^= 2
		s.setFileBytes(tc.file, b)
	}
	if ds := c.Damaged(); len(ds) != 1 || !ds[0].Entry || ds[0].Seq != 7 {
		t.Fatalf("verify did not mark the damaged entry: %v", ds)
	}
}

// A view indexes an entry that healed even while another entry, indexed
// before it was found damaged, is damaged.
func TestViewIndexesAHealedEntryWhileAnotherIsDamaged(t *testing.T) {
	db := newDamageDB(t, numbered(20, 4), 0)
	healthy := openDamaged(t, damageCopy(db.s), &Options{SharedKey: db.key})
	base := NewMemStorage()
	rc := openDamaged(t, base, &Options{SharedKey: db.key})
	mustReplicate(t, "pipe", rc, healthy)
	rc.Close()
	rdb := &damageDB{s: base, values: db.values}
	s := rdb.flipped(t, wData, rdb.recordPos(10)+dataLenLen, 1)
	c := openDamaged(t, s, &Options{SharedKey: db.key})
	x, v := indexed(t, c, "v")
	if got := v.seqs(db.feed); !slices.Equal(got, allBut(20, 10)) {
		t.Fatalf("the view mapped %v", got)
	}
	// Entry 5, indexed, is damaged now.
	b, _ := s.fileBytes(wData)
	b[rdb.recordPos(5)+dataLenLen] ^= 1
	s.setFileBytes(wData, b)
	r := c.Feed(db.feed)
	if _, err := r.Get(ctxT(t), 5); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get 5: %v", err)
	}
	// Entry 10 heals.
	p, err := healthy.Feed(db.feed).Proof(10, 11, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	// A read of entry 10 that found it damaged before the Put, and marks
	// it only now, finds it intact.
	r.markDamaged(10, &CorruptError{File: wData, Reason: "a read before the Put"})
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := v.seqs(db.feed); !slices.Equal(got, allBut(20)) {
		t.Fatalf("after healing entry 10 the view mapped %v", got)
	}
	if ds := c.Damaged(); len(ds) != 1 || ds[0].Seq != 5 {
		t.Fatalf("damaged: %v", ds)
	}
}
