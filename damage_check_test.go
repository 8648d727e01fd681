package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
)

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
// and checks the promises listed at the top of damage_sweep_test.go. It
// returns the problems rather than failing, so that a caller can report many
// cases.
func checkDamagedDB(fx *damageFixture, s *MemStorage, dc damageCheck) (res damageResult) {
	before := memSnapshot(s)
	var col damageCollector
	c, err := New(s, col.options())
	if err != nil {
		_, repaired := col.get()
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
	db := &damagedDB{fx: fx, s: s, dc: dc, res: &res, before: before, c: c}
	db.checkOpened(&col)
	db.checkDamageListed()
	db.checkOnError()
	db.checkFeedsKnown()
	// A hang detector only: reads of present entries do not wait.
	ctx, cancel := context.WithTimeout(context.Background(), hangAfter)
	defer cancel()
	db.checkEachFeed(ctx)
	db.checkDamagedSlotsUnchanged()
	if len(res.problems) > 0 {
		return res
	}
	db.useAfterDamage(ctx)
	if len(res.problems) > 0 {
		return res
	}
	db.checkSigDamageHealed()

	// The repaired database reopens as it was left: nothing more to repair,
	// the same feeds and damage, every entry still present. Then each
	// replica takes its writer's proof of every entry and holds them all.
	err = c.Close()
	c = nil
	if err != nil {
		res.bad("close: %v", err)
		return res
	}
	db.checkReopen(ctx)
	return res
}

// damagedDB is a database opened by checkDamagedDB from a fixture's files,
// with what its steps found and pass on to the next.
type damagedDB struct {
	fx     *damageFixture
	s      *MemStorage
	dc     damageCheck
	res    *damageResult
	before map[string][]byte // the files before opening
	c      *Core

	// What the open listed and reported, less damage to single entries.
	damaged  []Damage
	repairs  []Repair
	reported []error

	damagedSlot map[int]bool // slots listed as damaged, which did not load
	sigDamaged  map[int]bool // loaded replicas with a damaged signature record

	// What useAfterDamage left, by slot, for checkReopen.
	lengths map[int]uint64   // length at reopen
	held    map[int][]bool   // entries present before the reopen
	values  map[int][][]byte // the writer's values now
}

// checkOpened waits for the causal index's rebuild, takes what the open
// listed and reported, and checks that no file was cut without a repair,
// that the shared key is the database's, and that OnRepair received what
// Repairs lists; it sets the outcome.
func (db *damagedDB) checkOpened(col *damageCollector) {
	res, c := db.res, db.c
	// The causal index's rebuild after open reads every held entry in the
	// background: what it finds is listed before the checks.
	if err := c.causalReady(context.Background()); err != nil {
		res.bad("causal rebuild: %v", err)
	}
	reported, repaired := col.get()
	damaged, repairs := c.Damaged(), c.Repairs()
	// Damage to single entries that the rebuild's reads found is left out
	// here: the checks below read every entry and find it themselves.
	damaged = slices.DeleteFunc(damaged, func(d Damage) bool { return d.Entry })
	reported = slices.DeleteFunc(reported, func(err error) bool {
		var d Damage
		return errors.As(err, &d) && d.Entry
	})
	db.damaged, db.repairs, db.reported = damaged, repairs, reported
	checkShrink(res, db.before, db.s, repairs)
	if want := db.fx.files[fileDB][dbKeyOff : dbKeyOff+32]; !bytes.Equal(c.SharedKey(), want) {
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
}

// checkDamageListed checks the damage listed: once per slot, matching
// ErrCorrupt, its files kept untouched; but a replica whose newest signature
// record is damaged loads at the length before it (its files past that
// length are kept, its bitfield cut back), listed until a peer's signature
// replaces the record. It sets damagedSlot and sigDamaged.
func (db *damagedDB) checkDamageListed() {
	res := db.res
	db.damagedSlot = map[int]bool{}
	db.sigDamaged = map[int]bool{}
	for _, d := range db.damaged {
		if db.damagedSlot[d.Slot] {
			res.bad("slot %d is listed twice in Damaged", d.Slot)
		}
		if !errors.Is(d.Err, ErrCorrupt) && !(db.dc.foreign && errors.Is(d.Err, ErrKeyMismatch)) {
			res.bad("damage %v does not match ErrCorrupt", d)
		}
		if isSigDamage(d) && db.c.Feed(d.Key) != nil {
			if db.c.Feed(d.Key).Writable() {
				res.bad("writer %d loaded with its signature record listed as damaged: %v", d.Slot, d)
			}
			db.sigDamaged[d.Slot] = true
			continue
		}
		db.damagedSlot[d.Slot] = true
		prefix := feedPrefix(d.Slot)
		for name, b := range db.before {
			if now, _ := db.s.fileBytes(name); strings.HasPrefix(name, prefix) && !bytes.Equal(now, b) {
				res.bad("%s of damaged slot %d was changed by opening (%d bytes before, %d after)", name, d.Slot, len(b), len(now))
			}
		}
	}
}

// checkOnError checks that OnError received what Damaged lists, and the
// damage that opening worked around, each with a repair of that file: a
// damaged signature record (a writer signed its length again), and damage
// in the zeros past a journal's records (the journal written anew).
func (db *damagedDB) checkOnError() {
	res := db.res
	healed := 0
	for _, err := range db.reported {
		var d Damage
		switch {
		case !errors.As(err, &d):
			res.bad("OnError received %v, which is no Damage", err)
		case db.damagedSlot[d.Slot] || db.sigDamaged[d.Slot]:
		case isSigDamage(d) && len(repairOf(db.repairs, feedPrefix(d.Slot)+fileSignatures, "damage, not a torn write")) == 1:
			healed++
		case isDamageIn(d, fileJournal) && len(repairOf(db.repairs, feedPrefix(d.Slot)+fileJournal, "damage, not a torn write")) == 1:
			healed++
		default:
			res.bad("OnError received %v, which Damaged does not list", err)
		}
	}
	if len(db.reported) != len(db.damaged)+healed {
		res.bad("OnError received %d errors, Damaged lists %d: %v / %v", len(db.reported), len(db.damaged), db.reported, db.damaged)
	}
}

// checkFeedsKnown checks that every feed loaded is one of the fixture's,
// from its own place, and listed once.
func (db *damagedDB) checkFeedsKnown() {
	res := db.res
	loaded := map[string]bool{}
	for _, f := range db.c.Feeds() {
		known := false
		for _, d := range db.fx.feeds {
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
}

// checkEachFeed checks that each fixture feed either loaded, with what it
// acknowledged (see checkLoadedFeed), every present entry reading back, and a
// writer under its name, or is listed as damaged (see checkLostWriter), or is
// the empty newest feed taken for a torn creation.
func (db *damagedDB) checkEachFeed(ctx context.Context) {
	res, c, dc := db.res, db.c, db.dc
	for _, d := range db.fx.feeds {
		f := c.Feed(d.key)
		if f == nil {
			switch {
			case db.damagedSlot[d.slot]:
				if d.name != "" {
					checkLostWriter(res, db.fx, d, c, db.damaged)
				}
			case d.length == 0 && d.slot == len(db.fx.feeds)-1 && dc.touched[fileManifest]:
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
		if db.damagedSlot[d.slot] {
			res.bad("feed %d (%x) loaded and is listed in Damaged", d.slot, d.key[:4])
		}
		checkLoadedFeed(res, d, f, db.repairs, db.sigDamaged[d.slot])
		if d.name != "" && dc.inPlace && dc.touched[d.prefix()+fileSignatures] && f.Len() < d.length {
			res.bad("writer %d lost acknowledged entries to damage in its signatures file: length %d, %d acknowledged", d.slot, f.Len(), d.length)
		}
		readBack(ctx, res, d, d.values, f, dc, "after open")
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
}

// checkDamagedSlotsUnchanged checks that the files of each slot listed as
// damaged are still as they were before opening, unless the damage is a
// loaded replica's signature record.
func (db *damagedDB) checkDamagedSlotsUnchanged() {
	for _, d := range db.damaged {
		prefix := feedPrefix(d.Slot)
		for name, b := range db.before {
			if now, _ := db.s.fileBytes(name); strings.HasPrefix(name, prefix) && !bytes.Equal(now, b) && !db.sigDamaged[d.Slot] {
				db.res.bad("%s of damaged slot %d was changed after opening", name, d.Slot)
			}
		}
	}
}

// useAfterDamage checks that the database still works: each writer appends,
// each replica learns its writer's length from a proof of no block (its held
// entries are kept as they are). It records each feed's length, the entries
// it holds and the writer's values for checkReopen.
func (db *damagedDB) useAfterDamage(ctx context.Context) {
	res := db.res
	db.lengths = map[int]uint64{}
	db.held = map[int][]bool{}
	db.values = map[int][][]byte{}
	for _, d := range db.fx.feeds {
		f := db.c.Feed(d.key)
		if f == nil {
			continue
		}
		db.values[d.slot] = d.values
		if d.name != "" {
			v := []byte(d.name + " after damage")
			db.values[d.slot] = append(slices.Clone(d.values[:f.Len()]), v)
			seq, err := f.Append(v)
			if err != nil {
				res.bad("writer %q: append after open: %v", d.name, err)
				continue
			}
			if got, err := f.Get(ctx, seq); err != nil || !bytes.Equal(got, v) {
				res.bad("writer %q: appended entry %d reads %q, %v", d.name, seq, got, err)
			}
		} else if err := f.Put(d.lengthProof); err != nil && !damageTouched(d, db.dc) {
			res.bad("replica %d: put of its writer's length: %v", d.slot, err)
		}
		db.lengths[d.slot] = f.Len()
		db.held[d.slot] = make([]bool, f.Len())
		for i := range db.held[d.slot] {
			db.held[d.slot][i] = f.Has(uint64(i))
		}
	}
}

// checkSigDamageHealed checks that a replica's damaged signature record was
// replaced by its writer's (the proof of its length reaches the length it
// had lost).
func (db *damagedDB) checkSigDamageHealed() {
	for _, d := range db.c.Damaged() {
		if isSigDamage(d) && db.c.Feed(d.Key) != nil {
			db.res.bad("damaged signature record still listed after the writer's length was put: %v", d)
		}
	}
}

// checkReopen reopens the closed database and checks that it is as it was
// left: nothing more to repair, the same damaged slots, each feed at the
// length useAfterDamage left with every entry it held still present and
// reading back. Then each replica takes its writer's proof of every entry
// and must hold and read them all.
func (db *damagedDB) checkReopen(ctx context.Context) {
	res, dc := db.res, db.dc
	var col2 damageCollector
	c2, err := New(db.s, col2.options())
	if err != nil {
		res.bad("reopen after repair: %v", err)
		return
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
	for slot := range db.damagedSlot {
		wantSlots = append(wantSlots, slot)
	}
	sort.Ints(slots)
	sort.Ints(wantSlots)
	if !slices.Equal(slots, wantSlots) {
		res.bad("reopen lists damaged slots %v, the first open %v", slots, wantSlots)
	}
	for _, d := range db.fx.feeds {
		f := c2.Feed(d.key)
		length, ok := db.lengths[d.slot]
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
		for i, h := range db.held[d.slot] {
			if h && !f.Has(uint64(i)) {
				res.bad("feed %d: entry %d present before the reopen is not after", d.slot, i)
			}
		}
		if d.name != "" {
			readBack(ctx, res, d, db.values[d.slot], f, dc, "after reopen")
			continue
		}
		readBack(ctx, res, d, d.values, f, dc, "after reopen, before the full proof")
		if err := f.Put(d.fullProof); err != nil {
			if !damageTouched(d, dc) {
				res.bad("replica %d: put of every entry after reopen: %v", d.slot, err)
			}
			continue
		}
		if f.Len() != d.length || f.Downloaded() != d.length {
			res.bad("replica %d: after the full proof length %d, downloaded %d, want %d", d.slot, f.Len(), f.Downloaded(), d.length)
		}
		readBack(ctx, res, d, d.values, f, dc, "after the full proof")
	}
}

// isSigDamage reports whether d is damage in the signatures file of its
// feed, which a loaded feed may list (see recoverDamaged).
func isSigDamage(d Damage) bool { return isDamageIn(d, fileSignatures) }

// isDamageIn reports whether d is damage to file of its feed, outside its
// entries.
func isDamageIn(d Damage, file string) bool {
	var ce *CorruptError
	return !d.Entry && errors.As(d.Err, &ce) && ce.File == feedPrefix(d.Slot)+file
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
