package kappa

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Recovery from a damaged newest signature record. See recover (below)
// for the walk back over the records, and doc/FORMAT.md, "Recovery on
// open", for the rule written down.

// tornSector is the disk sector size assumed by sigRecordTorn and
// journalTorn: a write that a power loss interrupts lands whole sectors,
// or none of one.
const tornSector = 512

// damagedSig is a feed's newest signature record that fails its checksum
// where no crash could have torn it (see sigRecordTorn), and the damage
// reported for it.
type damagedSig struct {
	number   uint64              // its number: 1 for the file's first record
	off      int64               // its offset in the signatures file
	rec      [sigRecordSize]byte // its bytes, as read
	fileSize int64               // the signatures file's size when opened
	lost     uint64              // a replica's: the length a Put must reach to replace it

	damage   Damage // what is reported; its Err names the file and offset
	healed   bool   // opening wrote the record again: the damage goes to OnError only
	reported bool   // handed to the feed's Core
}

// sigRecordTorn reports whether the newest whole signature record, rec,
// read at off from a signatures file of size bytes and failing its
// checksum, could be a write torn by a crash of a feed written with sync
// on. It could if it ends the file and its bytes are zero from a sector
// boundary on (all of them, or those from a multiple of tornSector inside
// it): a write that landed in part, on a file system that extended the
// file before the bytes landed. A file that ends inside a record holds no
// whole newest record (that partial record is torn and cut). A record
// followed by more bytes was synced before the next write began: its
// checksum failing is damage.
func sigRecordTorn(rec []byte, off, size int64) bool {
	if size != off+sigRecordSize {
		return false
	}
	if isZero(rec) {
		return true
	}
	for b := (off/tornSector + 1) * tornSector; b < off+sigRecordSize; b += tornSector {
		if isZero(rec[b-off:]) {
			return true
		}
	}
	return false
}

// recoverDamaged loads a feed whose newest signature record, bad, is
// damaged, not torn. length, roots and sig are the newest record before it
// that verifies (zero and nil if none).
//
// If the record's signature still verifies over the roots of the length it
// names, only its checksum or flags were hit: it is written again, and the
// feed loads at that length. Otherwise a writer signs its length again (see
// resignLength): nothing it acknowledged is lost. A replica, which cannot
// sign, loads at length and keeps its tree and data past it, listing the
// damage until a Put of a peer's signature replaces the record (see
// sigReplacedWriteLocked). Either way the damage is reported.
func (f *Feed) recoverDamaged(bad *damagedSig, length uint64, roots []storedNode, sig []byte) error {
	file := f.name + fileSignatures
	claimed := binary.BigEndian.Uint64(bad.rec[:sigSigOff])
	if claimed > length && claimed <= maxTreeLength {
		s := bad.rec[sigSigOff:sigCRCOff]
		if r, err := f.readRoots(claimed); err == nil && verifyRoots(f.key, treeHash(r), claimed, s) {
			s = bytes.Clone(s)
			if err := f.checkTail(bad.number, claimed, true); err != nil {
				return err
			}
			why := fmt.Sprintf("signature record %d failed its checksum: damage, not a torn write; its signature of length %d verifies, and the record was written again", bad.number, claimed)
			if err := f.rewriteSig(bad, claimed, s, why); err != nil {
				return err
			}
			bad.healed = true
			bad.damage.Err = &CorruptError{File: file, Offset: bad.off,
				Reason: fmt.Sprintf("the newest signature record (number %d) failed its checksum, which no crash explains; its signature verifies, and the record was written again", bad.number)}
			f.sigDamage = bad
			return f.holdSig(f.load(claimed, r, s, bad.off+sigRecordSize), s)
		}
	}
	if f.writable {
		newLen, newRoots, err := f.resignLength(bad, length, roots)
		if err != nil {
			return err
		}
		if err := f.checkTail(bad.number, newLen, true); err != nil {
			return err
		}
		secret, err := f.secretKeyWriteLocked()
		if err != nil {
			return err
		}
		s := signRoots(secret, treeHash(newRoots), newLen)
		why := fmt.Sprintf("signature record %d failed its checksum: damage, not a torn write; length %d signed again after entries %d to %d were checked against the tree and data", bad.number, newLen, length, newLen-1)
		if err := f.rewriteSig(bad, newLen, s, why); err != nil {
			return err
		}
		bad.healed = true
		bad.damage.Err = &CorruptError{File: file, Offset: bad.off,
			Reason: fmt.Sprintf("the newest signature record (number %d) failed its checksum, which no crash explains; the writer signed length %d again", bad.number, newLen)}
		f.sigDamage = bad
		return f.holdSig(f.load(newLen, newRoots, s, bad.off+sigRecordSize), s)
	}

	// A replica: back to length, keeping what lies past it.
	bad.lost = length + 1
	if claimed > length && claimed <= maxTreeLength {
		if _, err := f.readRoots(claimed); err == nil {
			bad.lost = claimed // the length field looks intact: its roots are stored
		}
	}
	bad.damage.Err = &CorruptError{File: file, Offset: bad.off,
		Reason: fmt.Sprintf("the newest signature record (number %d) failed its checksum, which no crash explains: the feed is back at length %d, and its entries past it are kept unverified until a peer's signature of length %d or more replaces the record", bad.number, length, bad.lost)}
	f.sigDamage = bad
	f.length, f.sigsEnd = length, bad.off
	for _, r := range roots {
		f.byteLen += r.Size
	}
	if sig != nil {
		// Held: the record before sigsEnd may be one that was skipped
		// (written without sync, not verifying), not the one of length.
		f.signed = &signedState{sig: sig}
	}
	why := "torn bytes past the damaged newest signature record"
	if err := f.truncate(f.fsigs(), fileSignatures, bad.off+sigRecordSize, why); err != nil {
		return err
	}
	return f.loadBitfield(length)
}

