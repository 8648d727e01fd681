package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fuzzScenario is a stored feed that FuzzOpenFeed damages.
type fuzzScenario struct {
	name   string
	opts   *FeedOptions
	files  map[string][]byte
	names  []string
	signed []uint64 // lengths it may recover to, besides 0
}

const fuzzPrefix = "f/"

var (
	fuzzScenariosOnce sync.Once
	fuzzScenariosVal  []*fuzzScenario
	fuzzScenariosErr  error
)

func getFuzzScenarios(tb testing.TB) []*fuzzScenario {
	w := getFuzzWriter(tb)
	fuzzScenariosOnce.Do(func() { fuzzScenariosVal, fuzzScenariosErr = buildFuzzScenarios(w) })
	if fuzzScenariosErr != nil {
		tb.Fatal(fuzzScenariosErr)
	}
	return fuzzScenariosVal
}

func buildFuzzScenarios(w *fuzzWriter) ([]*fuzzScenario, error) {
	var out []*fuzzScenario
	snapshot := func(name string, s *MemStorage, opts *FeedOptions, signed []uint64) {
		sc := &fuzzScenario{name: name, opts: opts, files: map[string][]byte{}, signed: signed}
		for _, n := range s.names() {
			sc.files[n], _ = s.fileBytes(n)
			sc.names = append(sc.names, n)
		}
		out = append(out, sc)
	}

	// 0: the writer, appended in batches (opened with nil options, as the
	// key file holds the secret key).
	s := NewMemStorage()
	f, err := OpenFeed(s, fuzzPrefix, &FeedOptions{SecretKey: fuzzSecret()})
	if err != nil {
		return nil, err
	}
	for _, length := range w.signed {
		if _, err := f.Append(w.values[f.Len():length]...); err != nil {
			return nil, err
		}
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("writer", s, nil, w.signed)

	// 1: a replica with holes, grown through several signed lengths and an
	// unsigned proof.
	s = NewMemStorage()
	opts := &FeedOptions{Key: w.feed.Key()}
	if f, err = OpenFeed(s, fuzzPrefix, opts); err != nil {
		return nil, err
	}
	var signed []uint64
	for _, p := range []*Proof{w.preProof(2), w.preProof(3), w.proofOf(17, 6, 7), w.preProof(5)} {
		// (The proof of block 6 at 17 reaches the roots of 7, so it
		// raises the length to 17; that of [9, 12) does not.)
		if err := f.Put(p); err != nil {
			return nil, err
		}
		if len(signed) == 0 || signed[len(signed)-1] != p.Length {
			signed = append(signed, p.Length)
		}
	}
	p, err := w.feed.Proof(0, 1, f.Len())
	if err != nil {
		return nil, err
	}
	if err := f.Put(p); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("replica", s, opts, signed)

	// 2: a writer with no entries.
	s = NewMemStorage()
	if f, err = OpenFeed(s, fuzzPrefix, &FeedOptions{SecretKey: fuzzSecret()}); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("empty writer", s, nil, nil)

	// 3: a replica that knows a length but holds no block.
	s = NewMemStorage()
	if f, err = OpenFeed(s, fuzzPrefix, opts); err != nil {
		return nil, err
	}
	if err := f.Put(w.preProof(1)); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("blockless replica", s, opts, []uint64{w.preProof(1).Length})
	return out, nil
}

// restore returns a new storage holding the scenario's files.
func (sc *fuzzScenario) restore() *MemStorage {
	s := NewMemStorage()
	for _, n := range sc.names {
		s.setFileBytes(n, sc.files[n])
	}
	return s
}

// intact reports whether s holds exactly the scenario's files.
func (sc *fuzzScenario) intact(s *MemStorage) bool {
	names := s.names()
	if len(names) != len(sc.names) {
		return false
	}
	for _, n := range names {
		b, _ := s.fileBytes(n)
		if want, ok := sc.files[n]; !ok || !bytes.Equal(b, want) {
			return false
		}
	}
	return true
}

// checkDamagedOpen opens the (maybe damaged) storage of a scenario and
// checks that it either refuses with ErrCorrupt or ErrKeyMismatch or opens
// consistently: a signed length, the writer's byte length, and every
// present entry either the writer's value or ErrCorrupt, never other
// bytes. A writable feed must then take an append that survives a reopen;
// a replica must answer the writer's full proof sanely.
func checkDamagedOpen(t *testing.T, w *fuzzWriter, sc *fuzzScenario, s *MemStorage) {
	intact := sc.intact(s)
	f, err := OpenFeed(s, fuzzPrefix, sc.opts)
	if err != nil {
		if intact {
			t.Fatalf("%s: undamaged feed does not open: %v", sc.name, err)
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("%s: open failed with %v, want ErrCorrupt or ErrKeyMismatch", sc.name, err)
		}
		return
	}
	defer f.Close()
	fc := &damagedFeedCheck{t: t, w: w, sc: sc, s: s, f: f, length: f.Len()}
	fc.checkOpenedState(intact)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fc.ctx = ctx
	fc.checkPresentEntries()
	fc.checkVerifyAgreesWithReads()
	fc.checkViewReads()
	fc.checkServedProofs()
	if f.Writable() {
		fc.checkAppendSurvivesReopen()
		return
	}
	fc.checkFullProof()
}

// damagedFeedCheck is a feed that checkDamagedOpen opened from a scenario's
// maybe damaged storage, with what its steps share.
type damagedFeedCheck struct {
	t      *testing.T
	w      *fuzzWriter
	sc     *fuzzScenario
	s      *MemStorage
	f      *Feed
	length uint64 // at open
	ctx    context.Context
}

// checkValue checks that a read of entry seq returned the writer's value or
// failed with ErrCorrupt.
func (fc *damagedFeedCheck) checkValue(what string, seq uint64, v []byte, err error) {
	t := fc.t
	t.Helper()
	switch {
	case err != nil && !errors.Is(err, ErrCorrupt):
		t.Fatalf("%s: %s %d: %v, want the value or ErrCorrupt", fc.sc.name, what, seq, err)
	case err == nil && !bytes.Equal(v, fc.w.values[seq]):
		t.Fatalf("%s: %s %d returned %q, the writer wrote %q", fc.sc.name, what, seq, v, fc.w.values[seq])
	}
}

// checkOpenedState checks the state the feed opened with: the scenario's
// length if undamaged, else a length the writer signed; the writer's key if
// it holds entries; the writer's byte length at that length; and the
// writer's signature of it.
func (fc *damagedFeedCheck) checkOpenedState(intact bool) {
	t, w, sc, f, length := fc.t, fc.w, fc.sc, fc.f, fc.length
	switch {
	case intact && length != lastOr(sc.signed, 0):
		t.Fatalf("%s: undamaged feed opens with length %d", sc.name, length)
	case length != 0 && !containsU64(w.signed, length):
		// Any length the writer signed will do: damage may put one of its
		// signature records (from the seed corpus) in a replica's file.
		t.Fatalf("%s: opened with length %d, which the writer never signed (%v)", sc.name, length, w.signed)
	}
	if !bytes.Equal(f.Key(), w.feed.Key()) && length > 0 {
		t.Fatalf("%s: opened with another key and length %d", sc.name, length)
	}
	var byteLen uint64
	for i := range length {
		byteLen += uint64(len(w.blocks[i])) // format 4: blocks, not values
	}
	if f.ByteLen() != byteLen {
		t.Fatalf("%s: byte length %d at length %d, want %d", sc.name, f.ByteLen(), length, byteLen)
	}
	if length > 0 {
		l, sig := f.Signature()
		if err := w.feed.Verify(l, sig); err != nil {
			t.Fatalf("%s: signature of length %d: %v", sc.name, l, err)
		}
	}
}

// checkPresentEntries checks that NextPresent agrees with Has, that every
// present entry reads back (see checkValue) by Get and GetBatch, that one
// that fails to read is no longer present, and that Downloaded counts the
// entries still present after the reads.
func (fc *damagedFeedCheck) checkPresentEntries() {
	t, sc, f, length := fc.t, fc.sc, fc.f, fc.length
	var present uint64
	for seq := uint64(0); seq < length; seq++ {
		if f.NextPresent(seq) != seq {
			if f.Has(seq) {
				t.Fatalf("%s: NextPresent(%d) = %d but Has(%d)", sc.name, seq, f.NextPresent(seq), seq)
			}
			continue
		}
		if !f.Has(seq) {
			t.Fatalf("%s: NextPresent(%d) = %d but not Has", sc.name, seq, seq)
		}
		present++
		v, err := f.Get(fc.ctx, seq)
		fc.checkValue("get", seq, v, err)
		if err != nil && f.Has(seq) {
			t.Fatalf("%s: get %d: %v, but the entry is still present", sc.name, seq, err)
		}
		end := max(seq+1, f.NextMissing(seq))
		vs, err := f.GetBatch(fc.ctx, seq, end)
		if err != nil {
			fc.checkValue("get batch from", seq, nil, err)
		} else if uint64(len(vs)) != end-seq {
			t.Fatalf("%s: get [%d, %d) returned %d entries", sc.name, seq, end, len(vs))
		}
		for k, v := range vs {
			fc.checkValue("batch entry", seq+uint64(k), v, nil)
		}
	}
	// Entries the reads found damaged are no longer present.
	present = 0
	for seq := uint64(0); seq < length; seq++ {
		if f.Has(seq) {
			present++
		}
	}
	if f.Downloaded() != present {
		t.Fatalf("%s: Downloaded %d, present %d", sc.name, f.Downloaded(), present)
	}
}

// checkVerifyAgreesWithReads checks that Verify finds damaged exactly the
// entries the reads did (a leaf that does not follow the one before it only
// in a range, as GetBatch's).
func (fc *damagedFeedCheck) checkVerifyAgreesWithReads() {
	t, sc, f := fc.t, fc.sc, fc.f
	var marked, reported []uint64
	for seq := uint64(0); seq < fc.length; seq++ {
		if f.isDamaged(seq) {
			marked = append(marked, seq)
		}
	}
	if _, err := f.verify(fc.ctx, func(d Damage) {
		if d.Entry && !strings.Contains(d.Err.Error(), "not contiguous") {
			reported = append(reported, d.Seq)
		}
	}); err != nil {
		t.Fatalf("%s: verify: %v", sc.name, err)
	}
	if !slices.Equal(marked, reported) {
		t.Fatalf("%s: the reads found entries %v damaged, verify %v", sc.name, marked, reported)
	}
}

// checkViewReads checks a view's reads through the data file: from entry 0,
// in batches that end before the feed does and at its end, and from later
// entries (where a leaf says the first record lies) to the end of what is
// held; each entry the writer's value or ErrCorrupt, a batch ending early
// only at an entry marked damaged.
func (fc *damagedFeedCheck) checkViewReads() {
	t, sc, f := fc.t, fc.sc, fc.f
	if fc.length == 0 {
		return
	}
	type batch struct{ start, end uint64 }
	var batches []batch
	if f.HasRange(0, 1) {
		for _, end := range []uint64{1, (f.NextMissing(0) + 1) / 2, f.NextMissing(0)} {
			batches = append(batches, batch{0, end})
		}
	}
	for _, start := range []uint64{1, fc.length / 2, fc.length - 1} {
		if start > 0 && start < fc.length && f.HasRange(start, start+1) {
			batches = append(batches, batch{start, f.NextMissing(start)})
		}
	}
	for _, b := range batches {
		vs, err := f.scanBatch(b.start, b.end, true)
		if err != nil {
			fc.checkValue("view read up to", b.end, nil, err)
		} else if n := b.start + uint64(len(vs)); n != b.end && !f.isDamaged(n) {
			// Damage ends a view's batch early, at an entry
			// marked damaged.
			t.Fatalf("%s: view read of [%d, %d) returned %d entries", sc.name, b.start, b.end, len(vs))
		}
		for k, v := range vs {
			fc.checkValue("view entry", b.start+uint64(k), blockValue(v), nil) // scanBatch returns blocks (format 4)
		}
	}
}

// checkServedProofs checks that a proof the damaged feed serves is refused
// with ErrCorrupt, or is true, or is refused by a peer with ErrVerify.
func (fc *damagedFeedCheck) checkServedProofs() {
	t, w, sc, f, length := fc.t, fc.w, fc.sc, fc.f, fc.length
	for _, rg := range [][2]uint64{{0, length}, {length / 2, length/2 + 1}, {length / 3, length / 3}, {length - 1, length}} {
		if length == 0 || !f.HasRange(rg[0], rg[1]) {
			continue
		}
		p, err := f.Proof(rg[0], rg[1], 0)
		if err != nil {
			// A replica may lack a node the proof needs (it holds only
			// the nodes its proofs carried): ErrOutOfRange. A writer
			// lacks one only if damaged: ErrCorrupt.
			if !errors.Is(err, ErrCorrupt) && (f.Writable() || !errors.Is(err, ErrOutOfRange)) {
				t.Fatalf("%s: proof of %v: %v, want ErrCorrupt", sc.name, rg, err)
			}
			continue
		}
		rs := NewMemStorage()
		r, err := OpenFeed(rs, "r/", &FeedOptions{Key: w.feed.Key()})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err == nil {
			checkReplicaBlocks(t, w, r, fmt.Sprintf("%s: replica of damaged feed's proof of %v", sc.name, rg))
		} else if !errors.Is(err, ErrVerify) {
			t.Fatalf("%s: put of the damaged feed's proof of %v: %v", sc.name, rg, err)
		}
		r.Close()
	}
}

// checkAppendSurvivesReopen checks that a writer opened from damaged files
// appends at its length, reads the entry back, and still has it after a
// reopen.
func (fc *damagedFeedCheck) checkAppendSurvivesReopen() {
	t, sc, f, length := fc.t, fc.sc, fc.f, fc.length
	v := []byte("appended after damage")
	seq, err := f.Append(v)
	if err != nil {
		t.Fatalf("%s: append after open: %v", sc.name, err)
	}
	if seq != length {
		t.Fatalf("%s: append at %d, length was %d", sc.name, seq, length)
	}
	if got, err := f.Get(fc.ctx, seq); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("%s: appended entry reads %q, %v", sc.name, got, err)
	}
	key := f.Key()
	if err := f.Close(); err != nil {
		t.Fatalf("%s: close: %v", sc.name, err)
	}
	f2, err := OpenFeed(fc.s, fuzzPrefix, &FeedOptions{Key: key})
	if err != nil {
		t.Fatalf("%s: reopen after append: %v", sc.name, err)
	}
	defer f2.Close()
	if f2.Len() != length+1 {
		t.Fatalf("%s: reopened with length %d, want %d", sc.name, f2.Len(), length+1)
	}
	if got, err := f2.Get(fc.ctx, seq); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("%s: appended entry reads %q, %v after reopen", sc.name, got, err)
	}
}

