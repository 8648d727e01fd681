package kappa

import (
	"errors"
	"fmt"
	"io"
)

// loadBitfield reads a replica's bitfield pages below length. A page whose
// checksum fails, or that is missing, is rebuilt from the tree and the data
// (each entry whose leaf is stored and whose bytes match it is held), and
// written back: the repair is reported.
func (f *Feed) loadBitfield(length uint64) error {
	size, err := f.fbits().Size()
	if err != nil {
		return err
	}
	pages := bitPages(length)
	inFile := uint64(max(size-headerSize, 0)) / bitPageSize
	buf := make([]byte, pages*bitPageSize)
	if _, err := f.fbits().ReadAt(buf, headerSize); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	bits := make([]byte, pages*bitPageBytes)
	var rebuilt []uint64
	reasons := map[uint64]string{}
	for p := range pages {
		rec := buf[p*bitPageSize : (p+1)*bitPageSize]
		if p < inFile && bitPageValid(p, rec) {
			copy(bits[p*bitPageBytes:], rec[:bitPageBytes])
			continue
		}
		if err := f.rebuildBitPage(p, length, bits[p*bitPageBytes:(p+1)*bitPageBytes]); err != nil {
			return err
		}
		rebuilt = append(rebuilt, p)
		reasons[p] = "page failed its checksum; rebuilt from the tree and data"
		if p >= inFile {
			reasons[p] = "page missing; rebuilt from the tree and data"
		}
	}
	// Bits at or past length in the last page were set by a Put whose
	// signature record was torn away (or cut as damage), and the tree and
	// data under them were cut: cleared, so that a later, longer length
	// does not find them present.
	if k := length % bitPageEntries; k != 0 && reasons[pages-1] == "" {
		last := bits[(pages-1)*bitPageBytes : pages*bitPageBytes]
		if last[k/8]>>(k%8) != 0 || !isZero(last[k/8+1:]) {
			rebuilt = append(rebuilt, pages-1)
			reasons[pages-1] = fmt.Sprintf("entries past length %d marked present; cleared", length)
		}
	}
	// The newest held entry must have its leaf and its bytes, else the
	// bits claim entries that a torn Put never stored or whose tree or data
	// was cut: the page is rebuilt, and the check repeats on the newest
	// entry left (a rebuilt page holds only entries that check).
	dataSize, err := f.fdata().Size()
	if err != nil {
		return err
	}
	for {
		h, ok := lastHeld(bits, length)
		if !ok {
			break
		}
		n, err := f.readNode(2 * h)
		if err == nil && dataPos(h, n.Offset)+dataFrame+int64(n.Size) <= dataSize {
			break
		}
		if err != nil && !errors.Is(err, errNoNode) && !errors.Is(err, ErrCorrupt) {
			return err
		}
		p := h / bitPageEntries
		if err := f.rebuildBitPage(p, length, bits[p*bitPageBytes:(p+1)*bitPageBytes]); err != nil {
			return err
		}
		if reasons[p] == "" {
			rebuilt = append(rebuilt, p)
		}
		reasons[p] = fmt.Sprintf("entry %d is marked present but its leaf or bytes are missing; rebuilt from the tree and data", h)
	}
	f.have.fromBytes(bits, length)
	f.bitPages = pages
	why := fmt.Sprintf("bitfield pages past length %d", length)
	if err := f.truncate(f.fbits(), fileBitfield, headerSize+int64(pages)*bitPageSize, why); err != nil {
		return err
	}
	for _, p := range rebuilt {
		rec := f.bitPage(p)
		off := headerSize + int64(p)*bitPageSize
		if !f.cfg.readOnly { // read-only: reported, and held in memory only
			if _, err := f.fbits().WriteAt(rec, off); err != nil {
				return err
			}
		}
		f.repaired(Repair{File: f.name + fileBitfield, From: size, To: max(size, off+bitPageSize), Reason: reasons[p]})
	}
	if len(rebuilt) > 0 && !f.cfg.noSync && !f.cfg.readOnly {
		return f.fbits().Sync()
	}
	return nil
}

