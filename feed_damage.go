package kappa

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Damaged entries.
//
// An entry is intact when its record's length matches its leaf and its
// value hashes to its leaf, whatever the record's CRC says: the tree is
// what a value is checked against (a stale CRC over an intact value is
// rewritten, see rewriteChecksum). An entry that is not intact, or whose
// leaf is missing or fails its own CRC, is damaged. A read that finds it so
// marks it in Feed.damaged and reports it once to the feed's Core; from
// then on the entry is not present for views and peers (Has, NextPresent,
// NextMissing, Downloaded and the ranges sent in a have leave it out), so
// a view skips it, Ready does not wait for it, and a replica wants it from
// its peers. A verified copy stored by Put heals it. The marks are not
// stored: after a restart the next read finds the damage again.

// entryDamage is the error of a read that found entry seq damaged. It
// wraps the *CorruptError that says where.
type entryDamage struct {
	seq uint64
	err *CorruptError
}

func (e *entryDamage) Error() string { return e.err.Error() }
func (e *entryDamage) Unwrap() error { return e.err }

// entryDamaged marks entry seq damaged (see markDamaged) and returns the
// error a read that found it returns.
func (f *Feed) entryDamaged(seq uint64, ce *CorruptError) error {
	f.markDamaged(seq, ce)
	return &entryDamage{seq: seq, err: ce}
}

// markDamaged records that the held entry seq is damaged, as ce says, and
// reports it the first time. Subscribers are signalled: the entry is no
// longer present. The entry is checked again first, while no Put can
// rewrite it: one may have healed it since the caller read it.
func (f *Feed) markDamaged(seq uint64, ce *CorruptError) {
	f.mu.RLock()
	skip := f.closed || f.isDamagedLocked(seq) || !f.hasLocked(seq)
	f.mu.RUnlock()
	if skip {
		return
	}
	f.writeMu.Lock()
	if f.entryIntact(seq) {
		f.writeMu.Unlock()
		return
	}
	f.mu.Lock()
	i, found := slices.BinarySearch(f.damaged, seq)
	if f.closed || found {
		f.mu.Unlock()
		f.writeMu.Unlock()
		return
	}
	f.damaged = slices.Insert(f.damaged, i, seq)
	f.notifyLocked()
	f.mu.Unlock()
	f.writeMu.Unlock()
	f.reportDamage(Damage{Entry: true, Seq: seq, Err: ce})
}

// entryIntact reports whether entry seq passes the one rule: its leaf is
// stored and intact, its record has the leaf's size and its value hashes
// to the leaf.
func (f *Feed) entryIntact(seq uint64) bool {
	n, err := f.readNode(2 * seq)
	if err != nil {
		return false
	}
	rec := make([]byte, dataFrame+n.Size)
	pos := dataPos(seq, n.Offset)
	if f.readData(rec, pos) != nil {
		return false
	}
	_, err = f.leafValue(newLeafHasher(), rec, &n, pos)
	return err == nil
}

// heldCount returns how many entries below Len are stored locally,
// damaged or not.
func (f *Feed) heldCount() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.have == nil {
		return f.length
	}
	return f.have.count()
}

// clearDamagedLocked removes the marks of the entries in [start, end) and
// returns them. Called with f.mu held for writing.
func (f *Feed) clearDamagedLocked(start, end uint64) []uint64 {
	if len(f.damaged) == 0 {
		return nil
	}
	i, _ := slices.BinarySearch(f.damaged, start)
	j, _ := slices.BinarySearch(f.damaged, end)
	if i == j {
		return nil
	}
	healed := slices.Clone(f.damaged[i:j])
	f.damaged = slices.Delete(f.damaged, i, j)
	if len(f.damaged) == 0 {
		f.damaged = nil // an idle feed stays small
	}
	return healed
}

// reportHealedEntries reports the entries a Put rewrote from a verified
// copy as healed. Called without locks.
func (f *Feed) reportHealedEntries(healed []uint64) {
	if len(healed) == 0 {
		return
	}
	size, _ := f.fdata().Size()
	for _, seq := range healed {
		f.reportHealed(entryMatch(seq), Repair{File: f.name + fileData, From: size, To: size,
			Reason: fmt.Sprintf("entry %d: damaged record rewritten from a verified copy", seq)})
	}
}

// entryMatch selects the damage of entry seq.
func entryMatch(seq uint64) func(Damage) bool {
	return func(d Damage) bool { return d.Entry && d.Seq == seq }
}

// isDamagedLocked reports whether entry seq is marked damaged. Called with
// f.mu held.
func (f *Feed) isDamagedLocked(seq uint64) bool {
	_, found := slices.BinarySearch(f.damaged, seq)
	return found
}