// resignLength finds the length a writer's damaged newest record signed,
// and checks the tree and data it covers, from length (the newest
// verifying record's, whose roots are roots) on: the leaves whose ordinal
// is the record's number, from entry length on, each with a data record
// of its size whose value hashes to it, lying end to end. Their parents,
// computed from roots and the leaves, must be the stored ones. It returns
// the length and its roots. Anything else is ErrCorrupt: nothing is cut.
func (f *Feed) resignLength(bad *damagedSig, length uint64, roots []storedNode) (uint64, []storedNode, error) {
	corrupt := func(file string, off int64, format string, args ...any) error {
		return &CorruptError{File: f.name + file, Offset: off, Reason: fmt.Sprintf("the newest signature record is damaged, and its length cannot be signed again: "+format, args...)}
	}
	size, err := f.ftree().Size()
	if err != nil {
		return 0, nil, err
	}
	nodes := uint64(max(size-headerSize, 0)) / nodeSize
	newRoots := append(make([]storedNode, 0, len(roots)+1), roots...)
	var byteOff uint64
	for _, r := range roots {
		byteOff += r.Size
	}
	h := newLeafHasher()
	seq := length
	const chunk = 4096 // leaves read at once
	var span *nodeSpan
	for ; 2*seq < nodes; seq++ {
		i := 2 * seq
		if span == nil || i >= span.lo+uint64(len(span.buf))/nodeSize {
			if span, err = f.readNodeSpan(i, min(i+2*chunk, nodes)); err != nil {
				return 0, nil, err
			}
		}
		rec := span.buf[(i-span.lo)*nodeSize : (i-span.lo+1)*nodeSize]
		off := headerSize + int64(i)*nodeSize
		present, valid := nodeRecordState(i, rec)
		if present && valid && nodeOrdinal(rec) == uint32(bad.number) {
			n, err := decodeNode(i, rec, f.name, off)
			if err != nil {
				return 0, nil, err
			}
			if n.Offset != byteOff || n.Size > maxBlockBytes {
				return 0, nil, corrupt(fileTree, off, "entry %d's leaf says %d bytes at byte %d, the entries before end at byte %d", seq, n.Size, n.Offset, byteOff)
			}
			pos := dataPos(seq, n.Offset)
			data := make([]byte, dataFrame+n.Size)
			if err := f.readData(data, pos); err != nil {
				return 0, nil, err
			}
			if _, err := f.leafValue(h, data, &n, pos); err != nil {
				return 0, nil, err
			}
			byteOff += n.Size
			cur := n
			for len(newRoots) > 0 {
				left := &newRoots[len(newRoots)-1]
				if flatDepth(left.Index) != flatDepth(cur.Index) {
					break
				}
				p := storedNode{Node{Index: flatParent(cur.Index), Hash: h.parent(&left.Node, &cur.Node), Size: left.Size + cur.Size}, left.Offset}
				stored, err := f.readNode(p.Index)
				if err != nil && !errors.Is(err, errNoNode) {
					return 0, nil, err
				}
				if err != nil || stored.Hash != p.Hash || stored.Size != p.Size || stored.Offset != p.Offset {
					return 0, nil, corrupt(fileTree, headerSize+int64(p.Index)*nodeSize, "node %d is not the parent of the entries under it", p.Index)
				}
				newRoots = newRoots[:len(newRoots)-1]
				cur = p
			}
			newRoots = append(newRoots, cur)
			continue
		}
		// The record's leaves end here: past them the tree may hold
		// the leaves of the next append (which had not signed), or
		// nothing. A damaged leaf leaves the end unknown.
		if present && !(valid && nodeOrdinal(rec) == uint32(bad.number+1)) {
			return 0, nil, corrupt(fileTree, off, "entry %d's leaf is damaged or of another append, so the signed length is unknown", seq)
		}
		break
	}
	if seq == length {
		return 0, nil, corrupt(fileTree, headerSize+int64(2*length)*nodeSize, "the tree holds no entry of append %d past length %d", bad.number, length)
	}
	return seq, newRoots, nil
}

