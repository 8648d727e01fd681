package kappa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fuzz targets for opening a whole database, and a replica's bitfield, from
// fuzzed bytes. The properties are those of the damage test (see
// checkDamagedDB in damage_check_test.go): opening never panics, and either
// fails with ErrCorrupt or opens with every entry that loads reading back as
// it was written, every feed that does not load listed in Damaged, and every
// file that got shorter explained by a Repair.

// FuzzOpenDatabase opens the small damage fixture (a writer, a sparse
// replica, an empty writer) with its database file and manifest replaced by
// fuzzed bytes and, if mode is not zero, one of its feed files too (mode-1
// picks which, in name order).
func FuzzOpenDatabase(f *testing.F) {
	fx := getDamageFixture(f, true)
	feedFiles := fuzzFeedFiles(fx)
	k, m := fx.files[fileDB], fx.files[fileManifest]
	rec := func(i int) []byte { return m[headerSize+i*manifestRecord : headerSize+(i+1)*manifestRecord] }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	f.Add(k, m, uint8(0), []byte{})
	for i, name := range feedFiles {
		b := fx.files[name]
		f.Add(k, m, uint8(i+1), b)
		f.Add(k, m, uint8(i+1), b[:len(b)/2])
		f.Add(k, m, uint8(i+1), b[:min(len(b), headerSize)])
		if len(b) > headerSize+3 {
			flipped := bytes.Clone(b)
			flipped[len(b)-3] ^= 0xff
			f.Add(k, m, uint8(i+1), flipped)
		}
	}
	f.Add(k[:20], m, uint8(0), []byte{})
	f.Add([]byte{}, m[:5], uint8(0), []byte{})
	f.Add(k, m[:5], uint8(0), []byte{})
	f.Add(k, m[:headerSize+manifestRecord+5], uint8(0), []byte{})
	f.Add(k, m[:headerSize+2*manifestRecord], uint8(0), []byte{})
	f.Add(k, cat(m[:headerSize], rec(1), rec(0), rec(2)), uint8(0), []byte{}) // records swapped
	f.Add(k, cat(m, rec(0)), uint8(0), []byte{})                              // a record twice
	f.Add(k, cat(m[:headerSize], rec(0), rec(0), rec(2)), uint8(0), []byte{})
	f.Add(k, cat(m, make([]byte, manifestRecord)), uint8(0), []byte{})
	f.Add(k, cat(m, manifestRec(flagReserved, nil, "")), uint8(0), []byte{})
	f.Add(k, cat(m[:headerSize], manifestRec(flagReserved, nil, ""), rec(1), rec(2)), uint8(0), []byte{})
	f.Fuzz(func(t *testing.T, kappa, manifest []byte, mode uint8, file []byte) {
		s := fx.restore()
		touched := map[string]bool{}
		set := func(name string, b []byte) {
			if !bytes.Equal(b, fx.files[name]) {
				touched[name] = true
			}
			s.setFileBytes(name, b)
		}
		set(fileDB, kappa)
		set(fileManifest, manifest)
		if mode > 0 {
			set(feedFiles[int(mode-1)%len(feedFiles)], file)
		}
		// Records moved in the manifest name another feed's key for a
		// slot: ErrKeyMismatch is honest there.
		res := checkDamagedDB(fx, s, damageCheck{touched: touched, foreign: true})
		if len(touched) == 0 && res.outcome != outcomeClean {
			t.Errorf("undamaged database opened %v", res.outcome)
		}
		if len(res.problems) > 0 {
			t.Fatalf("touched %v (%v):\n\t%s", touched, res.outcome, strings.Join(res.problems, "\n\t"))
		}
	})
}

// fuzzFeedFiles returns the fixture's files under feeds/, in name order.
func fuzzFeedFiles(fx *damageFixture) []string {
	var out []string
	for _, name := range fx.names {
		if strings.HasPrefix(name, "feeds/") {
			out = append(out, name)
		}
	}
	return out
}

// bitfieldFixture is a closed sparse replica whose bitfield spans two pages,
// and what it holds.
type bitfieldFixture struct {
	key    []byte
	values [][]byte // its writer's
	held   []bool
	files  map[string][]byte
	names  []string
	heal   *Proof // of the entries around the page boundary
}

const bitfieldPrefix = "r/"

var (
	bitfieldFixtureOnce sync.Once
	bitfieldFixtureVal  *bitfieldFixture
	bitfieldFixtureErr  error
)

func getBitfieldFixture(tb testing.TB) *bitfieldFixture {
	bitfieldFixtureOnce.Do(func() { bitfieldFixtureVal, bitfieldFixtureErr = buildBitfieldFixture() })
	if bitfieldFixtureErr != nil {
		tb.Fatal(bitfieldFixtureErr)
	}
	return bitfieldFixtureVal
}

