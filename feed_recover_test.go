package kappa

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
)

// sigrecDB is a database on a MemStorage that a test closes, damages and
// opens again.
type sigrecDB struct {
	s    *MemStorage
	opts Options
	c    *Core
	col  *damageCollector
}

// open opens the database, collecting what it reports.
func (d *sigrecDB) open(t *testing.T) *Core {
	t.Helper()
	d.col = &damageCollector{}
	o := *d.col.options()
	o.SharedKey = d.opts.SharedKey
	o.NoSync = d.opts.NoSync
	c, err := New(d.s, &o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	d.c = c
	t.Cleanup(func() { c.Close() })
	return c
}

func (d *sigrecDB) close(t *testing.T) {
	t.Helper()
	if err := d.c.Close(); err != nil {
		t.Fatal(err)
	}
}

// damage applies fn to the bytes of file name.
func (d *sigrecDB) damage(t *testing.T, name string, fn func(b []byte) []byte) {
	t.Helper()
	b, ok := d.s.fileBytes(name)
	if !ok {
		t.Fatalf("no file %s", name)
	}
	d.s.setFileBytes(name, fn(bytes.Clone(b)))
}

// newestSig returns the offset of the newest signature record of file
// name.
func (d *sigrecDB) newestSig(t *testing.T, name string) int64 {
	t.Helper()
	b, _ := d.s.fileBytes(name)
	n := (len(b) - headerSize) / sigRecordSize
	if n == 0 {
		t.Fatalf("%s holds no signature record", name)
	}
	return int64(headerSize + (n-1)*sigRecordSize)
}

// sigDamageAt returns the damage listed for file name at offset off.
func sigDamageAt(c *Core, name string, off int64) (Damage, bool) {
	for _, d := range c.Damaged() {
		var ce *CorruptError
		if !d.Entry && errors.As(d.Err, &ce) && ce.File == name && ce.Offset == off {
			return d, true
		}
	}
	return Damage{}, false
}

// repairOf returns the repairs of file name whose reason contains what.
func repairOf(repairs []Repair, name, what string) []Repair {
	var out []Repair
	for _, r := range repairs {
		if r.File == name && strings.Contains(r.Reason, what) {
			out = append(out, r)
		}
	}
	return out
}

// checkValues checks that f holds entries [0, len(values)) with these
// values, by Get and GetBatch.
func checkValues(t *testing.T, f *Feed, values [][]byte) {
	t.Helper()
	ctx := ctxT(t)
	if f.Len() < uint64(len(values)) {
		t.Fatalf("feed %x: length %d, %d entries were acknowledged", f.Key()[:4], f.Len(), len(values))
	}
	got, err := f.GetBatch(ctx, 0, uint64(len(values)))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range values {
		one, err := f.Get(ctx, uint64(i))
		if err != nil || !bytes.Equal(one, v) || !bytes.Equal(got[i], v) {
			t.Fatalf("entry %d: get %q, %v; batch %q; want %q", i, one, err, got[i], v)
		}
	}
}

// sigrecValues appends batches of values to w and returns all of them.
func sigrecValues(t *testing.T, w *Feed, prefix string, batches ...int) [][]byte {
	t.Helper()
	var all [][]byte
	for _, n := range batches {
		vals := make([][]byte, n)
		for i := range vals {
			vals[i] = fmt.Appendf(nil, "%s %d", prefix, len(all)+i)
		}
		if _, err := w.Append(vals...); err != nil {
			t.Fatal(err)
		}
		all = append(all, vals...)
	}
	return all
}

// A bit flipped in a writer's newest signature record, synced, is damage,
// not a torn write: the writer checks the tree and data the record covered
// and signs that length again. Every acknowledged entry stays, the damage
// goes to OnError and the re-signing is a repair; nothing stays listed.
func TestDamagedNewestSignatureIsSignedAgainByTheWriter(t *testing.T) {
	d := &sigrecDB{s: NewMemStorage()}
	c := d.open(t)
	w := mustWriter(t, c, "w")
	values := sigrecValues(t, w, "v", 3, 4, 2)
	key := w.Key()
	d.close(t)

	name := feedPrefix(0) + fileSignatures
	off := d.newestSig(t, name)
	d.damage(t, name, func(b []byte) []byte { b[off+20] ^= 0x01; return b })
	c = d.open(t)
	w = c.Feed(key)
	if w == nil || w.Len() != uint64(len(values)) {
		t.Fatalf("writer opened at %v, damaged %v", w, c.Damaged())
	}
	checkValues(t, w, values)
	if l, sig := w.Signature(); w.Verify(l, sig) != nil || l != uint64(len(values)) {
		t.Fatalf("signature at %d does not verify", l)
	}
	errs, repairs := d.col.get()
	if len(c.Damaged()) != 0 {
		t.Fatalf("damage still listed: %v", c.Damaged())
	}
	var ce *CorruptError
	if len(errs) != 1 || !errors.As(errs[0], &ce) || ce.File != name || ce.Offset != off {
		t.Fatalf("OnError received %v, want the damaged record", errs)
	}
	if len(repairOf(repairs, name, "damage, not a torn write")) != 1 {
		t.Fatalf("repairs %v", repairs)
	}
	more := sigrecValues(t, w, "more", 1)
	d.close(t)

	c = d.open(t)
	if r := c.Repairs(); len(r) != 0 || len(c.Damaged()) != 0 {
		t.Fatalf("reopen: repairs %v, damage %v", r, c.Damaged())
	}
	checkValues(t, c.Feed(key), append(values, more...))
}

// A writer whose damaged record cannot be signed again, because the tree
// or data under it do not match, does not load: nothing is cut. The
// appends are of 3 and 4 entries: the damaged record covers entries 3 to
// 6, whose leaves are nodes 6 to 12, under parents 5, 3 and 9.
func TestDamagedNewestSignatureOverDamagedDataIsRefused(t *testing.T) {
	for _, file := range []string{fileData, fileTree, "parent"} {
		t.Run(file, func(t *testing.T) {
			d := &sigrecDB{s: NewMemStorage()}
			c := d.open(t)
			w := mustWriter(t, c, "w")
			sigrecValues(t, w, "v", 3, 4)
			d.close(t)
			prefix := feedPrefix(0)
			off := d.newestSig(t, prefix+fileSignatures)
			before, _ := d.s.fileBytes(prefix + fileTree)
			d.damage(t, prefix+fileSignatures, func(b []byte) []byte { b[off+20] ^= 0x01; return b })
			damaged := prefix + file
			if file == "parent" {
				damaged = prefix + fileTree
			}
			d.damage(t, damaged, func(b []byte) []byte {
				switch file {
				case fileData:
					b[len(b)-5] ^= 0x01 // in the newest entry's value
				case fileTree:
					b[headerSize+12*nodeSize+3] ^= 0x01 // in the newest entry's leaf hash
				default:
					clear(b[headerSize+9*nodeSize : headerSize+10*nodeSize]) // the parent of entries 4 and 5
				}
				return b
			})
			c = d.open(t)
			dmg := c.Damaged()
			if c.Feed(w.Key()) != nil || len(dmg) != 1 || !errors.Is(dmg[0].Err, ErrCorrupt) {
				t.Fatalf("damaged writer loaded, or not listed: %v", dmg)
			}
			if after, _ := d.s.fileBytes(prefix + fileTree); !bytes.Equal(after, before) && file == fileData {
				t.Fatal("the tree was changed")
			}
		})
	}
}

// A writer's damaged newest record with whole records missing after it (the
// tree holds entries of two appends past it) is refused, as when the newest
// record verifies: signing its length again would cut acknowledged entries.
func TestDamagedNewestSignatureWithRecordsMissingIsRefused(t *testing.T) {
	d := &sigrecDB{s: NewMemStorage()}
	c := d.open(t)
	w := mustWriter(t, c, "w")
	sigrecValues(t, w, "v", 1, 2, 1, 2)
	d.close(t)
	name := feedPrefix(0) + fileSignatures
	d.damage(t, name, func(b []byte) []byte {
		b = b[:headerSize+2*sigRecordSize] // records 3 and 4 lost
		b[headerSize+sigRecordSize+20] ^= 0x01
		return b
	})
	c = d.open(t)
	if dmg := c.Damaged(); c.Feed(w.Key()) != nil || len(dmg) != 1 || !errors.Is(dmg[0].Err, ErrCorrupt) {
		t.Fatalf("writer loaded, or not listed: %v", dmg)
	}
}

// A replica's damaged newest record: the replica opens at the length
// before it, keeps its entries past it as unverified damage (listed, with
// the file and offset), and replication with the writer brings the
// signature back: every entry, nothing listed, a repair reported.
func TestDamagedNewestSignatureOfAReplicaIsFetchedAgain(t *testing.T) {
	for _, at := range []int{0, 20, 75, 79} { // length, signature, checksum, flags
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			a := newCore(t, nil)
			w := mustWriter(t, a, "w")
			d := &sigrecDB{s: NewMemStorage(), opts: Options{SharedKey: a.SharedKey()}}
			b := d.open(t)
			values := sigrecValues(t, w, "v", 3)
			mustReplicate(t, "pipe", a, b)
			values = append(values, sigrecValues(t, w, "w", 4)...)
			mustReplicate(t, "pipe", a, b)
			checkHas(t, a, b)
			d.close(t)

			name := feedPrefix(0) + fileSignatures
			off := d.newestSig(t, name)
			d.damage(t, name, func(b []byte) []byte { b[off+int64(at)] ^= 0x01; return b })
			kept := memSnapshot(d.s)
			b = d.open(t)
			r := b.Feed(w.Key())
			if r == nil {
				t.Fatalf("replica did not load: %v", b.Damaged())
			}
			for _, file := range []string{fileTree, fileData} {
				if now, _ := d.s.fileBytes(feedPrefix(0) + file); !bytes.Equal(now, kept[feedPrefix(0)+file]) {
					t.Fatalf("opening changed the replica's %s", file)
				}
			}
			errs, _ := d.col.get()
			if at >= sigCRCOff {
				// Only the checksum or flags were hit: the signature
				// verifies, and the record is written again.
				if r.Len() != uint64(len(values)) || len(b.Damaged()) != 0 || len(errs) != 1 {
					t.Fatalf("length %d, damage %v, reported %v", r.Len(), b.Damaged(), errs)
				}
				checkValues(t, r, values)
				return
			}
			dmg, ok := sigDamageAt(b, name, off)
			if !ok || r.Len() >= uint64(len(values)) || len(errs) != 1 || !errors.Is(dmg.Err, ErrCorrupt) {
				t.Fatalf("length %d, damage %v, reported %v", r.Len(), b.Damaged(), errs)
			}
			mustReplicate(t, "pipe", a, b)
			checkHas(t, a, b)
			_, repairs := d.col.get()
			if len(b.Damaged()) != 0 || len(repairOf(repairs, name, "replaced by a peer's verified signature")) != 1 {
				t.Fatalf("after replication: damage %v, repairs %v", b.Damaged(), repairs)
			}
			d.close(t)
			sigs, _ := d.s.fileBytes(name)
			for k := headerSize; k+sigRecordSize <= len(sigs); k += sigRecordSize {
				if _, _, _, ok := decodeSigRecord(sigs[k : k+sigRecordSize]); !ok {
					t.Fatalf("the signature record at %d is still damaged", k)
				}
			}
			b = d.open(t)
			if len(b.Repairs()) != 0 || len(b.Damaged()) != 0 || b.Feed(w.Key()) == nil {
				t.Fatalf("reopen: repairs %v, damage %v", b.Repairs(), b.Damaged())
			}
			checkValues(t, b.Feed(w.Key()), values)
		})
	}
}