// checkFullProof checks that a replica opened from damaged files takes the
// writer's full proof, or refuses it because of what the damage left (a
// stored node that contradicts it), and that every entry then present
// reads back (see checkValue).
func (fc *damagedFeedCheck) checkFullProof() {
	t, w, sc, f := fc.t, fc.w, fc.sc, fc.f
	full := w.proofs[w.len()][len(w.proofs[w.len()])-1]
	if err := f.Put(full); err != nil {
		if !errors.Is(err, ErrVerify) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: put of the full proof: %v", sc.name, err)
		}
	} else if f.Len() != w.len() {
		t.Fatalf("%s: length %d after the full proof", sc.name, f.Len())
	}
	for seq := range f.Len() {
		if f.Has(seq) {
			v, err := f.Get(fc.ctx, seq)
			fc.checkValue("get after full proof", seq, v, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("%s: close: %v", sc.name, err)
	}
}

func lastOr(s []uint64, def uint64) uint64 {
	if len(s) == 0 {
		return def
	}
	return s[len(s)-1]
}

func containsU64(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// FuzzOpenFeed opens real stored feeds (a writer, a replica with holes, an
// empty writer, a replica with no block) after fuzz-chosen damage to one
// file: a truncation (or extension) to a chosen length and/or bytes
// overwritten at a chosen offset. See checkDamagedOpen for the properties.
func FuzzOpenFeed(f *testing.F) {
	w := getFuzzWriter(f)
	scs := getFuzzScenarios(f)
	for i, sc := range scs {
		for j, name := range sc.names {
			size := uint32(len(sc.files[name]))
			f.Add(uint8(i), uint8(j), false, uint32(0), uint32(0), []byte{}) // undamaged
			f.Add(uint8(i), uint8(j), true, size/2, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, max(size, 1)-1, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, size+nodeSize, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, uint32(headerSize-1), uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), false, uint32(0), size/2, []byte{0xff})
			f.Add(uint8(i), uint8(j), false, uint32(0), max(size, sigRecordSize)-sigRecordSize+3, []byte{1, 2, 3, 4})
			f.Add(uint8(i), uint8(j), false, uint32(0), uint32(headerSize+32), bytes.Repeat([]byte{0x7f}, 8))
			f.Add(uint8(i), uint8(j), true, size-size%2, uint32(0), []byte("KAPPA"))
		}
	}
	f.Fuzz(func(t *testing.T, scenario, file uint8, truncate bool, size, off uint32, patch []byte) {
		sc := scs[int(scenario)%len(scs)]
		s := sc.restore()
		name := sc.names[int(file)%len(sc.names)]
		b, _ := s.fileBytes(name)
		if truncate {
			n := int(size % uint32(len(b)+2*nodeSize+1))
			if n <= len(b) {
				b = b[:n]
			} else {
				b = append(b, make([]byte, n-len(b))...)
			}
		}
		if len(patch) > 0 {
			o := int(off % uint32(len(b)+1))
			if o+len(patch) > len(b) {
				b = append(b, make([]byte, o+len(patch)-len(b))...)
			}
			copy(b[o:], patch)
		}
		s.setFileBytes(name, b)
		checkDamagedOpen(t, w, sc, s)
	})
}

// FuzzOpenFeedFile opens real stored feeds with one file replaced by fuzz
// bytes, or removed. The properties are those of FuzzOpenFeed.
func FuzzOpenFeedFile(f *testing.F) {
	w := getFuzzWriter(f)
	scs := getFuzzScenarios(f)
	for i, sc := range scs {
		for j, name := range sc.names {
			b := sc.files[name]
			f.Add(uint8(i), uint8(j), false, b)
			f.Add(uint8(i), uint8(j), true, []byte{})
			f.Add(uint8(i), uint8(j), false, b[:min(len(b), headerSize)])
			if len(b) > headerSize+sigRecordSize {
				// Records swapped, dropped or doubled.
				f.Add(uint8(i), uint8(j), false, append(bytes.Clone(b), b[headerSize:headerSize+sigRecordSize]...))
				f.Add(uint8(i), uint8(j), false, append(bytes.Clone(b[:headerSize]), b[len(b)-sigRecordSize:]...))
			}
		}
	}
	f.Fuzz(func(t *testing.T, scenario, file uint8, remove bool, content []byte) {
		sc := scs[int(scenario)%len(scs)]
		s := sc.restore()
		name := sc.names[int(file)%len(sc.names)]
		if remove {
			if err := s.Remove(name); err != nil {
				t.Fatal(err)
			}
		} else {
			s.setFileBytes(name, content)
		}
		checkDamagedOpen(t, w, sc, s)
	})
}
