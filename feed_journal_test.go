package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// crashPointStorage wraps a MemStorage and, before some of its writes,
// truncates and syncs (each with probability p), calls at: a crash can
// happen there.
type crashPointStorage struct {
	*MemStorage
	mu  sync.Mutex // an append writes from two goroutines
	rng *rand.Rand
	p   float64
	at  func()
}

func (c *crashPointStorage) Open(name string, create bool) (File, error) {
	f, err := c.MemStorage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return &crashPointFile{File: f, c: c}, nil
}

func (c *crashPointStorage) point() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at != nil && c.rng.Float64() < c.p {
		c.at()
	}
}

type crashPointFile struct {
	File
	c *crashPointStorage
}

func (f *crashPointFile) WriteAt(p []byte, off int64) (int, error) {
	f.c.point()
	return f.File.WriteAt(p, off)
}

func (f *crashPointFile) Truncate(size int64) error {
	f.c.point()
	return f.File.Truncate(size)
}

func (f *crashPointFile) Sync() error {
	f.c.point()
	err := f.File.Sync()
	f.c.point()
	return err
}

// A run of small synced appends (journaled), some large ones (synced in
// place), checkpoints (a small journal limit) and a Close, with the disk
// cloned as a power loss would leave it at many random points: every clone
// opens with every acknowledged append present and verified, and nothing
// of an append that was not acknowledged but whole appends in flight.
func TestJournalCrashClonesLoseNoAcknowledgedAppend(t *testing.T) {
	seed := testSeed()
	t.Logf("seed %d (replay with -kappa.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 11))
	steps := 1000
	if testing.Short() {
		steps = 300
	}
	type crash struct {
		s        *MemStorage
		acked    uint64 // appended when the clone was taken
		inFlight uint64 // entries of the append in progress
	}
	var crashes []crash
	var acked, inFlight uint64
	cs := &crashPointStorage{MemStorage: NewMemStorage(), rng: rng, p: 0.1}
	cs.at = func() {
		crashes = append(crashes, crash{cs.crashClone(rng), acked, inFlight})
	}
	f, err := OpenFeed(cs, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.writeMu.Lock()
	f.jrn.limit = 3000
	f.writeMu.Unlock()
	for range steps {
		large := rng.IntN(10) == 0
		f.writeMu.Lock()
		f.jrn.maxAppend = 0
		if large {
			f.jrn.maxAppend = -1
		}
		f.writeMu.Unlock()
		n := 1 + rng.IntN(4)
		vals := make([][]byte, n)
		for i := range vals {
			vals[i] = faultValue(acked + uint64(i))
		}
		inFlight = uint64(n)
		if _, err := f.Append(vals...); err != nil {
			t.Fatal(err)
		}
		acked += uint64(n)
		inFlight = 0
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	cs.mu.Lock()
	cs.at = nil
	cs.mu.Unlock()
	crashes = append(crashes, crash{cs.crashClone(nil), acked, 0}, crash{cs.crashClone(rng), acked, 0})
	t.Logf("%d appends, %d entries, %d crash points", steps, acked, len(crashes))
	for i, c := range crashes {
		where := fmt.Sprintf("crash %d (after %d entries, %d in flight)", i, c.acked, c.inFlight)
		g, err := OpenFeed(c.s, "f/", nil)
		if err != nil {
			t.Fatalf("%s: open: %v", where, err)
		}
		if n := g.Len(); n != c.acked && n != c.acked+c.inFlight {
			t.Fatalf("%s: length %d", where, n)
		}
		checkFaultEntries(t, g, c.acked, where)
		if _, err := g.Append(faultValue(g.Len())); err != nil {
			t.Fatalf("%s: append after recovery: %v", where, err)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		// Recovery is done once: opening again repairs nothing.
		var repairs []Repair
		g, err = OpenFeed(c.s, "f/", &FeedOptions{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
		if err != nil {
			t.Fatalf("%s: open again: %v", where, err)
		}
		if len(repairs) > 0 {
			t.Fatalf("%s: the second open repaired %v", where, repairs)
		}
		g.Close()
	}
}

// A journal whose records are intact replays into files that lost every
// unsynced write: the state of a power loss right after Append returned.
// A read-only open loads the same state without writing; replaying twice
// (a crash during replay) gives the same feed.
func TestJournalReplaysIntoFilesThatLostTheirWrites(t *testing.T) {
	s := NewMemStorage()
	f, acked := journaledFeed(t, s, nil, 20)
	// The signature published; its record was written after the journal
	// synced, and is lost with the rest.
	wantLen, wantSig := f.Signature()
	lost := s.crashClone(nil) // only synced bytes: the journal's
	if b, _ := lost.fileBytes("f/signatures"); len(b) > headerSize {
		t.Fatalf("signatures holds %d bytes with no sync since its creation", len(b))
	}
	jb, _ := lost.fileBytes("f/journal")
	if b, _ := lost.fileBytes("f/data"); len(b) > headerSize {
		t.Fatalf("data holds %d bytes with no sync since its creation", len(b))
	}
	f.Close()

	before := memSnapshot(lost)
	var repairs []Repair
	ro, err := OpenFeed(lost, "f/", &FeedOptions{ReadOnly: true, OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	if ro.Len() != acked || len(repairs) == 0 {
		t.Fatalf("read-only open: length %d, repairs %v; want %d and the replay reported", ro.Len(), repairs, acked)
	}
	checkFaultEntries(t, ro, acked, "read-only")
	// Replay signed the journal's roots hash again: the same signature.
	if n, sig := ro.Signature(); n != wantLen || !bytes.Equal(sig, wantSig) {
		t.Fatalf("read-only open: signature of length %d, %x; want the one published, of %d, %x", n, sig, wantLen, wantSig)
	}
	ro.Close()
	if after := memSnapshot(lost); !maps.EqualFunc(after, before, bytes.Equal) {
		t.Fatal("a read-only open changed the storage")
	}

	twice := copyMem(lost)
	for _, s := range []*MemStorage{lost, twice} {
		g, err := OpenFeed(s, "f/", nil)
		if err != nil {
			t.Fatal(err)
		}
		checkFaultEntries(t, g, acked, "replayed")
		if g.Len() != acked {
			t.Fatalf("replayed: length %d, want %d", g.Len(), acked)
		}
		if n, sig := g.Signature(); n != wantLen || !bytes.Equal(sig, wantSig) {
			t.Fatalf("replayed: signature of length %d, %x; want the one published", n, sig)
		}
		g.Close()
	}
	// A crash in the middle of the replay: the files synced, the journal
	// not yet cut. Replayed again, nothing changes.
	mid := copyMem(twice)
	mid.setFileBytes("f/journal", jb)
	g, err := OpenFeed(mid, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFaultEntries(t, g, acked, "replayed twice")
	g.Close()
}

// journaledFeed opens the feed "f/" in s with opts and makes n small
// synced appends to it, of 1 to 3 entries each (journaled); it returns the
// feed and its length.
func journaledFeed(t *testing.T, s *MemStorage, opts *FeedOptions, n int) (*Feed, uint64) {
	t.Helper()
	f, err := OpenFeed(s, "f/", opts)
	if err != nil {
		t.Fatal(err)
	}
	var acked uint64
	for i := range n {
		if acked, err = faultAppend(t, f, acked, 1+i%3); err != nil {
			t.Fatal(err)
		}
	}
	return f, acked
}

// A journal of signed append records (kind 2), as builds before the
// unsigned kind wrote them, replays as before: a crashed database of such
// a build loses nothing when this one opens it.
func TestJournalOfSignedRecordsReplays(t *testing.T) {
	kp, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	s := NewMemStorage()
	f, acked := journaledFeed(t, s, &FeedOptions{SecretKey: kp.SecretKey}, 12)
	wantLen, wantSig := f.Signature()
	lost := s.crashClone(nil) // the journal only
	f.Close()
	jb, _ := lost.fileBytes("f/journal")
	// Each unsigned record written again as a signed one, holding the
	// signature record replay would make.
	out := bytes.Clone(jb[:headerSize])
	signed := 0
	for off := headerSize; !journalEnd(jb, off); {
		rec, n, err := decodeJournalRecord(jb[off:], int64(off), "f/")
		if err != nil {
			t.Fatal(err)
		}
		off += n
		if rec.kind == jrnUnsigned {
			var sr [sigRecordSize]byte
			encodeSigRecord(sr[:], rec.length, signRoots(kp.SecretKey, rec.roots, rec.length), rec.flags)
			rec.kind = jrnAppend
			rec.writes = append(rec.writes, journalWrite{file: jrnFileSigs, off: headerSize + int64(rec.records-1)*sigRecordSize, data: sr[:]})
			signed++
		}
		out = appendJournalRecord(out, int64(len(out)), &rec)
	}
	if signed != 12 {
		t.Fatalf("%d unsigned records, want 12", signed)
	}
	lost.setFileBytes("f/journal", append(out, make([]byte, 4096)...))
	g, err := OpenFeed(lost, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	checkFaultEntries(t, g, acked, "signed records")
	if n, sig := g.Signature(); n != wantLen || !bytes.Equal(sig, wantSig) {
		t.Fatalf("signed records: signature of length %d, want %d and the one published", n, wantLen)
	}
}

// An intact journal record that this package would not write is damage,
// named by the journal and its offset; so is a record that fails its CRC
// with more bytes after it. A torn last record is not.
func TestJournalDamageIsErrCorrupt(t *testing.T) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	var acked uint64
	for range 5 {
		if acked, err = faultAppend(t, f, acked, 2); err != nil {
			t.Fatal(err)
		}
	}
	crashed := s.crashClone(nil)
	f.Close()
	jb, _ := crashed.fileBytes("f/journal")
	// The records' offsets.
	var offs []int
	end := 0
	for off := headerSize; !journalEnd(jb, off); {
		_, n, err := decodeJournalRecord(jb[off:], int64(off), "f/")
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
		off += n
		end = off
	}
	if len(offs) != 6 {
		t.Fatalf("%d journal records, want a base and 5", len(offs))
	}
	open := func(b []byte) (*Feed, error) {
		c := copyMem(crashed)
		c.setFileBytes("f/journal", b)
		return OpenFeed(c, "f/", nil)
	}
	// A flipped byte in the third record: it fails its CRC, and more
	// records follow.
	b := bytes.Clone(jb)
	b[offs[3]+20] ^= 1
	if _, err := open(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "journal") {
		t.Fatalf("flipped record: %v, want ErrCorrupt naming the journal", err)
	}
	// The same, in a journal not preallocated (the file ends inside it).
	if g, err := open(jb[:end-7]); err != nil || g.Len() != acked-2 {
		t.Fatalf("torn last record at the end of the file: %v", err)
	} else {
		g.Close()
	}
	// The last record torn, its end not landed (zeros, as preallocated):
	// the append it holds was not acknowledged.
	b = bytes.Clone(jb)
	clear(b[end-7 : end])
	g, err := open(b)
	if err != nil {
		t.Fatalf("torn last record: %v", err)
	}
	if g.Len() != acked-2 {
		t.Fatalf("torn last record: length %d, want %d", g.Len(), acked-2)
	}
	checkFaultEntries(t, g, acked-2, "torn last record")
	g.Close()
	// Intact records this package would not write.
	last, _, err := decodeJournalRecord(jb[offs[5]:], int64(offs[5]), "f/")
	if err != nil || last.kind != jrnUnsigned {
		t.Fatalf("the last record: kind %d, %v; want an unsigned append", last.kind, err)
	}
	var sig [sigRecordSize]byte
	sigAt := int64(headerSize + (last.records-1)*sigRecordSize)
	for _, tc := range []struct {
		name   string
		change func(r *journalRecord)
	}{
		{"signed append whose signature write is not at its place", func(r *journalRecord) {
			r.kind = jrnAppend
			r.writes = append(r.writes, journalWrite{file: jrnFileSigs, off: sigAt + sigRecordSize, data: sig[:]})
		}},
		{"signed append with no signature write", func(r *journalRecord) { r.kind = jrnAppend }},
		{"unsigned append with a signature write", func(r *journalRecord) {
			r.writes = append(r.writes, journalWrite{file: jrnFileSigs, off: sigAt, data: sig[:]})
		}},
		{"unsigned append whose flags say synced", func(r *journalRecord) { r.flags = sigSynced }},
		// Replay would sign it: only the secret key's holder can write one.
		{"unsigned append whose roots hash is not its tag's", func(r *journalRecord) { r.roots[0] ^= 1 }},
		{"unsigned append whose flags are not its tag's", func(r *journalRecord) { r.flags ^= sigPlain }},
		{"unsigned append whose data write runs past its length", func(r *journalRecord) { r.writes[0].off += 1 << 20 }},
	} {
		rec := last
		rec.writes = slices.Clone(last.writes)
		tc.change(&rec)
		b = appendJournalRecord(bytes.Clone(jb[:offs[5]]), int64(offs[5]), &rec)
		if _, err := open(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("at offset %d", offs[5])) {
			t.Fatalf("%s: %v, want ErrCorrupt at %d", tc.name, err, offs[5])
		}
	}
}

// FuzzJournalRecord decodes fuzz bytes as a journal record: never a panic;
// a record that decodes encodes to the same bytes, and its writes lie in
// the bounds its length sets.
func FuzzJournalRecord(f *testing.F) {
	rec := journalRecord{kind: jrnAppend, records: 3, length: 5, byteLen: 40, writes: []journalWrite{
		{file: jrnFileData, off: headerSize + 20, data: []byte("0123456789")},
		{file: jrnFileTree, off: headerSize + 3*nodeSize, data: make([]byte, nodeSize)},
		{file: jrnFileSigs, off: headerSize + 2*sigRecordSize, data: make([]byte, sigRecordSize)},
	}}
	f.Add(appendJournalRecord(nil, 100, &rec), uint32(100), false)
	unsigned := journalRecord{kind: jrnUnsigned, records: 3, length: 5, byteLen: 40, writes: rec.writes[:2], flags: sigJournaled | sigPlain, roots: [32]byte{1, 2, 3}}
	f.Add(appendJournalRecord(nil, 100, &unsigned), uint32(100), false)
	f.Add(appendJournalRecord(nil, headerSize, &journalRecord{kind: jrnBase, records: 2, length: 4, byteLen: 9}), uint32(headerSize), false)
	f.Add([]byte{0, 0, 0, 40}, uint32(0), false)
	f.Add(appendJournalRecord(nil, 100, &rec)[:60], uint32(100), true)
	f.Fuzz(func(t *testing.T, b []byte, off uint32, fix bool) {
		if fix && len(b) >= jrnMinRecord && len(b) <= jrnMaxRecord {
			// Past the size and CRC checks: the fields are the fuzzer's.
			b = finishJournalRecord(bytes.Clone(b[:len(b)-4]), 0, int64(off))
		}
		rec, n, err := decodeJournalRecord(b, int64(off), "f/")
		journalTorn(append(make([]byte, int(off%4096)), b...), int(off%4096))
		if err != nil {
			var ce *CorruptError
			if !errors.Is(err, errJournalUnreadable) && !errors.As(err, &ce) {
				t.Fatalf("error %v is neither unreadable nor a CorruptError", err)
			}
			return
		}
		if got := appendJournalRecord(nil, int64(off), &rec); !bytes.Equal(got, b[:n]) {
			t.Fatalf("record re-encodes as %x, was %x", got, b[:n])
		}
		for _, w := range rec.writes {
			if w.off < headerSize || len(w.data) == 0 {
				t.Fatalf("write of %d bytes at %d", len(w.data), w.off)
			}
		}
	})
}

// One damaged byte in the zeros past a closed writer's journal records
// (nearly all of a preallocated journal) is reported and healed: the
// writer loads with every entry, OnError hears of the damage, a repair
// cuts the journal back, and the writer appends on. One in the five bytes
// where the next record would begin could be a record's size field or
// kind, and is ErrCorrupt as before: the feed is listed as damaged.
func TestJournalDamageInItsZerosIsHealed(t *testing.T) {
	orig := journaledDB(t, 5)
	jb, err := os.ReadFile(filepath.Join(orig, "feeds", "0", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	_, n, err := decodeJournalRecord(jb[headerSize:], headerSize, "")
	if err != nil {
		t.Fatal(err)
	}
	end := headerSize + n // the base record's end: zeros from here on
	if !isZero(jb[end:]) || len(jb)-end < 4096 {
		t.Fatalf("journal of %d bytes, records end at %d: want a preallocated one", len(jb), end)
	}
	for _, tc := range []struct {
		name   string
		off    int
		healed bool
	}{
		{"past the bytes a record begins with", end + jrnBegun, true},
		{"in the middle", (end + len(jb)) / 2, true},
		{"the last byte", len(jb) - 1, true},
		{"where a record's kind would be", end + jrnBegun - 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			copyDir(t, orig, dir)
			b := bytes.Clone(jb)
			b[tc.off] ^= 0x10
			if err := os.WriteFile(filepath.Join(dir, "feeds", "0", "journal"), b, 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.healed {
				checkJournalHealed(t, dir, int64(len(b)), "", fmt.Sprintf("journal at offset %d", end))
				return
			}
			for _, readOnly := range []bool{true, false} {
				c, err := Open(dir, &Options{ReadOnly: readOnly})
				if err != nil {
					t.Fatal(err)
				}
				if w := c.FindWriter("w"); w != nil || len(c.Damaged()) != 1 || !strings.Contains(c.Damaged()[0].Error(), fmt.Sprintf("journal at offset %d", end)) {
					t.Fatalf("read-only %v: writer %v, damage %v; want the feed not loaded, the journal named", readOnly, w, c.Damaged())
				}
				c.Close()
			}
		})
	}
}

// checkJournalHealed opens the database in dir read-only, then writable,
// and checks each time that its writer "w" loads with its 5 entries and no
// damage listed, that one repair of feeds/0/journal from size from is
// reported, its reason holding reason, and, unless errWant is "", one
// ErrCorrupt sent to OnError naming errWant. The writable open appends an
// entry; the next open must find nothing to report.
func checkJournalHealed(t *testing.T, dir string, from int64, reason, errWant string) {
	t.Helper()
	for _, readOnly := range []bool{true, false} {
		var errs []error
		var repairs []Repair
		c, err := Open(dir, &Options{ReadOnly: readOnly, OnError: func(err error) { errs = append(errs, err) }, OnRepair: func(r Repair) { repairs = append(repairs, r) }})
		if err != nil {
			t.Fatalf("read-only %v: %v", readOnly, err)
		}
		w := c.FindWriter("w")
		if w == nil || w.Len() != 5 || len(c.Damaged()) != 0 {
			t.Fatalf("read-only %v: writer %v, damage %v; want 5 entries and no listed damage", readOnly, w, c.Damaged())
		}
		if errWant == "" && len(errs) != 0 || errWant != "" && (len(errs) != 1 || !errors.Is(errs[0], ErrCorrupt) || !strings.Contains(errs[0].Error(), errWant)) {
			t.Errorf("read-only %v: OnError got %v, want one ErrCorrupt naming %q (none if empty)", readOnly, errs, errWant)
		}
		// (A copy's modes are tightened too: those repairs aside.)
		repairs = slices.DeleteFunc(repairs, func(r Repair) bool { return strings.Contains(r.Reason, "permissions") })
		if len(repairs) != 1 || repairs[0].File != "feeds/0/journal" || repairs[0].From != from || !strings.Contains(repairs[0].Reason, reason) {
			t.Errorf("read-only %v: repairs %v, want the journal's, from %d bytes, saying %q", readOnly, repairs, from, reason)
		}
		if !readOnly {
			mustAppend(t, w, "after")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var reported []string
	c, err := Open(dir, &Options{OnError: func(err error) { reported = append(reported, err.Error()) }, OnRepair: func(r Repair) { reported = append(reported, r.String()) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if w := c.FindWriter("w"); w == nil || w.Len() != 6 || len(reported) != 0 {
		t.Fatalf("reopened: writer %v, reported %q; want 6 entries and nothing", w, reported)
	}
}

// TestJournalTornAtCreationIsWrittenAnew: a journal whose creation a crash
// tore (the file there, its bytes not: shorter than its header, or zeros
// where its header and base record were to be) holds no record; the feed
// loads with every entry, and the journal is written anew and reported as
// a repair, by a writable and a read-only open alike.
func TestJournalTornAtCreationIsWrittenAnew(t *testing.T) {
	orig := journaledDB(t, 5)
	for _, size := range []int{7, headerSize, 4096} {
		t.Run(fmt.Sprint(size, " zeros"), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			copyDir(t, orig, dir)
			jpath := filepath.Join(dir, "feeds", "0", "journal")
			if err := os.WriteFile(jpath, make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
			checkJournalHealed(t, dir, int64(size), "creation torn", "")
		})
	}
}

// TestNewFeedIgnoresAJournalLeftInItsSlot: a crash while a slot past the
// manifest's records was wiped can leave the files removed last (the
// journal, fork evidence, old signatures) and nothing else. The next feed
// added there must start from nothing: not replay another feed's journal.
func TestNewFeedIgnoresAJournalLeftInItsSlot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := mustWriter(t, c, "a")
	for i := range 3 {
		mustAppend(t, a, fmt.Sprint("a", i))
	}
	// The journal of a as it stands, with its append records.
	jb, err := os.ReadFile(filepath.Join(dir, "feeds", "0", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	slot1 := filepath.Join(dir, "feeds", "1")
	if err := os.MkdirAll(slot1, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(slot1, "journal"), jb, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Writer("b")
	if err != nil {
		t.Fatalf("a writer in the slot of a stale journal: %v", err)
	}
	if b.Len() != 0 {
		t.Fatalf("new writer has %d entries, want 0", b.Len())
	}
	mustAppend(t, b, "b0")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b := c.FindWriter("b"); b == nil || b.Len() != 1 || len(c.Damaged()) != 0 {
		t.Fatalf("reopened: writer b %v, damage %v; want 1 entry, no damage", b, c.Damaged())
	}
	v, err := c.FindWriter("b").Get(context.Background(), 0)
	if err != nil || string(v) != "b0" {
		t.Fatalf("b's entry: %q, %v", v, err)
	}
}

// TestJournalRecordTornInsideIsCut: a power loss can leave any of a
// synced append's sectors unwritten, not only its last ones. A journal's
// last record that fails its CRC, with only zeros after it and a whole
// sector of zeros inside it where the append wrote bytes, is such a torn
// write: the append was never acknowledged, and the feed loads without
// it. The same record damaged without a zero sector is ErrCorrupt.
func TestJournalRecordTornInsideIsCut(t *testing.T) {
	orig := filepath.Join(t.TempDir(), "db")
	c, w := openJournaled(t, orig, 3)
	defer c.Close()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1500) // 24,000 bytes, journaled
	if _, err := w.Append(big); err != nil {
		t.Fatal(err)
	}
	// The files as a crash would leave them, the journal unreset.
	crashed := filepath.Join(t.TempDir(), "crashed")
	copyDir(t, orig, crashed)
	jpath := filepath.Join(crashed, "feeds", "0", "journal")
	jb, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	var last, lastSize int
	for off := headerSize; !journalEnd(jb, off); {
		_, n, err := decodeJournalRecord(jb[off:], int64(off), "")
		if err != nil {
			t.Fatalf("journal at %d: %v", off, err)
		}
		last, lastSize = off, n
		off += n
	}
	if lastSize < len(big) {
		t.Fatalf("the last journal record is %d bytes: want the big append's", lastSize)
	}
	sector := (last + lastSize/2) &^ (tornSector - 1) // a sector wholly inside the record
	for _, tc := range []struct {
		name   string
		damage func(b []byte)
		torn   bool
	}{
		{"a sector inside never landed", func(b []byte) { clear(b[sector : sector+tornSector]) }, true},
		{"a byte inside flipped", func(b []byte) { b[sector+7] ^= 0x40 }, false},
		{"a sector inside, less one byte, never landed", func(b []byte) { clear(b[sector+1 : sector+tornSector]) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			copyDir(t, crashed, dir)
			b := bytes.Clone(jb)
			tc.damage(b)
			if err := os.WriteFile(filepath.Join(dir, "feeds", "0", "journal"), b, 0o600); err != nil {
				t.Fatal(err)
			}
			var repairs []Repair
			c, err := Open(dir, &Options{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			w := c.FindWriter("w")
			if !tc.torn {
				if w != nil || len(c.Damaged()) != 1 || !errors.Is(c.Damaged()[0], ErrCorrupt) || !strings.Contains(c.Damaged()[0].Error(), fmt.Sprintf("journal at offset %d", last)) {
					t.Fatalf("writer %v, damage %v; want the feed not loaded, the journal named at %d", w, c.Damaged(), last)
				}
				return
			}
			if w == nil || w.Len() != 3 || len(c.Damaged()) != 0 {
				t.Fatalf("writer %v, damage %v; want the 3 acknowledged entries before the torn append, no damage", w, c.Damaged())
			}
			if !slices.ContainsFunc(repairs, func(r Repair) bool { return r.File == "feeds/0/journal" && strings.Contains(r.Reason, "torn") }) {
				t.Errorf("repairs %v: want the journal's torn record cut", repairs)
			}
			mustAppend(t, w, "after")
			if v, err := w.Get(context.Background(), 3); err != nil || string(v) != "after" {
				t.Fatalf("entry 3: %q, %v", v, err)
			}
		})
	}
}

// openJournaled opens a new database in dir, synced, and appends n values
// to its writer "w", one per call: each is journaled.
func openJournaled(t *testing.T, dir string, n int) (*Core, *Feed) {
	t.Helper()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	for i := range n {
		mustAppend(t, w, fmt.Sprint("value ", i))
	}
	return c, w
}

// journaledDB returns a closed database made by openJournaled.
func journaledDB(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "db")
	c, _ := openJournaled(t, dir, n)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}