// A newest record that a crash could have torn is still a repair: zero
// from a sector boundary inside it on, or all zero. So is any damage when
// the feed is written without sync. Damage in a record followed by more
// bytes (the next record's torn start) is not torn: that record was synced
// before the next write began. (The writer's journal is removed before the
// reopen, as of a feed from before journals: where a journal accounts for
// the record, a crash cannot have torn it; see
// TestJournaledNewestSignatureIsNeverTorn.)
func TestTornNewestSignatureIsStillARepair(t *testing.T) {
	// Seven appends: the seventh record lies at 496, across the sector
	// boundary at 512.
	cases := []struct {
		name   string
		noSync bool
		damage func(b []byte, off int64) []byte
		torn   bool
	}{
		{"zero from the sector boundary", false, func(b []byte, off int64) []byte { clear(b[512:]); return b }, true},
		{"all zero", false, func(b []byte, off int64) []byte { clear(b[off:]); return b }, true},
		{"zeros before the sector boundary", false, func(b []byte, off int64) []byte { clear(b[off+4 : off+12]); return b }, false},
		{"flipped", false, func(b []byte, off int64) []byte { b[off+30] ^= 0x40; return b }, false},
		{"flipped, then torn bytes", false, func(b []byte, off int64) []byte { b[off+30] ^= 0x40; return append(b, 1, 2, 3) }, false},
		{"zero from the sector boundary, then torn bytes", false, func(b []byte, off int64) []byte { clear(b[512:]); return append(b, 1, 2, 3) }, false},
		{"flipped without sync", true, func(b []byte, off int64) []byte { b[off+30] ^= 0x40; return b }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &sigrecDB{s: NewMemStorage(), opts: Options{NoSync: tc.noSync}}
			c := d.open(t)
			w := mustWriter(t, c, "w")
			values := sigrecValues(t, w, "v", 1, 1, 1, 1, 1, 1, 2)
			d.close(t)
			name := feedPrefix(0) + fileSignatures
			off := d.newestSig(t, name)
			if off != 496 {
				t.Fatalf("newest record at %d", off)
			}
			d.damage(t, name, func(b []byte) []byte { return tc.damage(b, off) })
			if err := d.s.Remove(feedPrefix(0) + fileJournal); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
			c = d.open(t)
			w = c.Feed(w.Key())
			errs, repairs := d.col.get()
			if tc.torn {
				if w.Len() != 6 || len(errs) != 0 || len(repairOf(repairs, name, "torn tail")) != 1 {
					t.Fatalf("length %d, reported %v, repairs %v; want a torn tail cut", w.Len(), errs, repairs)
				}
				return
			}
			if len(errs) != 1 || len(c.Damaged()) != 0 {
				t.Fatalf("reported %v, damage %v", errs, c.Damaged())
			}
			checkValues(t, w, values)
		})
	}
}