// nextDamagedLocked returns the first entry at or after seq marked
// damaged, or math.MaxUint64. Called with f.mu held.
func (f *Feed) nextDamagedLocked(seq uint64) uint64 {
	i, _ := slices.BinarySearch(f.damaged, seq)
	if i < len(f.damaged) {
		return f.damaged[i]
	}
	return math.MaxUint64
}

// countDamagedLocked counts the entries below end marked damaged.
func (f *Feed) countDamagedLocked(end uint64) uint64 {
	i, _ := slices.BinarySearch(f.damaged, end)
	return uint64(i)
}

// withoutDamagedLocked returns spans less the entries marked damaged; the
// same slice when none lies in them. Called with f.mu held.
func (f *Feed) withoutDamagedLocked(spans []span) []span {
	if len(f.damaged) == 0 {
		return spans
	}
	var out []span
	for _, s := range spans {
		for a := s.start; a < s.end; {
			d := min(f.nextDamagedLocked(a), s.end)
			if a < d {
				out = append(out, span{a, d})
			}
			a = d + 1
		}
	}
	return out
}

// withoutDamaged is withoutDamagedLocked under f's lock.
func (f *Feed) withoutDamaged(spans []span) []span {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.withoutDamagedLocked(spans)
}

// damagedSpans returns the entries marked damaged, as runs of one.
func (f *Feed) damagedSpans() []span {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]span, 0, len(f.damaged))
	for _, seq := range f.damaged {
		out = append(out, span{seq, seq + 1})
	}
	return out
}

// hasDamage reports whether some entry is marked damaged.
func (f *Feed) hasDamage() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.damaged) > 0
}

// rewriteChecksum rewrites the CRC of entry seq's record, found at pos,
// whose value v was checked against its leaf: the value is intact and the
// CRC stale. The rewrite is synced (unless NoSync) and reported as a
// repair. A failure leaves the stale CRC, which reads tolerate.
func (f *Feed) rewriteChecksum(seq uint64, pos int64, v []byte) {
	var l, crc [dataLenLen]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(v)))
	binary.BigEndian.PutUint32(crc[:], dataChecksumParts(seq, l, v))
	if f.cfg.readOnly {
		// Reported, not made.
		size, _ := f.fdata().Size()
		f.reportHealed(entryMatch(seq), Repair{File: f.name + fileData, From: size, To: size,
			Reason: fmt.Sprintf("entry %d: stale record checksum, not rewritten (read-only); the value matches its leaf hash", seq)})
		return
	}
	f.writeMu.Lock()
	f.mu.RLock()
	closed := f.closed
	f.mu.RUnlock()
	if closed || f.failedWriteLocked() != nil {
		f.writeMu.Unlock()
		return
	}
	if _, err := f.fdata().WriteAt(crc[:], pos+dataLenLen+int64(len(v))); err != nil {
		f.writeMu.Unlock()
		return
	}
	if !f.cfg.noSync {
		if err := f.fdata().Sync(); err != nil {
			f.scratchWriteLocked().failed = err
			f.writeMu.Unlock()
			return
		}
	}
	size, _ := f.fdata().Size()
	f.writeMu.Unlock()
	f.reportHealed(entryMatch(seq), Repair{File: f.name + fileData, From: size, To: size,
		Reason: fmt.Sprintf("entry %d: stale record checksum rewritten; the value matches its leaf hash", seq)})
}

// reportFixedNodes reports the damaged tree records a Put rewrote from a
// verified proof as repairs, healing the damage reported for them.
func (f *Feed) reportFixedNodes(fixed []*CorruptError) {
	for _, ce := range fixed {
		match := func(d Damage) bool {
			var old *CorruptError
			return !d.Entry && errors.As(d.Err, &old) && old.File == ce.File && old.Offset == ce.Offset
		}
		size, _ := f.ftree().Size()
		f.reportHealed(match, Repair{File: ce.File, From: size, To: size,
			Reason: fmt.Sprintf("damaged tree record at offset %d rewritten from a verified proof", ce.Offset)})
	}
}

// maxServeRetries bounds how often one answer to a peer is tried again
// without an entry that its reads found damaged.
const maxServeRetries = 64

// isDamaged reports whether entry seq is marked damaged.
func (f *Feed) isDamaged(seq uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.isDamagedLocked(seq)
}

// mergeSpans returns the union of a and b, both sorted and disjoint.
func mergeSpans(a, b []span) []span {
	if len(b) == 0 {
		return a
	}
	all := slices.SortedFunc(slices.Values(append(slices.Clone(a), b...)), func(x, y span) int { return cmpU64(x.start, y.start) })
	out := all[:0]
	for _, s := range all {
		if n := len(out); n > 0 && out[n-1].end >= s.start {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}