// lastHeld returns the highest entry below length whose bit is set in bits.
func lastHeld(bits []byte, length uint64) (uint64, bool) {
	for i := min(uint64(len(bits)), (length+7)/8); i > 0; i-- {
		for k := uint64(7); k < 8; k-- {
			if seq := (i-1)*8 + k; seq < length && bits[i-1]&(1<<k) != 0 {
				return seq, true
			}
		}
	}
	return 0, false
}

// bitPages returns how many bitfield pages cover length entries.
func bitPages(length uint64) uint64 { return (length + bitPageEntries - 1) / bitPageEntries }

// bitPage encodes bitfield page p from the set of held entries.
func (f *Feed) bitPage(p uint64) []byte {
	rec := make([]byte, bitPageSize)
	copy(rec, f.have.bytesFor(p*bitPageEntries, (p+1)*bitPageEntries))
	encodeBitPage(rec, p)
	return rec
}

// rebuildBitPage sets in dst the bits of page p's entries below length that
// the feed holds: those whose leaf is stored and whose data matches it.
func (f *Feed) rebuildBitPage(p, length uint64, dst []byte) error {
	clear(dst)
	lo := p * bitPageEntries
	hi := min(lo+bitPageEntries, length)
	span, err := f.readNodeSpan(2*lo, 2*hi-1)
	if err != nil {
		return err
	}
	h := newLeafHasher()
	for seq := lo; seq < hi; seq++ {
		n, err := span.node(f, 2*seq)
		if err != nil {
			continue // not stored, or damaged: not held
		}
		pos := dataPos(seq, n.Offset)
		rec := make([]byte, dataFrame+n.Size)
		if f.readData(rec, pos) != nil {
			continue
		}
		if _, err := f.leafValue(h, rec, &n, pos); err != nil {
			continue
		}
		dst[(seq-lo)/8] |= 1 << (seq % 8)
	}
	return nil
}

// Has reports whether the entry seq is stored locally. An entry a read
// found damaged is not, until a verified copy replaces it.
func (f *Feed) Has(seq uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.hasLocked(seq) && !f.isDamagedLocked(seq)
}

// HasRange reports whether every entry in [start, end) is stored locally
// (and not found damaged).
func (f *Feed) HasRange(start, end uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.hasRangeLocked(start, end) && f.nextDamagedLocked(start) >= end
}

// Downloaded returns how many entries below Len are stored locally, not
// counting those found damaged.
func (f *Feed) Downloaded() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	bad := f.countDamagedLocked(f.length)
	if f.have == nil {
		return f.length - bad
	}
	return f.have.count() - bad
}

// NextMissing returns the first entry at or after seq, below Len, that is
// not stored locally (or was found damaged), or Len if there is none (seq
// itself for a seq past Len).
func (f *Feed) NextMissing(seq uint64) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if seq >= f.length {
		return max(seq, f.length)
	}
	m := f.length
	if f.have != nil {
		m = f.have.nextClear(seq, f.length)
	}
	return min(m, f.nextDamagedLocked(seq))
}

// presentSpans returns the runs of entries below end (and the length) that
// are stored locally and not found damaged, in order, read under one lock.
func (f *Feed) presentSpans(end uint64) []span {
	f.mu.RLock()
	defer f.mu.RUnlock()
	end = min(end, f.length)
	if f.have == nil {
		if end == 0 {
			return nil
		}
		return f.withoutDamagedLocked([]span{{0, end}})
	}
	var out []span
	for s := f.have.nextSet(0, end); s < end; {
		e := f.have.nextClear(s, end)
		out = append(out, span{s, e})
		s = f.have.nextSet(e, end)
	}
	return f.withoutDamagedLocked(out)
}

// NextPresent returns the first entry at or after seq that is stored
// locally (and not found damaged), or Len if there is none.
func (f *Feed) NextPresent(seq uint64) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for seq < f.length {
		if f.have != nil {
			seq = f.have.nextSet(seq, f.length)
		}
		if seq >= f.length || !f.isDamagedLocked(seq) {
			break
		}
		seq++
	}
	return min(seq, f.length)
}

func (f *Feed) hasLocked(seq uint64) bool {
	if seq >= f.length {
		return false
	}
	return f.have == nil || f.have.get(seq)
}

func (f *Feed) hasRangeLocked(start, end uint64) bool {
	if end > f.length || start > end {
		return false
	}
	return f.have == nil || f.have.nextClear(start, end) == end
}