// rewriteSig writes the signature record bad again, in place, for length
// and sig (synced: the tree and data it covers are synced first), and
// reports the repair.
func (f *Feed) rewriteSig(bad *damagedSig, length uint64, sig []byte, why string) error {
	if f.cfg.readOnly {
		// Reported, not made: the feed holds the signature in memory
		// (see holdSig).
		f.repaired(Repair{File: f.name + fileSignatures, From: bad.fileSize, To: bad.fileSize, Reason: why})
		return nil
	}
	for _, file := range []File{f.fdata(), f.ftree()} {
		if err := file.Sync(); err != nil {
			return err
		}
	}
	var rec [sigRecordSize]byte
	encodeSigRecord(rec[:], length, sig, sigSynced)
	if _, err := f.fsigs().WriteAt(rec[:], bad.off); err != nil {
		return err
	}
	if err := f.fsigs().Sync(); err != nil {
		return err
	}
	f.repaired(Repair{File: f.name + fileSignatures, From: bad.fileSize, To: bad.fileSize, Reason: why})
	return nil
}

// holdSig keeps sig, the signature of the feed's length, in memory when
// the feed is read-only: the record on disk was not rewritten. It passes
// on err, load's result.
func (f *Feed) holdSig(err error, sig []byte) error {
	if err == nil && f.cfg.readOnly {
		f.signed = &signedState{sig: sig}
	}
	return err
}

// sigReplacedWriteLocked is called by Put after it wrote the signature
// record of length: if that replaced a damaged record that recovery found
// (the record was written in its place) and reaches the length it had lost,
// the damage is healed. Called under writeMu.
func (f *Feed) sigReplacedWriteLocked(length uint64) {
	bad := f.sigDamage
	if bad == nil || bad.healed || length < bad.lost {
		return
	}
	f.sigDamage = nil
	file := f.name + fileSignatures
	f.reportHealed(func(d Damage) bool {
		var ce *CorruptError
		return !d.Entry && errors.As(d.Err, &ce) && ce.File == file && ce.Offset == bad.off
	}, Repair{File: file, From: bad.off + sigRecordSize, To: f.sigsEnd,
		Reason: fmt.Sprintf("damaged signature record %d replaced by a peer's verified signature of length %d", bad.number, length)})
}