func buildBitfieldFixture() (*bitfieldFixture, error) {
	seed := sha256.Sum256([]byte("kappa bitfield fixture"))
	w, err := OpenFeed(NewMemStorage(), "w/", &FeedOptions{SecretKey: seed[:], NoSync: true})
	if err != nil {
		return nil, err
	}
	defer w.Close()
	s := NewMemStorage()
	r, err := OpenFeed(s, bitfieldPrefix, &FeedOptions{Key: w.Key()})
	if err != nil {
		return nil, err
	}
	fx := &bitfieldFixture{key: w.Key(), files: map[string][]byte{}}
	grow := func(n int) error {
		batch := make([][]byte, n)
		for i := range batch {
			seq := len(fx.values) + i
			if seq%7 == 6 {
				batch[i] = []byte{}
			} else {
				batch[i] = fmt.Appendf(nil, "v%d", seq)
			}
		}
		fx.values = append(fx.values, batch...)
		_, err := w.Append(batch...)
		return err
	}
	put := func(start, end uint64) error {
		p, err := w.Proof(start, end, 0)
		if err != nil {
			return err
		}
		return r.Put(p)
	}
	// Entries on both pages, the first and last of each among them.
	steps := []func() error{
		func() error { return grow(5000) },
		func() error { return put(0, 40) },
		func() error { return grow(bitPageEntries + 300 - 5000) },
		func() error { return put(4999, 5000) }, // raises the length: it reaches the roots of 5000
		func() error { return put(4000, 4010) },
		func() error { return put(bitPageEntries-5, bitPageEntries+200) },
		func() error { return put(bitPageEntries+298, bitPageEntries+300) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if fx.heal, err = w.Proof(bitPageEntries-20, bitPageEntries+20, 0); err != nil {
		return nil, err
	}
	fx.held = make([]bool, r.Len())
	for i := range fx.held {
		fx.held[i] = r.Has(uint64(i))
	}
	if err := r.Close(); err != nil {
		return nil, err
	}
	fx.names = s.names()
	for _, name := range fx.names {
		fx.files[name], _ = s.fileBytes(name)
	}
	if got := len(fx.files[bitfieldPrefix+fileBitfield]); got != headerSize+2*bitPageSize {
		return nil, fmt.Errorf("bitfield of %d bytes, want two pages", got)
	}
	return fx, nil
}

// FuzzBitfield opens a sparse replica whose bitfield file is replaced by
// fuzzed bytes. Opening must not panic, and either fails with ErrCorrupt or
// opens with: a Repair for every page that fails its checksum (rebuilt from
// the tree and data, so holding exactly what the replica held); every entry
// Has reports reading back as written (through Get and GetBatch, with a
// deadline so that a wrong Has cannot hang); nothing cut without a Repair;
// the same state after a reopen, with nothing more to repair; and a proof
// of the entries around the page boundary taken.
func FuzzBitfield(f *testing.F) {
	fx := getBitfieldFixture(f)
	orig := fx.files[bitfieldPrefix+fileBitfield]
	page := func(p int) []byte { return orig[headerSize+p*bitPageSize : headerSize+(p+1)*bitPageSize] }
	f.Add(orig)
	for _, off := range []int{0, 12, headerSize, headerSize + 3, headerSize + bitPageBytes, headerSize + bitPageSize + 600, len(orig) - 1} {
		b := bytes.Clone(orig)
		b[off] ^= 0x10
		f.Add(b)
	}
	f.Add(orig[:headerSize])
	f.Add(orig[:headerSize+bitPageSize])
	f.Add(orig[:headerSize+bitPageSize+100])
	f.Add(append(bytes.Clone(orig), page(1)...))
	f.Add(bytes.Join([][]byte{orig[:headerSize], page(1), page(0)}, nil))
	f.Add(bytes.Join([][]byte{orig[:headerSize], make([]byte, 2*bitPageSize)}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, bits []byte) {
		s := NewMemStorage()
		for _, name := range fx.names {
			s.setFileBytes(name, fx.files[name])
		}
		s.setFileBytes(bitfieldPrefix+fileBitfield, bits)
		checkFuzzedBitfield(t, fx, s, bits)
	})
}

// checkFuzzedBitfield opens the replica of fx from s, whose bitfield file is
// bits, and checks FuzzBitfield's properties: an open that fails does so
// with ErrCorrupt; one that succeeds cut nothing without a Repair, rewrote
// every page that fails its checksum, and reads back what it reports (see
// checkBitfieldReads); a reopen repairs nothing more and reports the same
// entries; and the writer's proof of the entries around the page boundary
// is then taken (see checkBitfieldHeals).
func checkFuzzedBitfield(t *testing.T, fx *bitfieldFixture, s *MemStorage, bits []byte) {
	before := memSnapshot(s)
	var repairs []Repair
	opts := &FeedOptions{Key: fx.key, OnRepair: func(r Repair) { repairs = append(repairs, r) }}
	r, err := OpenFeed(s, bitfieldPrefix, opts)
	var res damageResult
	checkShrink(&res, before, s, repairs)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open: %v, want ErrCorrupt", err)
		}
		if len(res.problems) > 0 {
			t.Fatal(strings.Join(res.problems, "\n"))
		}
		return
	}
	defer r.Close()
	if len(res.problems) > 0 {
		t.Fatal(strings.Join(res.problems, "\n"))
	}
	length := uint64(len(fx.held))
	if r.Len() != length {
		t.Fatalf("opened with length %d, want %d", r.Len(), length)
	}
	bad, forged, nbad := fuzzedBitfieldPages(fx, bits)
	rewritten := 0
	for _, rp := range repairs {
		if rp.File == bitfieldPrefix+fileBitfield && rp.To >= rp.From {
			rewritten++
		}
	}
	if rewritten < nbad {
		t.Fatalf("%d pages fail their checksum, %d rewritten: %v", nbad, rewritten, repairs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	checkBitfieldReads(ctx, t, fx, r, bad, forged)
	has := make([]bool, length)
	for i := range has {
		has[i] = r.Has(uint64(i))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: nothing more to repair, the same entries present; then the
	// writer's proof of the entries around the page boundary makes them
	// present.
	repairs = nil
	r, err = OpenFeed(s, bitfieldPrefix, opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer r.Close()
	if len(repairs) > 0 {
		t.Fatalf("reopen repaired again: %v", repairs)
	}
	for i, h := range has {
		if r.Has(uint64(i)) != h {
			t.Fatalf("entry %d: has %v before the reopen, %v after", i, h, !h)
		}
	}
	checkBitfieldHeals(ctx, t, fx, r)
}

// fuzzedBitfieldPages returns which of the two pages of the fuzzed bitfield
// bits fail their checksum (bad, nbad of them), and which pass but differ
// from what the replica wrote (a forgery).
func fuzzedBitfieldPages(fx *bitfieldFixture, bits []byte) (bad, forged [2]bool, nbad int) {
	orig := fx.files[bitfieldPrefix+fileBitfield]
	for p := range 2 {
		lo, hi := headerSize+p*bitPageSize, headerSize+(p+1)*bitPageSize
		if len(bits) < hi || !bitPageValid(uint64(p), bits[lo:hi]) {
			bad[p] = true
			nbad++
		} else {
			forged[p] = !bytes.Equal(bits[lo:hi], orig[lo:hi])
		}
	}
	return bad, forged, nbad
}

// checkBitfieldReads checks the entries the replica r reports, page by page:
// on a page not forged, exactly the entries the replica held (a rebuilt page
// may also find an empty entry), and every entry reported reads back as
// written by Get and, from the start of each run, by GetBatch; on a forged
// page a read may fail with ErrCorrupt.
func checkBitfieldReads(ctx context.Context, t *testing.T, fx *bitfieldFixture, r *Feed, bad, forged [2]bool) {
	t.Helper()
	for seq := range uint64(len(fx.held)) {
		p := seq / bitPageEntries
		has := r.Has(seq)
		switch {
		case forged[p]:
		case fx.held[seq] && !has:
			t.Fatalf("entry %d (page %d, rebuilt %v) is held but not reported", seq, p, bad[p])
		case !fx.held[seq] && has && len(fx.values[seq]) > 0:
			// A rebuilt page may find an empty entry whose leaf came
			// with a proof: it is held, its bytes are its leaf's.
			t.Fatalf("entry %d (page %d, rebuilt %v) is not held but reported", seq, p, bad[p])
		}
		if !has {
			continue
		}
		v, err := r.Get(ctx, seq)
		switch {
		case err != nil && forged[p] && errors.Is(err, ErrCorrupt):
		case err != nil:
			t.Fatalf("get %d: %v", seq, err)
		case !bytes.Equal(v, fx.values[seq]):
			t.Fatalf("get %d = %q, want %q", seq, v, fx.values[seq])
		}
		if seq > 0 && r.Has(seq-1) {
			continue // GetBatch from the start of each run
		}
		end := r.NextMissing(seq)
		vs, err := r.GetBatch(ctx, seq, end)
		if err != nil {
			if !forged[p] && !forged[(end-1)/bitPageEntries] {
				t.Fatalf("get [%d, %d): %v", seq, end, err)
			}
			continue
		}
		for k, v := range vs {
			if !bytes.Equal(v, fx.values[seq+uint64(k)]) {
				t.Fatalf("batch entry %d = %q", seq+uint64(k), v)
			}
		}
	}
}

// checkBitfieldHeals checks that the replica r takes the writer's proof of
// the entries around the page boundary, and then reads them back.
func checkBitfieldHeals(ctx context.Context, t *testing.T, fx *bitfieldFixture, r *Feed) {
	t.Helper()
	if err := r.Put(fx.heal); err != nil {
		t.Fatalf("put of entries [%d, %d): %v", fx.heal.Start, fx.heal.Start+uint64(len(fx.heal.Blocks)), err)
	}
	start := fx.heal.Start
	vs, err := r.GetBatch(ctx, start, start+uint64(len(fx.heal.Blocks)))
	if err != nil {
		t.Fatalf("get the entries just put: %v", err)
	}
	for k, v := range vs {
		if !bytes.Equal(v, fx.values[start+uint64(k)]) {
			t.Fatalf("entry %d = %q after the proof", start+uint64(k), v)
		}
	}
}