// TestJournaledNewestSignatureIsNeverTorn: the writer's journal says how
// many signature records are durable (its base, written when the database
// closed, counts all seven); so a newest record among them that fails its
// checksum is damage, however it looks, never a torn write to cut: the
// writer signs its length again, and no acknowledged entry is lost.
func TestJournaledNewestSignatureIsNeverTorn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(b []byte, off int64) []byte
	}{
		{"zero from the sector boundary", func(b []byte, off int64) []byte { clear(b[512:]); return b }},
		{"all zero", func(b []byte, off int64) []byte { clear(b[off:]); return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &sigrecDB{s: NewMemStorage()}
			c := d.open(t)
			w := mustWriter(t, c, "w")
			values := sigrecValues(t, w, "v", 1, 1, 1, 1, 1, 1, 2)
			d.close(t)
			if _, ok := d.s.fileBytes(feedPrefix(0) + fileJournal); !ok {
				t.Fatal("no journal")
			}
			name := feedPrefix(0) + fileSignatures
			off := d.newestSig(t, name)
			d.damage(t, name, func(b []byte) []byte { return tc.damage(b, off) })
			c = d.open(t)
			w = c.Feed(w.Key())
			errs, repairs := d.col.get()
			if w.Len() != 8 || len(errs) != 1 || len(repairOf(repairs, name, "signed again")) != 1 || len(c.Damaged()) != 0 {
				t.Fatalf("length %d, reported %v, repairs %v, damage %v; want length 8, the record signed again", w.Len(), errs, repairs, c.Damaged())
			}
			checkValues(t, w, values)
		})
	}
}