// reportOpenDamage reports the damage that opening f found and worked
// around, once f is added to c: healed damage to Options.OnError, the rest
// also listed by Damaged.
func (c *Core) reportOpenDamage(f *Feed) {
	f.writeMu.Lock()
	jd := f.jrnDamage
	f.jrnDamage = nil
	f.writeMu.Unlock()
	if jd != nil {
		// Healed: the journal was written anew (a read-only open leaves
		// it as it is, and loads what a writable open loads).
		c.report(Damage{Slot: feedSlot(f), Key: f.Key(), Name: f.writer, Err: jd})
	}
	f.writeMu.Lock()
	bad := f.sigDamage
	if bad == nil || bad.reported {
		f.writeMu.Unlock()
		return
	}
	bad.reported = true
	if bad.healed && !f.cfg.readOnly {
		f.sigDamage = nil // a read-only feed did not rewrite the record: Verify skips it
	}
	d := bad.damage
	f.writeMu.Unlock()
	if !bad.healed {
		c.feedDamaged(f, d)
		return
	}
	d.Slot, d.Key, d.Name = feedSlot(f), f.Key(), f.writer
	c.report(d)
}

// maxTornRecords bounds how far back Open looks for a signature that
// verifies, so that opening never scans a whole log.
const maxTornRecords = 64

// truncate cuts file name to size if it is longer, and reports the repair.
// A read-only feed reports it and leaves the file as it is: what it reads
// is bounded by the state loaded, not by the file's size.
func (f *Feed) truncate(file File, name string, size int64, why string) error {
	old, err := file.Size()
	if err != nil || old <= size {
		return err
	}
	if f.cfg.readOnly {
		f.repaired(Repair{File: f.name + name, From: old, To: size, Reason: why})
		return nil
	}
	if err := file.Truncate(size); err != nil {
		return err
	}
	f.repaired(Repair{File: f.name + name, From: old, To: size, Reason: why})
	return nil
}

func (f *Feed) repaired(r Repair) {
	if f.onRepair != nil {
		f.onRepair(r)
	}
}

// recover finds the newest signature record that verifies against the
// tree, cuts everything newer, and loads the state it signs. The first
// durable records are durable by the writer's journal (see replayed):
// none of them fails its checksum as a torn write would, only as damage.
//
// With sync on, a signature record is written only after the one before it
// was durable, and an append's data and tree only after the record before
// it: so at most the newest record can be torn, and the tree past the
// signed length holds the leaves of one append at most. Anything else is
// damage, reported as ErrCorrupt and left as it is; but a newest record
// that fails its checksum though no crash could have torn it (see
// sigRecordTorn) is damage that recovery works around: see recoverDamaged.
func (f *Feed) recover(durable uint64) error {
	size, err := f.fsigs().Size()
	if err != nil {
		return err
	}
	n := (size - headerSize) / sigRecordSize
	var bad *damagedSig // the newest record, if damaged rather than torn
	for k := n - 1; k >= 0 && k >= n-maxTornRecords; k-- {
		var rec [sigRecordSize]byte
		off := headerSize + k*sigRecordSize
		if _, err := f.fsigs().ReadAt(rec[:], off); err != nil {
			return err
		}
		length, sig, flags, ok := decodeSigRecord(rec[:])
		if !ok {
			journaled := uint64(k+1) <= durable
			if (!f.cfg.noSync || journaled) && k < n-1 {
				return &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: "a signature record before the newest is damaged"}
			}
			if !journaled && (f.cfg.noSync || sigRecordTorn(rec[:], off, size)) {
				continue // torn while being written
			}
			// With sync on, a crash cannot explain it: damage, which
			// must not cut what the record covered (see recoverDamaged).
			bad = &damagedSig{number: uint64(k + 1), off: off, rec: rec, fileSize: size}
			continue
		}
		// A journaled record is durable with what it covers: its
		// journal record was replayed, or a checkpoint synced the files
		// before cutting it (see replayJournal).
		synced := flags&(sigSynced|sigJournaled) != 0
		roots, err := f.readRoots(length)
		switch {
		case err == nil && verifyRoots(f.key, treeHash(roots), length, sig):
			if bad != nil {
				return f.recoverDamaged(bad, length, roots, bytes.Clone(sig))
			}
			if err := f.checkTail(uint64(k+1), length, synced && !f.cfg.noSync); err != nil {
				return err
			}
			if err := f.load(length, roots, bytes.Clone(sig), off+sigRecordSize); err != nil {
				return err
			}
			if code := byte(flags & sigCheckedMask >> sigCheckedShift); code == f.cfg.enc.code() {
				f.checked.Store(length)
			}
			if flags&sigPlain != 0 {
				f.plain.Store(length)
			}
			return nil
		case err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, errNoNode):
			return err
		case synced && errors.Is(err, errNoNode):
			return &CorruptError{File: f.name + fileTree, Offset: headerSize, Reason: fmt.Sprintf("a root of the signed length %d is missing", length)}
		case synced && err != nil:
			return err // a damaged root, named by file and offset
		case synced:
			// What this record covers was durable before it was
			// written: a mismatch is damage, not a torn write.
			return &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: fmt.Sprintf("signature for length %d does not verify against the tree", length)}
		}
		// Written without sync: the tree it covers may not have landed.
	}
	if n > 1 {
		// With none of the newest intact the feed was damaged, not torn.
		return &CorruptError{File: f.name + fileSignatures, Offset: headerSize, Reason: "no signature verifies against the tree"}
	}
	if bad != nil {
		return f.recoverDamaged(bad, 0, nil, nil)
	}
	if err := f.checkTail(0, 0, !f.cfg.noSync); err != nil {
		return err
	}
	return f.load(0, nil, nil, headerSize)
}

