package kappa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The byte-by-byte damage test. A small database (two local writers, a full
// replica, a sparse one, each grown through several signature records, and a
// writer with no entry) is closed, and copies of its files are damaged one
// byte or one cut at a time: every byte flipped, every byte zeroed, every file
// cut at every offset, and every file extended at its end. Each copy is
// opened, and what the database promises is checked (see checkDamagedDB):
//
//   - opening either succeeds or fails with an error matching ErrCorrupt
//     (the test passes no shared key or encoding, so ErrKeyMismatch and
//     ErrEncodingMismatch would be dishonest);
//   - a feed that did not load is listed by Damaged, with an error matching
//     ErrCorrupt, and its files are left as they were;
//   - a loaded feed has its writer's signature for a length it signed, and
//     holds every entry it acknowledged unless a Repair of one of its files
//     explains the loss: damage at the tail looks like a torn write and is
//     cut back (a writer loses its newest append at most), and a replica's
//     bitfield page that claims entries whose leaf or bytes are gone is
//     rebuilt;
//   - a read never returns a wrong value: a present entry reads back equal,
//     or, if the damage hit that feed's data or tree (which opening does not
//     read whole), fails with ErrCorrupt;
//   - no file gets shorter without a Repair that says so, and OnError and
//     OnRepair receive what Damaged and Repairs list;
//   - a writer whose feed did not load cannot be made again by Writer, if
//     the database still knows its name; one that loaded still appends; each
//     replica takes its writer's proofs; the database reopens with nothing
//     more to repair and every entry still present.
//
// Two outcomes are accepted and counted, as nothing stored can tell them
// apart from a crash: a writer's name lives only in its manifest record, so
// when that record is lost Writer makes a new feed (in a new slot; the
// damaged one is kept); and the newest feed, if empty and its record damaged,
// is taken for a creation torn before Writer returned, and its slot reused.
//
// A replica whose newest signature record is damaged (not torn) loads at
// the length before it and lists the damage, which its writer's signature
// heals; a writer signs its length again, sending the damage to OnError with
// a repair; see recoverDamaged.
//
// By default the test damages every offset of every file of the small
// fixture; -short, or the race detector, a seeded sample of offsets of each
// file (replay with -kappa.seed); KAPPA_DAMAGE=full every offset under the
// race detector too; KAPPA_DAMAGE=long every offset of every file of the
// full fixture.

// damageFeed is one feed of a damageFixture, with what it acknowledged.
type damageFeed struct {
	slot   int               // its place in the manifest
	name   string            // the local writer's name, "" for a replica
	key    []byte            // its public key
	length uint64            // its signed length
	values [][]byte          // the writer's values, at least up to length
	blocks [][]byte          // its blocks up to length: the values with their causal contexts (format 4)
	held   []bool            // the entries below length stored here
	signed []uint64          // the lengths of its signature records, ascending
	sigs   map[uint64][]byte // the writer's signature of each of them

	// A replica's proofs from its writer at length: of blocks it holds,
	// reaching the roots of each of its older signed lengths (so that its
	// Put raises the length from any of them and adds no block; see
	// damageLengthProof), and of every block.
	lengthProof, fullProof *Proof
}

func (d *damageFeed) prefix() string { return feedPrefix(d.slot) }

// damageFixture is a closed database on a MemStorage: its files and its
// feeds.
type damageFixture struct {
	files map[string][]byte
	names []string // sorted
	feeds []*damageFeed
}

// restore returns a new MemStorage holding the fixture's files.
func (fx *damageFixture) restore() *MemStorage {
	s := NewMemStorage()
	for _, name := range fx.names {
		s.setFileBytes(name, fx.files[name])
	}
	return s
}

// damageCopy returns a new MemStorage holding the current content of every
// file of s (synced or not), as a clean shutdown now would leave them.
func damageCopy(s *MemStorage) *MemStorage {
	c := NewMemStorage()
	for _, name := range s.names() {
		b, _ := s.fileBytes(name)
		c.setFileBytes(name, b)
	}
	return c
}

// damageValue is the value a fixture writer appends at seq: short ones, an
// empty one every fourth, some longer.
func damageValue(who string, seq int) []byte {
	switch {
	case seq%4 == 3:
		return []byte{}
	case seq%5 == 4:
		return []byte(who + " " + strings.Repeat("long value ", 10+seq))
	}
	return fmt.Appendf(nil, "%s %d", who, seq)
}

// damageAppend appends the batches (sizes) to w, recording what w
// acknowledged, and calls after (if not nil) after each.
func damageAppend(tb testing.TB, w *Feed, who string, batches []int, values *[][]byte, after func()) {
	tb.Helper()
	for _, n := range batches {
		batch := make([][]byte, n)
		for i := range batch {
			batch[i] = damageValue(who, len(*values)+i)
		}
		seq, err := w.Append(batch...)
		if err != nil {
			tb.Fatal(err)
		}
		if seq != uint64(len(*values)) {
			tb.Fatalf("%s: append at %d, want %d", who, seq, len(*values))
		}
		*values = append(*values, batch...)
		if after != nil {
			after()
		}
	}
}

// damagePut stores blocks [start, end) of src, with a proof at src's
// current length, in the replica r.
func damagePut(tb testing.TB, src, r *Feed, start, end uint64) {
	tb.Helper()
	p, err := src.Proof(start, end, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		tb.Fatal(err)
	}
}

// damageLengthProof returns a proof at src's length of blocks r holds that
// determines every root of each length in signed below it: a proof that
// raises a replica's length must reach the roots it holds, and the replica
// may be back at any of those lengths after damage. It is the proof of one
// block if one will do, else of everything r holds, which must then be
// every entry.
func damageLengthProof(tb testing.TB, src, r *Feed, signed []uint64) *Proof {
	tb.Helper()
	reaches := func(p *Proof) bool {
		t, err := proofTree(p, newLeafHasher(), nil)
		if err != nil {
			tb.Fatal(err)
		}
		for _, l := range signed {
			if _, ok := t.unreachedRoot(l); l < p.Length && !ok {
				return false
			}
		}
		return true
	}
	for s := range r.Len() {
		if !r.Has(s) {
			continue
		}
		p, err := src.Proof(s, s+1, 0)
		if err != nil {
			tb.Fatal(err)
		}
		if reaches(p) {
			return p
		}
	}
	if !r.HasRange(0, r.Len()) {
		tb.Fatalf("no block the replica holds reaches the roots of %v", signed)
	}
	p, err := src.Proof(0, r.Len(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// damageKeyPair is the key pair of the fixture writer called name: fixed, so
// that fixtures built by different processes (fuzz workers) are the same
// bytes.
func damageKeyPair(tb testing.TB, name string) KeyPair {
	tb.Helper()
	seed := sha256.Sum256([]byte("kappa damage fixture " + name))
	kp, err := KeyPairFromSecret(seed[:])
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

// buildDamageFixture builds the database. The full one has two writers
// (alice, bob), a replica of carol that holds everything, a sparse replica
// of dave and a writer with no entry (erin); the small one has alice, dave's
// sparse replica and erin.
func buildDamageFixture(tb testing.TB, small bool) *damageFixture {
	tb.Helper()
	s := NewMemStorage()
	shared := sha256.Sum256([]byte("kappa damage fixture"))
	c, err := New(s, &Options{SharedKey: shared[:]})
	if err != nil {
		tb.Fatal(err)
	}
	remote, err := New(NewMemStorage(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer remote.Close()
	var feeds []*damageFeed
	writer := func(name string, batches []int) {
		w, err := c.WriterWithKeyPair(name, damageKeyPair(tb, name))
		if err != nil {
			tb.Fatal(err)
		}
		d := &damageFeed{slot: len(feeds), name: name, key: w.Key()}
		d.sigs = map[uint64][]byte{}
		damageAppend(tb, w, name, batches, &d.values, func() {
			l, sig := w.Signature()
			d.signed, d.sigs[l] = append(d.signed, l), sig
		})
		d.length = uint64(len(d.values))
		d.blocks = mustBlocks(tb, w, d.length)
		d.held = make([]bool, d.length)
		for i := range d.held {
			d.held[i] = true
		}
		feeds = append(feeds, d)
	}
	// replica replicates the remote writer who, appended in batches; after
	// append number k it stores the ranges puts[k] (none if absent).
	replica := func(who string, batches []int, puts map[int][][2]uint64) {
		src, err := remote.WriterWithKeyPair(who, damageKeyPair(tb, who))
		if err != nil {
			tb.Fatal(err)
		}
		r, err := c.AddFeed(src.Key())
		if err != nil {
			tb.Fatal(err)
		}
		d := &damageFeed{slot: len(feeds), key: src.Key(), sigs: map[uint64][]byte{}}
		k := 0
		damageAppend(tb, src, who, batches, &d.values, func() {
			for _, rg := range puts[k] {
				damagePut(tb, src, r, rg[0], rg[1])
			}
			if len(puts[k]) > 0 {
				l, sig := r.Signature()
				d.signed, d.sigs[l] = append(d.signed, l), sig
			}
			k++
		})
		d.length = r.Len()
		if d.length != src.Len() {
			tb.Fatalf("replica of %s has length %d, its writer %d", who, d.length, src.Len())
		}
		d.blocks = mustBlocks(tb, src, d.length)
		d.lengthProof = damageLengthProof(tb, src, r, d.signed)
		if d.fullProof, err = src.Proof(0, d.length, 0); err != nil {
			tb.Fatal(err)
		}
		d.held = make([]bool, d.length)
		for i := range d.held {
			d.held[i] = r.Has(uint64(i))
		}
		feeds = append(feeds, d)
	}
	if small {
		writer("alice", []int{1, 2, 1})
		replica("dave", []int{3, 2, 3}, map[int][][2]uint64{1: {{1, 3}}, 2: {{4, 5}, {6, 7}}}) // 4 reaches the roots of 5
	} else {
		writer("alice", []int{1, 3, 1, 2})
		writer("bob", []int{2, 1})
		replica("carol", []int{2, 3, 4}, map[int][][2]uint64{0: {{0, 2}}, 1: {{2, 5}}, 2: {{5, 9}}})
		replica("dave", []int{3, 2, 3}, map[int][][2]uint64{1: {{1, 3}}, 2: {{4, 5}, {6, 7}}}) // 4 reaches the roots of 5
	}
	writer("erin", nil) // a writer with no entry yet
	if err := c.Close(); err != nil {
		tb.Fatal(err)
	}
	fx := &damageFixture{files: map[string][]byte{}, names: s.names(), feeds: feeds}
	for _, name := range fx.names {
		fx.files[name], _ = s.fileBytes(name)
	}
	// The fixture must be what the test believes it is.
	res := checkDamagedDB(fx, fx.restore(), damageCheck{})
	if len(res.problems) > 0 || res.outcome != outcomeClean {
		tb.Fatalf("undamaged fixture (outcome %v): %s", res.outcome, strings.Join(res.problems, "; "))
	}
	return fx
}

var (
	damageFixtureOnce [2]sync.Once
	damageFixtureVal  [2]*damageFixture
)

// getDamageFixture builds each fixture once per process; the fixture is
// only read afterwards.
func getDamageFixture(tb testing.TB, small bool) *damageFixture {
	i := 0
	if small {
		i = 1
	}
	damageFixtureOnce[i].Do(func() { damageFixtureVal[i] = buildDamageFixture(tb, small) })
	if damageFixtureVal[i] == nil {
		tb.Fatal("fixture failed to build")
	}
	return damageFixtureVal[i]
}

// damageOutcome sorts the opens of damaged databases.
type damageOutcome int

const (
	outcomeClean    damageOutcome = iota // opened, no repair, no damage listed
	outcomeRepaired                      // opened with repairs, no damage listed
	outcomeDamaged                       // opened with damage listed
	outcomeRefused                       // New failed
)

func (o damageOutcome) String() string {
	return [...]string{"clean", "repaired", "damaged", "refused"}[o]
}

// damageCheck says what damage a check may expect.
type damageCheck struct {
	// touched are the files the damage changed: reads from a feed whose
	// data or tree was touched may fail with ErrCorrupt.
	touched map[string]bool
	// foreign allows a Damage that matches ErrKeyMismatch: a manifest
	// whose records were moved names another feed's key for a slot.
	foreign bool
	// inPlace says the damage changed bytes without changing a file's
	// size: a writer whose signatures file was so damaged loses nothing it
	// acknowledged (its records were synced, so none is torn).
	inPlace bool
}

// damageResult is what checkDamagedDB found.
type damageResult struct {
	outcome   damageOutcome
	readErrs  int // present entries that read as ErrCorrupt
	lost      int // acknowledged entries missing from loaded feeds, explained by a repair
	nameLost  int // writers whose manifest record was lost, so Writer made a new feed
	emptyLost int // empty newest feeds dropped as a torn creation
	problems  []string
}

func (r *damageResult) bad(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// memSnapshot returns the content of every file of s.
func memSnapshot(s *MemStorage) map[string][]byte {
	out := map[string][]byte{}
	for _, name := range s.names() {
		out[name], _ = s.fileBytes(name)
	}
	return out
}

// checkShrink checks that every file of before that got shorter in s (or
// went away) has a Repair saying so.
func checkShrink(res *damageResult, before map[string][]byte, s *MemStorage, repairs []Repair) {
	for name, b := range before {
		now, ok := s.fileBytes(name)
		if !ok {
			res.bad("%s was removed by opening", name)
			continue
		}
		if len(now) >= len(b) {
			continue
		}
		explained := false
		for _, r := range repairs {
			if r.File == name && r.From == int64(len(b)) && r.To == int64(len(now)) {
				explained = true
			}
		}
		if !explained {
			res.bad("%s was cut from %d to %d bytes with no repair saying so (repairs: %v)", name, len(b), len(now), repairs)
		}
	}
}

// damageCollector gathers what a database reports through its options.
type damageCollector struct {
	mu      sync.Mutex
	errs    []error
	repairs []Repair
}

func (dc *damageCollector) options() *Options {
	return &Options{
		OnError: func(err error) {
			dc.mu.Lock()
			dc.errs = append(dc.errs, err)
			dc.mu.Unlock()
		},
		OnRepair: func(r Repair) {
			dc.mu.Lock()
			dc.repairs = append(dc.repairs, r)
			dc.mu.Unlock()
		},
	}
}

func (dc *damageCollector) get() ([]error, []Repair) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	return slices.Clone(dc.errs), slices.Clone(dc.repairs)
}

// checkDamagedDB opens the database in s (a fixture's files, maybe damaged)
// and checks the promises listed at the top of this file. It returns the
// problems rather than failing, so that a caller can report many cases.
func checkDamagedDB(fx *damageFixture, s *MemStorage, dc damageCheck) (res damageResult) {
	before := memSnapshot(s)
	var col damageCollector
	c, err := New(s, col.options())
	reported, repaired := col.get()
	if err != nil {
		res.outcome = outcomeRefused
		if !errors.Is(err, ErrCorrupt) {
			res.bad("open failed with %v, want an error matching ErrCorrupt", err)
		}
		checkShrink(&res, before, s, repaired)
		return res
	}
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	// The causal index's rebuild after open reads every held entry in the
	// background: what it finds is listed before the checks.
	if err := c.causalReady(context.Background()); err != nil {
		res.bad("causal rebuild: %v", err)
	}
	reported, repaired = col.get()
	damaged, repairs := c.Damaged(), c.Repairs()
	// Damage to single entries that the rebuild's reads found is left out
	// here: the checks below read every entry and find it themselves.
	damaged = slices.DeleteFunc(damaged, func(d Damage) bool { return d.Entry })
	reported = slices.DeleteFunc(reported, func(err error) bool {
		var d Damage
		return errors.As(err, &d) && d.Entry
	})
	checkShrink(&res, before, s, repairs)
	if want := fx.files[fileDB][dbKeyOff : dbKeyOff+32]; !bytes.Equal(c.SharedKey(), want) {
		res.bad("opened with shared key %x, the database's is %x", c.SharedKey()[:4], want[:4])
	}
	if !slices.EqualFunc(repairs, repaired, func(a, b Repair) bool { return a == b }) {
		res.bad("Repairs lists %v, OnRepair received %v", repairs, repaired)
	}
	res.outcome = outcomeClean
	switch {
	case len(damaged) > 0:
		res.outcome = outcomeDamaged
	case len(repairs) > 0:
		res.outcome = outcomeRepaired
	}

	// Damage: listed once per slot, reported to OnError, kept untouched;
	// but a replica whose newest signature record is damaged loads at the
	// length before it (its files past that length are kept, its bitfield
	// cut back), listed until a peer's signature replaces the record.
	damagedSlot := map[int]bool{}
	sigDamaged := map[int]bool{} // loaded replicas with a damaged signature record
	for _, d := range damaged {
		if damagedSlot[d.Slot] {
			res.bad("slot %d is listed twice in Damaged", d.Slot)
		}
		if !errors.Is(d.Err, ErrCorrupt) && !(dc.foreign && errors.Is(d.Err, ErrKeyMismatch)) {
			res.bad("damage %v does not match ErrCorrupt", d)
		}
		if isSigDamage(d) && c.Feed(d.Key) != nil {
			if c.Feed(d.Key).Writable() {
				res.bad("writer %d loaded with its signature record listed as damaged: %v", d.Slot, d)
			}
			sigDamaged[d.Slot] = true
			continue
		}
		damagedSlot[d.Slot] = true
		prefix := feedPrefix(d.Slot)
		for name, b := range before {
			if now, _ := s.fileBytes(name); strings.HasPrefix(name, prefix) && !bytes.Equal(now, b) {
				res.bad("%s of damaged slot %d was changed by opening (%d bytes before, %d after)", name, d.Slot, len(b), len(now))
			}
		}
	}
	// OnError receives what Damaged lists, and the damaged signature
	// records that opening worked around (a writer signed its length
	// again), each with a repair of that file.
	healed := 0
	for _, err := range reported {
		var d Damage
		switch {
		case !errors.As(err, &d):
			res.bad("OnError received %v, which is no Damage", err)
		case damagedSlot[d.Slot] || sigDamaged[d.Slot]:
		case isSigDamage(d) && len(repairOf(repairs, feedPrefix(d.Slot)+fileSignatures, "damage, not a torn write")) == 1:
			healed++
		default:
			res.bad("OnError received %v, which Damaged does not list", err)
		}
	}
	if len(reported) != len(damaged)+healed {
		res.bad("OnError received %d errors, Damaged lists %d: %v / %v", len(reported), len(damaged), reported, damaged)
	}

	// Feeds: each fixture feed loaded in its place or listed as damaged,
	// and nothing else loaded.
	loaded := map[string]bool{}
	for _, f := range c.Feeds() {
		known := false
		for _, d := range fx.feeds {
			if bytes.Equal(f.Key(), d.key) {
				known = true
				if f.name != d.prefix() {
					res.bad("feed %x loaded from %s, it is stored under %s", d.key[:4], f.name, d.prefix())
				}
			}
		}
		if !known {
			res.bad("feed %x loaded from %s is not one of the database's", f.Key()[:4], f.name)
		}
		if loaded[string(f.Key())] {
			res.bad("feed %x is listed twice by Feeds", f.Key()[:4])
		}
		loaded[string(f.Key())] = true
	}
	// A hang detector only: reads of present entries do not wait.
	ctx, cancel := context.WithTimeout(context.Background(), hangAfter)
	defer cancel()
	for _, d := range fx.feeds {
		f := c.Feed(d.key)
		if f == nil {
			switch {
			case damagedSlot[d.slot]:
				if d.name != "" {
					checkLostWriter(&res, fx, d, c, damaged)
				}
			case d.length == 0 && d.slot == len(fx.feeds)-1 && dc.touched[fileManifest]:
				// The newest feed, empty, whose record is damaged looks
				// like a creation that a crash tore before its record
				// was written (so before Writer returned): its slot is
				// free again.
				res.emptyLost++
			default:
				res.bad("feed %d (%x) did not load and is not listed in Damaged", d.slot, d.key[:4])
			}
			continue
		}
		if damagedSlot[d.slot] {
			res.bad("feed %d (%x) loaded and is listed in Damaged", d.slot, d.key[:4])
		}
		checkLoadedFeed(&res, d, f, repairs, sigDamaged[d.slot])
		if d.name != "" && dc.inPlace && dc.touched[d.prefix()+fileSignatures] && f.Len() < d.length {
			res.bad("writer %d lost acknowledged entries to damage in its signatures file: length %d, %d acknowledged", d.slot, f.Len(), d.length)
		}
		readBack(ctx, &res, d, d.values, f, dc, "after open")
		if d.name == "" {
			if f.Writable() {
				res.bad("replica %d loaded writable", d.slot)
			}
			continue
		}
		if name, ok := c.WriterName(d.key); !ok || name != d.name {
			res.bad("writer %q loaded with name %q", d.name, name)
		}
		if w, err := c.Writer(d.name); err != nil || w != f {
			res.bad("Writer(%q) after open: %v, %v (want the loaded feed)", d.name, w, err)
		}
	}
	for _, d := range damaged {
		prefix := feedPrefix(d.Slot)
		for name, b := range before {
			if now, _ := s.fileBytes(name); strings.HasPrefix(name, prefix) && !bytes.Equal(now, b) && !sigDamaged[d.Slot] {
				res.bad("%s of damaged slot %d was changed after opening", name, d.Slot)
			}
		}
	}
	if len(res.problems) > 0 {
		return res
	}

	// The database still works: each writer appends, each replica learns
	// its writer's length from a proof of no block (its held entries are
	// kept as they are).
	want := map[int]uint64{}     // length at reopen
	held := map[int][]bool{}     // entries present before the reopen
	values := map[int][][]byte{} // the writer's values now
	for _, d := range fx.feeds {
		f := c.Feed(d.key)
		if f == nil {
			continue
		}
		values[d.slot] = d.values
		if d.name != "" {
			v := []byte(d.name + " after damage")
			values[d.slot] = append(slices.Clone(d.values[:f.Len()]), v)
			seq, err := f.Append(v)
			if err != nil {
				res.bad("writer %q: append after open: %v", d.name, err)
				continue
			}
			if got, err := f.Get(ctx, seq); err != nil || !bytes.Equal(got, v) {
				res.bad("writer %q: appended entry %d reads %q, %v", d.name, seq, got, err)
			}
		} else if err := f.Put(d.lengthProof); err != nil && !damageTouched(d, dc) {
			res.bad("replica %d: put of its writer's length: %v", d.slot, err)
		}
		want[d.slot] = f.Len()
		held[d.slot] = make([]bool, f.Len())
		for i := range held[d.slot] {
			held[d.slot][i] = f.Has(uint64(i))
		}
	}
	if len(res.problems) > 0 {
		return res
	}

	// A replica's damaged signature record was replaced by its writer's
	// (the proof of its length reaches the length it had lost).
	for _, d := range c.Damaged() {
		if isSigDamage(d) && c.Feed(d.Key) != nil {
			res.bad("damaged signature record still listed after the writer's length was put: %v", d)
		}
	}

	// The repaired database reopens as it was left: nothing more to repair,
	// the same feeds and damage, every entry still present. Then each
	// replica takes its writer's proof of every entry and holds them all.
	err = c.Close()
	c = nil
	if err != nil {
		res.bad("close: %v", err)
		return res
	}
	var col2 damageCollector
	c2, err := New(s, col2.options())
	if err != nil {
		res.bad("reopen after repair: %v", err)
		return res
	}
	defer c2.Close()
	if err := c2.causalReady(context.Background()); err != nil { // (as the first open)
		res.bad("causal rebuild on reopen: %v", err)
	}
	if r := c2.Repairs(); len(r) > 0 {
		res.bad("reopen repaired again: %v", r)
	}
	var slots, wantSlots []int
	for _, d := range c2.Damaged() {
		if !d.Entry { // (damage to one entry: listed once a read finds it)
			slots = append(slots, d.Slot)
		}
	}
	for slot := range damagedSlot {
		wantSlots = append(wantSlots, slot)
	}
	sort.Ints(slots)
	sort.Ints(wantSlots)
	if !slices.Equal(slots, wantSlots) {
		res.bad("reopen lists damaged slots %v, the first open %v", slots, wantSlots)
	}
	for _, d := range fx.feeds {
		f := c2.Feed(d.key)
		length, ok := want[d.slot]
		if (f != nil) != ok {
			res.bad("feed %d loaded %v at reopen, %v at the first open", d.slot, f != nil, ok)
			continue
		}
		if f == nil {
			continue
		}
		if f.Len() != length {
			res.bad("feed %d reopened with length %d, want %d", d.slot, f.Len(), length)
			continue
		}
		for i, h := range held[d.slot] {
			if h && !f.Has(uint64(i)) {
				res.bad("feed %d: entry %d present before the reopen is not after", d.slot, i)
			}
		}
		if d.name != "" {
			readBack(ctx, &res, d, values[d.slot], f, dc, "after reopen")
			continue
		}
		readBack(ctx, &res, d, d.values, f, dc, "after reopen, before the full proof")
		if err := f.Put(d.fullProof); err != nil {
			if !damageTouched(d, dc) {
				res.bad("replica %d: put of every entry after reopen: %v", d.slot, err)
			}
			continue
		}
		if f.Len() != d.length || f.Downloaded() != d.length {
			res.bad("replica %d: after the full proof length %d, downloaded %d, want %d", d.slot, f.Len(), f.Downloaded(), d.length)
		}
		readBack(ctx, &res, d, d.values, f, dc, "after the full proof")
	}
	return res
}

// isSigDamage reports whether d is damage in the signatures file of its
// feed, which a loaded feed may list (see recoverDamaged).
func isSigDamage(d Damage) bool {
	var ce *CorruptError
	return !d.Entry && errors.As(d.Err, &ce) && ce.File == feedPrefix(d.Slot)+fileSignatures
}

// damageTouched reports whether the damage hit one of d's files.
func damageTouched(d *damageFeed, dc damageCheck) bool {
	for name := range dc.touched {
		if strings.HasPrefix(name, d.prefix()) {
			return true
		}
	}
	return false
}

// checkLostWriter checks Writer for a local writer whose feed did not load.
// If the database knows the writer's name (its manifest record is intact),
// Writer must fail. If the record itself was lost, nothing stored says which
// name the damaged feed had: Writer then makes a new feed (counted in
// nameLost), which must take a slot of its own and leave the damaged one's
// files as they are.
func checkLostWriter(res *damageResult, fx *damageFixture, d *damageFeed, c *Core, damaged []Damage) {
	var dmg Damage
	for _, x := range damaged {
		if x.Slot == d.slot {
			dmg = x
		}
	}
	w, err := c.Writer(d.name)
	switch {
	case dmg.Name == d.name && err == nil:
		res.bad("writer %q did not load, yet Writer made one (%x, at %s)", d.name, w.Key()[:4], w.name)
	case dmg.Name == d.name:
		return
	case dmg.Name != "":
		res.bad("damaged slot %d of writer %q lists name %q", d.slot, d.name, dmg.Name)
	case err != nil:
		return // refusing is fine too
	}
	res.nameLost++
	for _, x := range damaged {
		if w.name == feedPrefix(x.Slot) {
			res.bad("writer %q was made again in damaged slot %d", d.name, x.Slot)
		}
	}
	for _, x := range fx.feeds {
		if w.name == x.prefix() {
			res.bad("writer %q was made again in slot %d of feed %x", d.name, x.slot, x.key[:4])
		}
	}
}

// checkLoadedFeed checks the state a feed loaded from damaged files with
// against what it acknowledged. A feed may come back shorter only if a repair
// of its files says so (damage at the tail looks like a torn write); a
// writer, whose synced records leave at most the newest torn, by one append
// at most.
func checkLoadedFeed(res *damageResult, d *damageFeed, f *Feed, repairs []Repair, sigDamaged bool) {
	repaired := sigDamaged // a replica's damaged signature record is listed
	for _, r := range repairs {
		if strings.HasPrefix(r.File, d.prefix()) {
			repaired = true
		}
	}
	length := f.Len()
	switch {
	case length > uint64(len(d.values)):
		res.bad("feed %d opened with length %d, the writer wrote %d", d.slot, length, len(d.values))
		return
	case length != 0 && !slices.Contains(d.signed, length):
		res.bad("feed %d opened with length %d, which it never signed (%v)", d.slot, length, d.signed)
	case length < d.length && !repaired:
		res.bad("feed %d opened with length %d < %d acknowledged, and no repair of its files says why", d.slot, length, d.length)
	case length < d.length && d.name != "" && len(d.signed) > 1 && length < d.signed[len(d.signed)-2]:
		res.bad("writer %d opened with length %d: more than its newest append (%v) lost", d.slot, length, d.signed)
	}
	if length < d.length {
		res.lost += int(d.length - length)
	}
	for seq := range min(length, d.length) {
		if d.held[seq] && !f.Has(seq) {
			if f.isDamaged(seq) {
				continue // found damaged by a read (the causal rebuild's): listed as such
			}
			if !repaired {
				res.bad("feed %d: acknowledged entry %d is not held, and no repair of its files says why", d.slot, seq)
			}
			res.lost++
		}
	}
	// Format 4: the byte length counts blocks, a value and its context.
	var byteLen uint64
	for _, b := range d.blocks[:length] {
		byteLen += uint64(len(b))
	}
	if f.ByteLen() != byteLen {
		res.bad("feed %d: byte length %d at length %d, want %d", d.slot, f.ByteLen(), length, byteLen)
	}
	if length > 0 {
		// Signatures are deterministic: the writer's, or a wrong one.
		if l, sig := f.Signature(); l != length || !bytes.Equal(sig, d.sigs[length]) {
			res.bad("feed %d: signature of length %d is not the writer's", d.slot, l)
		}
	}
}

// readBack checks that every entry f reports present reads back as the
// writer's value by Get and GetBatch, or fails with ErrCorrupt where the
// damage hit the feed's data or tree (which opening does not read whole).
func readBack(ctx context.Context, res *damageResult, d *damageFeed, values [][]byte, f *Feed, dc damageCheck, when string) {
	prefix := d.prefix()
	readMayFail := dc.touched[prefix+fileData] || dc.touched[prefix+fileTree]
	check := func(what string, seq uint64, v []byte, err error) {
		switch {
		case err != nil && errors.Is(err, ErrCorrupt) && readMayFail:
			res.readErrs++
		case err != nil:
			res.bad("feed %d %s: %s %d: %v", d.slot, when, what, seq, err)
		case seq >= uint64(len(values)):
			res.bad("feed %d %s: %s %d returned %q past the writer's values", d.slot, when, what, seq, v)
		case !bytes.Equal(v, values[seq]):
			res.bad("feed %d %s: %s %d returned %q, the writer wrote %q", d.slot, when, what, seq, v, values[seq])
		}
	}
	var present uint64
	length := f.Len()
	for seq := uint64(0); seq < length; seq++ {
		if !f.Has(seq) {
			continue
		}
		present++
		v, err := f.Get(ctx, seq)
		check("get", seq, v, err)
		end := f.NextMissing(seq)
		vs, err := f.GetBatch(ctx, seq, end)
		if err != nil {
			check("get batch from", seq, nil, err)
			continue
		}
		if uint64(len(vs)) != end-seq {
			res.bad("feed %d %s: get [%d, %d) returned %d entries", d.slot, when, seq, end, len(vs))
		}
		for k, v := range vs {
			check("batch entry", seq+uint64(k), v, nil)
		}
	}
	// Reads mark the entries they find damaged, which then no longer
	// count as held: count again.
	present = 0
	for seq := uint64(0); seq < length; seq++ {
		if f.Has(seq) {
			present++
		}
	}
	if f.Downloaded() != present {
		res.bad("feed %d %s: Downloaded %d, Has counts %d", d.slot, when, f.Downloaded(), present)
	}
}

// damageMutation is one way to damage a file.
type damageMutation int

const (
	mutFlip    damageMutation = iota // all bits of one byte flipped
	mutZero                          // one byte set to zero
	mutCut                           // the file cut at an offset
	mutExtend0                       // zero bytes added at the end
	mutExtendR                       // random bytes added at the end
)

func (m damageMutation) String() string {
	return [...]string{"flip", "zero", "cut", "extend with zeros", "extend with random bytes"}[m]
}

// apply returns b damaged by m at off, and false if m changes nothing.
func (m damageMutation) apply(b []byte, off int, r *rand.Rand) ([]byte, bool) {
	b = bytes.Clone(b)
	switch m {
	case mutFlip:
		b[off] ^= 0xff
	case mutZero:
		if b[off] == 0 {
			return nil, false
		}
		b[off] = 0
	case mutCut:
		b = b[:off]
	case mutExtend0:
		b = append(b, make([]byte, 7)...)
	case mutExtendR:
		for range 7 {
			b = append(b, byte(r.IntN(256)))
		}
	}
	return b, true
}

// damageOffsets returns the offsets of a file of n bytes to damage: every
// one, or the header's last byte, the last bytes, and a seeded sample.
func damageOffsets(n int, every bool, sample int, r *rand.Rand) []int {
	if every || n <= sample {
		offs := make([]int, n)
		for i := range offs {
			offs[i] = i
		}
		return offs
	}
	set := map[int]bool{headerSize - 1: true, n - 1: true, n - 2: true}
	for len(set) < sample {
		set[r.IntN(n)] = true
	}
	var offs []int
	for off := range set {
		if off >= 0 && off < n {
			offs = append(offs, off)
		}
	}
	sort.Ints(offs)
	return offs
}

// damageTally counts outcomes.
type damageTally struct {
	opens     int
	outcomes  [4]int
	readErrs  int // opens where some present entry read as ErrCorrupt
	lost      int // opens that lost acknowledged entries, with a repair saying so
	nameLost  int // opens where a writer's manifest record was lost, so Writer made it anew
	emptyLost int // opens that dropped the empty newest feed as a torn creation
	failures  int
	kinds     map[string]int // failures by kind: the message without numbers
	lostBy    map[string]int // opens that lost acknowledged entries, by damage
	readBy    map[string]int // opens with entries that read as ErrCorrupt, by damage
}

func (tl *damageTally) add(res damageResult, kind string) {
	tl.opens++
	tl.outcomes[res.outcome]++
	if tl.lostBy == nil {
		tl.lostBy, tl.readBy = map[string]int{}, map[string]int{}
	}
	if res.readErrs > 0 {
		tl.readErrs++
		tl.readBy[kind]++
	}
	if res.lost > 0 {
		tl.lost++
		tl.lostBy[kind]++
	}
	if res.nameLost > 0 {
		tl.nameLost++
	}
	if res.emptyLost > 0 {
		tl.emptyLost++
	}
	if len(res.problems) > 0 {
		tl.failures++
		if tl.kinds == nil {
			tl.kinds = map[string]int{}
		}
		for _, p := range res.problems {
			tl.kinds[damageKind(p)]++
		}
	}
}

// damageKind returns a problem's message with numbers and hex keys elided.
func damageKind(p string) string {
	var b strings.Builder
	digits := false
	for _, r := range p {
		if r >= '0' && r <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(r)
	}
	return b.String()
}

func (tl *damageTally) String() string {
	return fmt.Sprintf("%d opens: %d clean, %d with repairs, %d with damage listed, %d refused with ErrCorrupt; "+
		"%d with an entry that reads as ErrCorrupt, %d with acknowledged entries cut by a reported repair, "+
		"%d where a writer's name was lost with its manifest record, %d where the empty newest feed was taken for a torn creation",
		tl.opens, tl.outcomes[outcomeClean], tl.outcomes[outcomeRepaired], tl.outcomes[outcomeDamaged], tl.outcomes[outcomeRefused],
		tl.readErrs, tl.lost, tl.nameLost, tl.emptyLost)
}

// TestDamageEveryByteIsReportedOrHarmless damages the fixture database one
// byte or one cut at a time and checks every open; see the top of this
// file. By default it sweeps every offset of every file of the small
// fixture: each byte flipped, each byte zeroed, each file cut at each
// offset and extended at its end (about 11,000 opens, spread over
// GOMAXPROCS workers). With -short it damages a seeded sample of offsets
// of each file (replay with -kappa.seed), and under the race detector a
// larger sample (the sweep looks for wrong answers, which the race
// detector does not change, and is slow under it: CI runs it whole without
// it); KAPPA_DAMAGE=full sweeps every offset under the race detector too.
// With KAPPA_DAMAGE=long, every offset of every file of the full fixture.
func TestDamageEveryByteIsReportedOrHarmless(t *testing.T) {
	long := os.Getenv("KAPPA_DAMAGE") == "long"
	fx := getDamageFixture(t, !long)
	every, sample := true, 0
	switch {
	case long || os.Getenv("KAPPA_DAMAGE") == "full":
	case testing.Short():
		every, sample = false, 3
	case raceEnabled:
		every, sample = false, 12
	}
	seed := testSeed()
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d (replay with -kappa.seed=%d), long=%v, every offset=%v", seed, seed, long, every)
	start := time.Now()

	type damageCase struct {
		name string
		m    damageMutation
		b    []byte
		what string
	}
	var cases []damageCase
	for _, name := range fx.names {
		orig := fx.files[name]
		for _, off := range damageOffsets(len(orig), every, sample, r) {
			for _, m := range []damageMutation{mutFlip, mutZero, mutCut} {
				if b, ok := m.apply(orig, off, r); ok {
					cases = append(cases, damageCase{name, m, b, fmt.Sprintf("%s: %v at %d of %d", name, m, off, len(orig))})
				}
			}
		}
		for _, m := range []damageMutation{mutExtend0, mutExtendR} {
			b, _ := m.apply(orig, 0, r)
			cases = append(cases, damageCase{name, m, b, fmt.Sprintf("%s: %v", name, m)})
		}
	}
	// The cases are independent: each opens its own copy.
	base := fx.restore()
	results := make([]damageResult, len(cases))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(cases) {
					return
				}
				s := damageCopy(base)
				s.setFileBytes(cases[i].name, cases[i].b)
				dc := damageCheck{touched: map[string]bool{cases[i].name: true}, inPlace: cases[i].m == mutFlip || cases[i].m == mutZero}
				results[i] = checkDamagedDB(fx, s, dc)
			}
		})
	}
	wg.Wait()

	var tally damageTally
	const maxFailures = 20
	for i, res := range results {
		tally.add(res, fmt.Sprintf("%s %v", cases[i].name, cases[i].m))
		if len(res.problems) > 0 && tally.failures <= maxFailures {
			t.Errorf("%s (%v): %s", cases[i].what, res.outcome, strings.Join(res.problems, "\n\t"))
		}
	}
	t.Logf("%v; %d files, %d bytes, in %v", &tally, len(fx.names), totalSize(fx), time.Since(start).Round(time.Millisecond))
	t.Logf("opens that cut acknowledged entries, by damage:%s", damageCounts(tally.lostBy))
	t.Logf("opens with entries that read as ErrCorrupt, by damage:%s", damageCounts(tally.readBy))
	if tally.failures > 0 {
		var kinds []string
		for k, n := range tally.kinds {
			kinds = append(kinds, fmt.Sprintf("%6d× %s", n, k))
		}
		sort.Strings(kinds)
		t.Errorf("%d failing cases (the first %d shown above); problems by kind:\n%s", tally.failures, maxFailures, strings.Join(kinds, "\n"))
	}
}

func damageCounts(m map[string]int) string {
	var lines []string
	for k, n := range m {
		lines = append(lines, fmt.Sprintf("\n\t%5d %s", n, k))
	}
	sort.Strings(lines)
	return strings.Join(lines, "")
}

func totalSize(fx *damageFixture) int {
	n := 0
	for _, b := range fx.files {
		n += len(b)
	}
	return n
}

// damageOpen opens s, failing the test on error, and returns the database
// with the repairs it made.
func damageOpen(t *testing.T, s *MemStorage) (*Core, []Repair) {
	t.Helper()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.Repairs()
}

// A replica whose newest signature record is damaged goes back to the
// length before it, lists the damage, and does not hold the blocks that came
// with the lost record (their tree and data are kept, unverified), so a later,
// longer length must not find them present (they used to read as ErrCorrupt
// for ever, and were never fetched again). The writer's signature heals the
// damage.
func TestDamageReplicaBackAtAnOlderLengthForgetsBlocksPastIt(t *testing.T) {
	fx := getDamageFixture(t, true)
	d := fx.feeds[1] // dave's sparse replica: signed at 5, then 8 with block 6
	if d.name != "" || !slices.Equal(d.signed, []uint64{5, 8}) || !d.held[6] {
		t.Fatalf("fixture feed 1 is %+v", d)
	}
	s := fx.restore()
	sigs := fx.files[d.prefix()+fileSignatures]
	b := bytes.Clone(sigs)
	b[len(b)-sigRecordSize+20] ^= 0xff // inside the newest record's signature
	s.setFileBytes(d.prefix()+fileSignatures, b)

	c, repairs := damageOpen(t, s)
	r := c.Feed(d.key)
	if r == nil || r.Len() != 5 || r.Has(6) || len(repairs) == 0 || len(c.Damaged()) != 1 {
		t.Fatalf("opened replica %v with repairs %v, damage %v", r, repairs, c.Damaged())
	}
	if err := r.Put(d.lengthProof); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 8 || r.Has(6) || len(c.Damaged()) != 0 {
		t.Fatalf("after the length: length %d, has 6: %v, damage %v", r.Len(), r.Has(6), c.Damaged())
	}
	c.Close()

	c, repairs = damageOpen(t, s)
	r = c.Feed(d.key)
	if len(repairs) != 0 || r.Len() != 8 || r.Has(6) || !r.Has(1) || !r.Has(2) {
		t.Fatalf("reopened with repairs %v: length %d, has 1, 2, 6: %v %v %v", repairs, r.Len(), r.Has(1), r.Has(2), r.Has(6))
	}
	if err := r.Put(d.fullProof); err != nil {
		t.Fatal(err)
	}
	for seq, want := range d.values {
		if got, err := r.Get(context.Background(), uint64(seq)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("entry %d: %q, %v; want %q", seq, got, err, want)
		}
	}
}

// A replica whose data or tree was cut no longer reports the blocks it lost
// as present: the bitfield page is rebuilt (a repair), so Get waits for them
// and replication fetches them again, instead of ErrCorrupt for ever.
func TestDamageReplicaCutDataOrTreeDropsTheLostBlocks(t *testing.T) {
	fx := getDamageFixture(t, true)
	d := fx.feeds[1] // holds 1, 2 and 6
	for _, file := range []string{fileData, fileTree} {
		t.Run(file, func(t *testing.T) {
			s := fx.restore()
			name := d.prefix() + file
			b := fx.files[name]
			cut := len(b) - 1 // inside block 6, the last
			if file == fileTree {
				cut = headerSize + 12*nodeSize + 10 // inside block 6's leaf
			}
			s.setFileBytes(name, b[:cut])
			c, repairs := damageOpen(t, s)
			r := c.Feed(d.key)
			if r == nil || r.Len() != d.length {
				t.Fatalf("replica %v, damaged %v", r, c.Damaged())
			}
			if r.Has(6) || !r.Has(1) || !r.Has(2) {
				t.Fatalf("has 1, 2, 6: %v %v %v", r.Has(1), r.Has(2), r.Has(6))
			}
			rebuilt := false
			for _, rp := range repairs {
				rebuilt = rebuilt || rp.File == d.prefix()+fileBitfield
			}
			if !rebuilt {
				t.Fatalf("no repair of the bitfield: %v", repairs)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			if _, err := r.Get(ctx, 6); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("get of the lost block: %v, want it to wait", err)
			}
			if err := r.Put(d.fullProof); err != nil {
				t.Fatal(err)
			}
			for seq, want := range d.values {
				if got, err := r.Get(context.Background(), uint64(seq)); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("entry %d: %q, %v; want %q", seq, got, err, want)
				}
			}
		})
	}
}

// A manifest cut inside its header lists every feed as damaged; it used to
// open as an empty database.
func TestDamageManifestCutInItsHeaderListsEveryFeed(t *testing.T) {
	fx := getDamageFixture(t, true)
	s := fx.restore()
	s.setFileBytes(fileManifest, fx.files[fileManifest][:headerSize-6])
	c, _ := damageOpen(t, s)
	var slots []int
	for _, d := range c.Damaged() {
		if !errors.Is(d.Err, ErrCorrupt) {
			t.Fatalf("damage %v", d)
		}
		slots = append(slots, d.Slot)
	}
	if len(c.Feeds()) != 0 || !slices.Equal(slots, []int{0, 1, 2}) {
		t.Fatalf("%d feeds loaded, damaged slots %v; want none and [0 1 2]", len(c.Feeds()), slots)
	}
}

// TestDamageWritersKeyFileIsNeverTakenForANewFeed: a local writer's key file
// is durable before its manifest record is written, so a key file that is
// missing, short, blank or damaged is damage, even when the writer holds no
// entries yet (a blank key file beside blank files would otherwise read as
// a creation torn by a crash, and the writer would come back a replica).
// The database opens, lists the damage, and Writer returns it.
func TestDamageWritersKeyFileIsNeverTakenForANewFeed(t *testing.T) {
	for _, entries := range []int{0, 3} {
		for _, tc := range []struct {
			name   string
			damage func(path string) error
		}{
			{"missing", os.Remove},
			{"short", func(p string) error { return os.Truncate(p, 100) }},
			{"blank", func(p string) error { return os.WriteFile(p, make([]byte, 128), 0o600) }},
			{"flipped", func(p string) error {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				b[20] ^= 1
				return os.WriteFile(p, b, 0o600)
			}},
		} {
			t.Run(fmt.Sprintf("%s/%d entries", tc.name, entries), func(t *testing.T) {
				dir := t.TempDir()
				c, err := Open(dir, nil)
				if err != nil {
					t.Fatal(err)
				}
				appendN(t, mustWriter(t, c, "w"), entries, "v")
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				if err := tc.damage(filepath.Join(dir, "feeds", "0", "key")); err != nil {
					t.Fatal(err)
				}
				c, err = Open(dir, nil)
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer c.Close()
				if d := c.Damaged(); len(d) != 1 || d[0].Slot != 0 || !errors.Is(d[0].Err, ErrCorrupt) {
					t.Fatalf("damage %v, want slot 0 as ErrCorrupt", d)
				}
				if w, err := c.Writer("w"); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Writer after its key file was damaged: %v, %v; want ErrCorrupt", w, err)
				}
			})
		}
	}
}