// sigrecView records the entries it indexes.
type sigrecView struct {
	mu  sync.Mutex
	got map[string]map[uint64][]byte
}

func (v *sigrecView) Map(es []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.got == nil {
		v.got = map[string]map[uint64][]byte{}
	}
	for _, e := range es {
		k := string(e.Key)
		if v.got[k] == nil {
			v.got[k] = map[uint64][]byte{}
		}
		v.got[k][e.Seq] = bytes.Clone(e.Value)
	}
	return nil
}

// TestEverySignatureRecordDamaged flips bytes of each signature record of a
// writer and of a replica (in its length, signature, checksum and flags)
// and checks that the database agrees with itself and loses nothing: Get
// and GetBatch of every entry held, a new view, and replication to a fresh
// peer show the same entries; the writer keeps every entry it acknowledged;
// the replica keeps its entries, or fetches them again from the writer,
// after which no damage is listed. A record before the newest is never read
// (the newest verifies): opening is clean.
func TestEverySignatureRecordDamaged(t *testing.T) {
	src := newCore(t, nil)
	w := mustWriter(t, src, "w")
	d := &sigrecDB{s: NewMemStorage(), opts: Options{SharedKey: src.SharedKey()}}
	c := d.open(t)
	own := mustWriter(t, c, "own")
	ownValues := sigrecValues(t, own, "own", 2, 3, 1)
	var values [][]byte
	for _, n := range []int{2, 3, 1} {
		values = append(values, sigrecValues(t, w, fmt.Sprint("r", len(values)), n)...)
		mustReplicate(t, "pipe", src, c)
	}
	d.close(t)
	fixture := memSnapshot(d.s)
	want := map[string][][]byte{string(own.Key()): ownValues, string(w.Key()): values}

	positions := []int{0, 7, 8, 40, 71, 72, 75, 76, 79}
	opens := 0
	for slot := range 2 {
		name := feedPrefix(slot) + fileSignatures
		records := (len(fixture[name]) - headerSize) / sigRecordSize
		for k := range records {
			for _, at := range positions {
				opens++
				where := fmt.Sprintf("%s record %d byte %d", name, k+1, at)
				d.s = NewMemStorage()
				for n, b := range fixture {
					d.s.setFileBytes(n, b)
				}
				off := int64(headerSize + k*sigRecordSize + at)
				d.damage(t, name, func(b []byte) []byte { b[off] ^= 0x01; return b })
				checkSigDamagedDB(t, d, src, want, k == records-1, where)
			}
		}
	}
	t.Logf("%d opens", opens)
}