// checkTail checks, for a writer, that the tree past the signed length
// holds the leaves of one append at most: the one after signature record
// number records. Each leaf of a writer's tree records the number of the
// signature record that covers it. Only with strict (the record was
// synced, and the feed is opened with sync on) is more than one append
// past the record damage; without sync a power loss may lose several.
func (f *Feed) checkTail(records, length uint64, strict bool) error {
	if !f.writable || !strict {
		return nil
	}
	size, err := f.ftree().Size()
	if err != nil {
		return err
	}
	nodes := uint64(max(size-headerSize, 0)) / nodeSize
	if 2*length >= nodes {
		return nil
	}
	last := nodes - 1
	if last%2 == 1 {
		last--
	}
	for _, i := range []uint64{2 * length, last} {
		var rec [nodeSize]byte
		off := headerSize + int64(i)*nodeSize
		if _, err := f.ftree().ReadAt(rec[:], off); err != nil {
			return err
		}
		if present, valid := nodeRecordState(i, rec[:]); !present || !valid {
			continue // part of the torn append
		}
		if ord := nodeOrdinal(rec[:]); ord != 0 && uint64(ord) != records+1 {
			return &CorruptError{File: f.name + fileSignatures, Offset: headerSize + int64(records)*sigRecordSize,
				Reason: fmt.Sprintf("signature records are missing: the tree holds entry %d of append %d, the newest record is number %d", i/2, ord, records)}
		}
	}
	return nil
}

// load installs a recovered state and cuts the files back to it.
func (f *Feed) load(length uint64, roots []storedNode, sig []byte, sigsEnd int64) error {
	// The roots and signature verified here are read again when used:
	// an idle feed does not hold them.
	f.length, f.sigsEnd = length, sigsEnd
	for _, r := range roots {
		f.byteLen += r.Size
	}
	why := fmt.Sprintf("torn tail past length %d, the newest that verifies", length)
	if err := f.truncate(f.fsigs(), fileSignatures, sigsEnd, why); err != nil {
		return err
	}
	treeEnd := int64(headerSize)
	if length > 0 {
		treeEnd += int64(2*length-1) * nodeSize
	}
	if err := f.truncate(f.ftree(), fileTree, treeEnd, why); err != nil {
		return err
	}
	dataEnd := dataPos(length, f.byteLen)
	if err := f.truncate(f.fdata(), fileData, dataEnd, why); err != nil {
		return err
	}
	if f.have == nil {
		if size, err := f.fdata().Size(); err != nil {
			return err
		} else if size < dataEnd {
			return &CorruptError{File: f.name + fileData, Offset: size, Reason: fmt.Sprintf("data ends before the %d bytes the signed tree covers", f.byteLen)}
		}
		return nil
	}
	return f.loadBitfield(length)
}