// checkSigDamagedDB opens d (with one signature record damaged) and checks
// it; see TestEverySignatureRecordDamaged. newest says whether the damaged
// record is its file's newest.
func checkSigDamagedDB(t *testing.T, d *sigrecDB, src *Core, want map[string][][]byte, newest bool, where string) {
	t.Helper()
	c := d.open(t)
	defer c.Close()
	errs, repairs := d.col.get()
	if !newest && (len(errs) != 0 || len(repairs) != 0) {
		t.Fatalf("%s: a record before the newest was read: reported %v, repairs %v", where, errs, repairs)
	}
	if newest && len(errs) != 1 {
		t.Fatalf("%s: reported %v, want the damage", where, errs)
	}
	for _, dmg := range c.Damaged() {
		if c.Feed(dmg.Key) == nil || c.Feed(dmg.Key).Writable() {
			t.Fatalf("%s: damage listed: %v", where, dmg)
		}
	}
	ctx := ctxT(t)
	// Every entry held reads back, by Get and GetBatch; a writer holds
	// every entry it acknowledged.
	for _, f := range c.Feeds() {
		values := want[string(f.Key())]
		if f.Writable() && f.Len() != uint64(len(values)) {
			t.Fatalf("%s: writer at length %d, %d acknowledged", where, f.Len(), len(values))
		}
		for seq := range f.Len() {
			if !f.Has(seq) {
				continue
			}
			v, err := f.Get(ctx, seq)
			vs, berr := f.GetBatch(ctx, seq, seq+1)
			if err != nil || berr != nil || !bytes.Equal(v, values[seq]) || !bytes.Equal(vs[0], values[seq]) {
				t.Fatalf("%s: entry %d: %q, %v / %v; want %q", where, seq, v, err, berr, values[seq])
			}
		}
	}
	// A new view indexes the same entries.
	view := &sigrecView{}
	mustUse(t, c, "sigrec", 1, view)
	if err := c.Ready(ctx, "sigrec"); err != nil {
		t.Fatalf("%s: ready: %v", where, err)
	}
	view.mu.Lock()
	for _, f := range c.Feeds() {
		for seq, v := range view.got[string(f.Key())] {
			if !f.Has(seq) || !bytes.Equal(v, want[string(f.Key())][seq]) {
				t.Fatalf("%s: view indexed entry %d as %q", where, seq, v)
			}
		}
		if f.Writable() && len(view.got[string(f.Key())]) != int(f.Len()) {
			t.Fatalf("%s: view indexed %d entries of the writer's %d", where, len(view.got[string(f.Key())]), f.Len())
		}
	}
	view.mu.Unlock()
	// A fresh peer gets what is held here.
	peer := newCore(t, &Options{SharedKey: c.SharedKey()})
	mustReplicate(t, "pipe", c, peer)
	checkHas(t, c, peer)
	// With the remote writer, the replica gets back every entry, and no
	// damage is left.
	mustReplicate(t, "pipe", src, c)
	checkHas(t, src, c)
	if dmg := c.Damaged(); len(dmg) != 0 {
		t.Fatalf("%s: damage left after replicating with the writer: %v", where, dmg)
	}
	if _, repairs = d.col.get(); newest && len(repairs) == 0 {
		t.Fatalf("%s: no repair reported for the damaged record", where)
	}
}
