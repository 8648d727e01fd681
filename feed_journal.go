package kappa

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
)

// The journal: a writer with sync on makes a small Append durable with one
// fdatasync of one file. The append writes its data records, tree records
// and signature record to their files without syncing them, then appends
// one journal record holding every byte it wrote (file, offset, bytes) and
// syncs the journal only. Recovery replays the journal's intact records
// into the files before anything else (replayJournal). A checkpoint syncs
// data, tree and signatures, and cuts the journal back to one base record
// that says how many signature records the files hold durably
// (checkpointWriteLocked): when the journal passes journalLimit, at Close,
// and after a large append, which takes the synced path (data and tree
// synced, then its signature record) and so makes every journaled write
// before it durable too. doc/FORMAT.md, "journal", is the rule written
// down.

const (
	// journalMaxAppend bounds the data and tree bytes of an append that
	// is journaled: past it, writing the bytes a second time costs about
	// as much as the two fsyncs the journal saves (a disk that fsyncs
	// 4,000 times a second writes some 250 KiB in the time of one), and a
	// large append is written once, synced in place.
	journalMaxAppend = 64 << 10
	// journalLimit is the journal size past which the next journaled
	// append checkpoints first: replay reads at most this much (plus one
	// record), and the checkpoint's five syncs are shared by the hundreds
	// of small appends before it (about 670 of one 100-byte value).
	journalLimit = 256 << 10
	// journalPrealloc is the size a journal is given, in zeros, when it
	// is cut: a record written inside it changes no file size, and its
	// fdatasync writes no metadata (on Linux's file systems, half the
	// cost of one that extends the file).
	journalPrealloc      = journalLimit + 64<<10
	journalPreallocOther = 4 << 10
	// journalPreallocOpen is the size a journal is given on open (and
	// when its feed is created): a writer that never appends keeps a
	// small journal; one that does checkpoints when its records would
	// pass it, and so gets journalPrealloc.
	journalPreallocOpen = 4 << 10
	// jrnMaxFile bounds the journal recovery reads: no journal this
	// package writes is larger.
	jrnMaxFile = 2*journalLimit + jrnMaxRecord
)

// journalZeros is written to preallocate a journal, a chunk at a time.
var journalZeros = sync.OnceValue(func() []byte { return make([]byte, 64<<10) })

// journalDatasyncs reports whether the journal file fdatasyncs (a
// DirStorage's): only then is it preallocated past journalPreallocOther.
func (f *Feed) journalDatasyncs() bool {
	file, err := f.fjrn().get()
	if err != nil {
		return false
	}
	_, ok := file.(datasyncer)
	return ok
}

// preallocJournalWriteLocked writes zeros to the journal from its size,
// from, up to size bytes, and returns its size. Preallocating
// is not needed: if it fails (a full disk, a file size limit), the journal
// is cut back to from, and appends extend it.
//
// Only a file that fdatasyncs (a DirStorage's) gets more than
// journalPreallocOther bytes; any other, such as a MemStorage's, whose
// memory the zeros would take, gets that at most.
func (f *Feed) preallocJournalWriteLocked(from, size int64) (int64, error) {
	file, err := f.fjrn().get()
	if err != nil {
		return from, err
	}
	size = f.journalPreallocSize(size)
	zeros := journalZeros()
	for off := from; off < size; off += int64(len(zeros)) {
		if _, err := file.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off); err != nil {
			return from, cutFile(file, from)
		}
	}
	return max(from, size), nil
}

// journalPreallocSize is the size preallocJournalWriteLocked gives the
// journal when asked for size.
func (f *Feed) journalPreallocSize(size int64) int64 {
	if !f.journalDatasyncs() {
		return min(size, journalPreallocOther)
	}
	return size
}

// journalState is a writer's journal, under writeMu.
type journalState struct {
	// end is where the next record goes; 0 if the feed does not journal
	// (a replica, NoSync, read-only), headerSize if the journal holds no
	// base record (a checkpoint must come first).
	end int64
	// appends is the number of append records after the base.
	appends int
	// alloc is the journal file's size: past end, zeros (see
	// journalPrealloc).
	alloc int64
	// small is set while the journal has its preallocation of open
	// (journalPreallocOpen): the first journaled append whose record would
	// pass it checkpoints, which preallocates journalPrealloc, once, even
	// if that fails (a full disk).
	small bool
	// count is the number of writes of the record being built in buf.
	count uint32
	buf   []byte

	// For tests: a journal past limit is checkpointed before the next
	// append (journalLimit if 0); an append of more than maxAppend data
	// and tree bytes is not journaled (journalMaxAppend if 0; none if
	// negative).
	limit     int64
	maxAppend int
}

// journaling reports whether the feed journals its appends.
func (f *Feed) journaling() bool { return f.jrn.end > 0 }

// journalsAppendWriteLocked reports whether the append b is journaled,
// checkpointing first if the journal is full or has no base record. A
// failed checkpoint fails the append before it writes anything.
func (f *Feed) journalsAppendWriteLocked(b *appendBuild) (bool, error) {
	if !f.journaling() {
		return false, nil
	}
	maxAppend := f.jrn.maxAppend
	if maxAppend == 0 {
		maxAppend = journalMaxAppend
	}
	if len(b.data)+len(b.run)+len(b.early)*nodeSize > maxAppend {
		return false, nil
	}
	limit := f.jrn.limit
	if limit == 0 {
		limit = journalLimit
	}
	// A record that would pass the journal's preallocation of open would
	// extend the file (an fdatasync that writes metadata): a checkpoint
	// first gives it journalPrealloc, once (see journalState.small).
	record := int64(jrnMinRecord + (len(b.early)+3)*jrnWriteFixed + len(b.data) + len(b.run) + (len(b.early)+1)*nodeSize + sigRecordSize) // at most
	grow := f.jrn.small && f.jrn.end+record > f.jrn.alloc && f.journalDatasyncs()
	if f.jrn.end <= headerSize || f.jrn.end > limit || grow {
		f.mu.RLock()
		length, byteLen := f.length, f.byteLen
		f.mu.RUnlock()
		if err := f.checkpointWriteLocked(length, byteLen); err != nil {
			return false, err
		}
	}
	return true, nil
}

// journalBeginWriteLocked starts the append record of the signature record
// number records, of length and byteLen.
func (f *Feed) journalBeginWriteLocked(records, length, byteLen uint64) {
	j := &f.jrn
	j.buf = appendJournalRecord(j.buf[:0], 0, &journalRecord{kind: jrnUnsigned, records: records, length: length, byteLen: byteLen})
	j.buf = j.buf[:jrnFixed] // the count, size, flags, roots hash and CRC are set by writeJournaledWriteLocked
	j.count = 0
}

// journalAddWriteLocked adds a write of data at off in file to the record.
func (f *Feed) journalAddWriteLocked(file uint8, off int64, data []byte) {
	f.jrn.buf = appendJournalWrite(f.jrn.buf, file, off, data)
	f.jrn.count++
}

// writeJournaledWriteLocked finishes a journaled append of length: writes
// its journal record (kind unsigned: its writes, and the flags and roots
// hash of its signature record), then syncs the journal while work writes
// the data and tree records to their files and signs, and the signature
// record (flag journaled, not synced) is written; it returns the
// signature. Replay signs the roots hash again if the signature record
// did not land: signing is deterministic. A failed write is undone by the
// caller (abortWriteLocked), the journal's part here (the record, synced
// away if it was synced); a failed sync leaves the feed refusing writes.
func (f *Feed) writeJournaledWriteLocked(length uint64, roots [32]byte, flags uint32, work func() ([]byte, error)) ([]byte, error) {
	ws := f.scratchWriteLocked()
	j := &f.jrn
	flags |= sigJournaled
	binary.BigEndian.PutUint32(j.buf[32:], j.count)
	// ws.secret was read by the append (secretKeyWriteLocked) before it
	// built anything.
	if ws.tagMAC == nil {
		ws.tagMAC = newJournalMAC(ws.secret)
	}
	j.buf = appendJournalTail(j.buf, flags, roots, journalTag(ws.tagMAC, roots, length, flags))
	j.buf = finishJournalRecord(j.buf, 0, j.end)
	end := j.end + int64(len(j.buf))
	if _, err := f.fjrn().WriteAt(j.buf, j.end); err != nil {
		return nil, f.unwriteJournalWriteLocked(f.opError("write journal", err), end, false)
	}
	// The sync is the append's only wait: the files' writes and the
	// signature are made on another core meanwhile. The signature record
	// may land before the journal record does: replay cuts it then
	// (never acknowledged), as it cuts any past the journal's last.
	var sig []byte
	var werr error
	sigsEnd, rec := f.sigsEnd, ws.sig[:]
	do := func() {
		if sig, werr = work(); werr == nil {
			encodeSigRecord(rec, length, sig, flags)
			if _, werr = f.fsigs().WriteAt(rec, sigsEnd); werr != nil {
				werr = f.opError("write signature", werr)
			}
		}
	}
	// Whoever comes first does it: a goroutine can start late on a
	// virtual machine, later than the sync ends.
	var taken atomic.Bool
	done := make(chan struct{})
	go func() {
		if taken.CompareAndSwap(false, true) {
			do()
			close(done)
		}
	}()
	serr := f.fjrn().Datasync()
	if taken.CompareAndSwap(false, true) {
		do()
	} else {
		<-done
	}
	if serr != nil {
		ws.failed = serr
		return nil, f.opError("sync journal", serr)
	}
	if werr != nil {
		// The record is durable: a crash now would replay the append,
		// and so it is undone in the journal too, synced.
		return nil, f.unwriteJournalWriteLocked(werr, end, true)
	}
	j.alloc = max(j.alloc, end)
	f.sigsEnd += sigRecordSize
	j.end = end
	j.appends++
	return sig, nil
}

// unwriteJournalWriteLocked undoes the append record written at f.jrn.end,
// to end, after err failed its append: by writing zeros over it where the
// journal held zeros (cutting would lose the preallocation), else (or if
// that fails too) by cutting the journal where the record began; synced
// when sync is set (the record was). It returns err, joined with the
// undo's error, which leaves the feed refusing writes, if that fails.
func (f *Feed) unwriteJournalWriteLocked(err error, end int64, sync bool) error {
	ws := f.scratchWriteLocked()
	j := &f.jrn
	var cerr error
	zeroed := end <= j.alloc
	if zeroed {
		clear(j.buf)
		_, cerr = f.fjrn().WriteAt(j.buf, j.end)
	}
	if !zeroed || cerr != nil {
		cerr = cutFile(f.fjrn(), j.end)
		j.alloc = j.end
	}
	if cerr == nil && sync {
		cerr = f.fjrn().Datasync()
	}
	if cerr != nil {
		ws.failed = f.opError("undo a failed write", cerr)
		return errors.Join(err, ws.failed)
	}
	return err
}

// checkpointWriteLocked makes every journaled write durable in its file
// and cuts the journal back to a base record: data, tree and signatures
// are synced, then the journal is cut to its header and synced, then the
// base record (the signature records, length and byte length the files
// hold: length and byteLen) is written and synced. A failed sync leaves
// the feed refusing writes (what is durable is then unknown, and recovery
// finds it); a failed write of the base record is undone (the journal cut
// to its header, which the next append checkpoints again).
func (f *Feed) checkpointWriteLocked(length, byteLen uint64) error {
	if err := f.syncFilesCutJournalWriteLocked(); err != nil {
		return err
	}
	return f.writeBaseWriteLocked(uint64(f.sigsEnd-headerSize)/sigRecordSize, length, byteLen, true)
}

// cutJournalWriteLocked cuts the journal to its header and syncs it: the
// files must hold every journaled write durably. A failed cut changes
// nothing; a failed sync leaves the feed refusing writes.
func (f *Feed) cutJournalWriteLocked() error {
	if err := f.fjrn().Truncate(headerSize); err != nil {
		return f.opError("cut journal", err)
	}
	f.jrn.end, f.jrn.appends, f.jrn.alloc = headerSize, 0, headerSize
	if err := f.fjrn().Sync(); err != nil {
		f.scratchWriteLocked().failed = f.opError("sync journal", err)
		return f.scratchWriteLocked().failed
	}
	return nil
}

// writeBaseWriteLocked writes the base record of a journal cut to its
// header (records signature records, length, byteLen) and syncs it. A
// failed write is undone; a failed sync leaves the feed refusing writes.
func (f *Feed) writeBaseWriteLocked(records, length, byteLen uint64, fill bool) error {
	ws := f.scratchWriteLocked()
	base := journalRecord{kind: jrnBase, records: records, length: length, byteLen: byteLen}
	buf := appendJournalRecord(f.jrn.buf[:0], headerSize, &base)
	f.jrn.buf = buf
	n := len(buf)
	if _, err := f.fjrn().WriteAt(buf, headerSize); err != nil {
		err = f.opError("write journal", err)
		if cerr := cutFile(f.fjrn(), headerSize); cerr != nil {
			ws.failed = f.opError("undo a failed write", cerr)
			return errors.Join(err, ws.failed)
		}
		return err
	}
	f.jrn.alloc = max(f.jrn.alloc, headerSize+int64(n))
	if fill {
		f.jrn.small = false
		alloc, err := f.preallocJournalWriteLocked(f.jrn.alloc, journalPrealloc)
		if err != nil {
			ws.failed = f.opError("undo a failed write", err)
			return ws.failed
		}
		f.jrn.alloc = alloc
	}
	if err := f.fjrn().Datasync(); err != nil {
		ws.failed = f.opError("sync journal", err)
		return ws.failed
	}
	f.jrn.end = headerSize + int64(n)
	return nil
}

// syncFilesCutJournalWriteLocked syncs data, tree and signatures, which
// makes every journaled write durable, then cuts the journal to its header
// and syncs it. A failed sync leaves the feed refusing writes.
func (f *Feed) syncFilesCutJournalWriteLocked() error {
	for _, file := range []File{f.fdata(), f.ftree(), f.fsigs()} {
		if err := file.Sync(); err != nil {
			ws := f.scratchWriteLocked()
			ws.failed = f.opError("sync", err)
			return ws.failed
		}
	}
	return f.cutJournalWriteLocked()
}

// writeLargeWriteLocked finishes an append of length (byteLen bytes) that
// a journaling feed does not journal: data, tree and signatures synced
// (every journaled write before it is then durable), the journal cut to
// its header and synced, the signature record (flag synced) written and
// synced, then the journal's base record, which counts it, written and
// synced. A failed write is undone by the caller (abortWriteLocked); a
// failed sync leaves the feed refusing writes.
func (f *Feed) writeLargeWriteLocked(length, byteLen uint64, sig []byte, flags uint32) error {
	if err := f.syncFilesCutJournalWriteLocked(); err != nil {
		return err
	}
	ws := f.scratchWriteLocked()
	rec := ws.sig[:]
	encodeSigRecord(rec, length, sig, flags|sigSynced)
	if _, err := f.fsigs().WriteAt(rec, f.sigsEnd); err != nil {
		return f.opError("write signature", err)
	}
	if err := f.fsigs().Sync(); err != nil {
		ws.failed = f.opError("sync", err)
		return ws.failed
	}
	if err := f.writeBaseWriteLocked(uint64(f.sigsEnd-headerSize)/sigRecordSize+1, length, byteLen, false); err != nil {
		return err
	}
	f.sigsEnd += sigRecordSize
	return nil
}

// closeJournalWriteLocked checkpoints a journal that holds appends, when
// the feed closes: a closed database's journal holds its base record only,
// and opening it replays nothing.
func (f *Feed) closeJournalWriteLocked() error {
	if !f.journaling() || f.jrn.appends == 0 || f.failedWriteLocked() != nil {
		return nil
	}
	f.mu.RLock()
	length, byteLen := f.length, f.byteLen
	f.mu.RUnlock()
	return f.checkpointWriteLocked(length, byteLen)
}

// jrnBegun is the bytes of a journal record's size field and kind: a
// record was begun at an offset unless they are all zero there.
const jrnBegun = 5

// replayed is what replayJournal found: the base and append records of
// the journal, and whether the journal held bytes past them.
type replayed struct {
	exists  bool  // the journal file exists
	size    int64 // its size
	recs    []journalRecord
	trailer bool // bytes past the last intact record (a torn one), or a short file
	// blank is set when the file is shorter than its header or holds only
	// zeros: its creation was torn by a crash (startJournal syncs it once
	// its header and base record are written), and it holds no record.
	blank bool
	// damaged is set when the zeros past the last intact record are
	// damaged (see decodeJournal): the records end there all the same.
	damaged *CorruptError
}

// durable is the number of signature records the replayed journal says
// are durable (those its last record accounts for), 0 without one: a
// crash cannot have torn those.
func (r *replayed) durable() uint64 {
	if len(r.recs) == 0 {
		return 0
	}
	return r.recs[len(r.recs)-1].records
}

// replayJournal replays a writer's journal, before recovery: each intact
// record's writes are applied in order, and an unsigned one's signature
// record, signed with the feed's secret key (those that change bytes; the
// first record that is not whole, if torn, ends the journal), data, tree
// and signatures are synced, and the signature records past the last one
// the journal accounts for are cut: their appends' journal records did
// not land, so they were never acknowledged. A record that is not whole
// where no torn write explains it (see journalTorn; but for damage in the
// zeros past the records, below), or one that is whole but not one this package writes,
// is ErrCorrupt naming the journal and its offset; so is a signatures file
// shorter than the journal accounts for.
//
// Damage in the zeros past the last record (see decodeJournal) does not
// stop the replay: it is reported (Feed.jrnDamage), and the journal is
// written anew after recovery (startJournal).
//
// A read-only feed makes the same changes in memory: its data, tree and
// signatures files are overlaid (overlayFile), and stay open.
func (f *Feed) replayJournal(s Storage, prefix string) (r replayed, overlaid bool, err error) {
	file, err := s.Open(prefix+fileJournal, false)
	if errors.Is(err, fs.ErrNotExist) {
		return r, false, nil
	}
	if err != nil {
		return r, false, err
	}
	r.exists = true
	f.fjrn().ref.Store(&fileRef{file})
	size, err := file.Size()
	if err != nil {
		return r, false, err
	}
	r.size = size
	name := f.name + fileJournal
	if size < headerSize {
		r.trailer, r.blank = size > 0, size > 0
		return r, false, nil
	}
	if size > jrnMaxFile {
		return r, false, &CorruptError{File: name, Offset: 0, Reason: fmt.Sprintf("journal of %d bytes, larger than any this build writes", size)}
	}
	buf := make([]byte, size)
	if _, err := file.ReadAt(buf, 0); err != nil && err != io.EOF {
		return r, false, err
	}
	if isZero(buf) {
		r.trailer, r.blank = true, true
		return r, false, nil
	}
	if r.recs, r.trailer, r.damaged, err = f.decodeJournal(buf); err != nil {
		return r, false, err
	}
	f.jrnDamage = r.damaged
	if len(r.recs) == 0 {
		return r, false, nil // no base: nothing was appended since the files were synced
	}
	sigs, overlaid, err := f.applyJournal(r.recs)
	if err != nil {
		return r, overlaid, err
	}
	last := &r.recs[len(r.recs)-1]
	sigsEnd := headerSize + int64(last.records)*sigRecordSize
	sigsSize, err := f.fsigs().Size()
	if err != nil {
		return r, overlaid, err
	}
	if sigsSize < sigsEnd {
		return r, overlaid, &CorruptError{File: f.name + fileSignatures, Offset: sigsSize,
			Reason: fmt.Sprintf("the journal accounts for %d signature records, the file holds fewer", last.records)}
	}
	if sigsSize < sigsEnd+sigRecordSize {
		return r, overlaid, nil // bytes past the last whole record are recovery's
	}
	why := fmt.Sprintf("signature records past number %d, of an append whose journal record did not land: never acknowledged", last.records)
	if err := f.truncate(f.fsigs(), fileSignatures, sigsEnd, why); err != nil {
		return r, overlaid, err
	}
	if f.cfg.readOnly {
		if f.fsigs().ref.Load().File != sigs {
			f.fsigs().ref.Store(&fileRef{sigs})
			overlaid = true
		}
		sigs.Truncate(sigsEnd)
	}
	return r, overlaid, nil
}

// decodeJournal decodes the records of a journal file's bytes (header
// included): the base and append records, in order, up to the first that
// is not whole; trailer is true if that one is torn, or if it is damage in
// the zeros past the records (then also returned as damaged): after the
// base record, bytes that are not zero where no record was begun, as the
// five zeros at its offset show. No record this package wrote has a zero
// size field and kind, and one damaged byte cannot clear both: so no
// acknowledged append is there, and the zeros past the records only were
// hit. Any other record not whole, or a record whole but not one this
// package writes or not following the one before, is ErrCorrupt.
func (f *Feed) decodeJournal(buf []byte) (recs []journalRecord, trailer bool, damaged *CorruptError, err error) {
	name := f.name + fileJournal
	if hdr := encodeHeader(magicJournal, 0); !bytes.Equal(buf[:headerSize], hdr[:]) {
		return nil, false, nil, &CorruptError{File: name, Offset: 0, Reason: "bad header"}
	}
	off := headerSize
	for off < len(buf) {
		rec, n, err := decodeJournalRecord(buf[off:], int64(off), f.name)
		if errors.Is(err, errJournalUnreadable) {
			if journalEnd(buf, off) {
				break
			}
			if journalTorn(buf, off) {
				return recs, true, nil, nil
			}
			if len(recs) > 0 && isZero(buf[off:min(off+jrnBegun, len(buf))]) {
				return recs, true, &CorruptError{File: name, Offset: int64(off), Reason: "bytes that are not zero past the journal's last record, where no record was begun: damage, not a torn write"}, nil
			}
			return nil, false, nil, &CorruptError{File: name, Offset: int64(off), Reason: "a journal record that is not whole (its size field out of range, or its CRC failing) where no torn write explains it: damage"}
		}
		if err != nil {
			return nil, false, nil, err
		}
		if len(recs) == 0 && rec.kind != jrnBase {
			return nil, false, nil, &CorruptError{File: name, Offset: int64(off), Reason: "the journal's first record is not a base record"}
		}
		if k := len(recs); k > 0 {
			prev := &recs[k-1]
			if rec.kind == jrnBase || rec.records != prev.records+1 || rec.length <= prev.length || rec.byteLen < prev.byteLen+(rec.length-prev.length) {
				return nil, false, nil, &CorruptError{File: name, Offset: int64(off),
					Reason: fmt.Sprintf("journal record of signature record %d, length %d, does not follow the one before (%d, length %d)", rec.records, rec.length, prev.records, prev.length)}
			}
		}
		rec.at = int64(off)
		recs = append(recs, rec)
		off += n
	}
	return recs, false, nil, nil
}

// replaySecret returns the secret key a journal replay signs with: the
// one held in memory (given in FeedOptions, the key file holding none), or
// the key file's, read and checked.
func (f *Feed) replaySecret() (ed25519.PrivateKey, error) {
	switch {
	case !f.writable:
		return nil, fmt.Errorf("journal replay: %w", ErrNotWritable)
	case f.ws != nil && f.ws.secret != nil:
		return f.ws.secret, nil
	}
	return f.readSecretKey()
}

// applyJournal applies the writes of the append records of recs to data,
// tree and signatures, and the signature record of each unsigned one,
// signed with the feed's secret key (see replaySecret), those that change
// bytes, and syncs the files; a read-only feed overlays them in memory
// instead (overlaid reports it). Each file changed is reported as a
// repair. It returns the signatures file as the writes leave it, in
// memory.
func (f *Feed) applyJournal(recs []journalRecord) (sigs *overlayFile, overlaid bool, err error) {
	// The writes are applied in memory first, so that only their final
	// bytes are compared with the files: a later record may write again
	// what an earlier one wrote (a parent left zero in a run, written when
	// it is complete).
	ro := f.cfg.readOnly
	targets := [...]*lazyFile{jrnFileData: f.fdata(), jrnFileTree: f.ftree(), jrnFileSigs: f.fsigs()}
	var ovs [4]*overlayFile
	var stored [4]File
	var secret ed25519.PrivateKey // read on the first unsigned record
	var mac hash.Hash
	for i, l := range targets[1:] {
		file, err := l.get()
		if err != nil {
			return nil, false, err
		}
		size, err := file.Size()
		if err != nil {
			return nil, false, err
		}
		stored[i+1], ovs[i+1] = file, &overlayFile{File: file, size: size}
	}
	for _, rec := range recs[1:] {
		for _, w := range rec.writes {
			ovs[w.file].WriteAt(w.data, w.off)
		}
		if rec.kind == jrnUnsigned {
			// Its signature record, which the writer wrote after
			// the record synced: the same bytes, signing being
			// deterministic; if the record's tag says the writer
			// wrote it.
			if secret == nil {
				if secret, err = f.replaySecret(); err != nil {
					return nil, false, err
				}
				mac = newJournalMAC(secret)
			}
			if tag := journalTag(mac, rec.roots, rec.length, rec.flags); !hmac.Equal(rec.tag[:], tag[:]) {
				return nil, false, &CorruptError{File: f.name + fileJournal, Offset: rec.at,
					Reason: "intact journal record of an unsigned append whose tag does not hold: not written with this feed's secret key"}
			}
			var sr [sigRecordSize]byte
			encodeSigRecord(sr[:], rec.length, signRoots(secret, rec.roots, rec.length), rec.flags)
			ovs[jrnFileSigs].WriteAt(sr[:], headerSize+int64(rec.records-1)*sigRecordSize)
		}
	}
	var cur, want []byte
	for i := range ovs {
		ov := ovs[i]
		if ov == nil {
			continue
		}
		changed := 0
		before, _ := stored[i].Size()
		for _, w := range ov.writes {
			want = slices.Grow(want[:0], len(w.data))[:len(w.data)]
			if _, err := ov.ReadAt(want, w.off); err != nil && err != io.EOF {
				return nil, false, err
			}
			cur = slices.Grow(cur[:0], len(w.data))[:len(w.data)]
			n, err := stored[i].ReadAt(cur, w.off)
			if err != nil && err != io.EOF {
				return nil, false, err
			}
			if n == len(cur) && bytes.Equal(cur, want) {
				continue
			}
			changed++
			if ro {
				continue
			}
			if _, err := stored[i].WriteAt(want, w.off); err != nil {
				return nil, false, err
			}
		}
		if changed == 0 {
			continue
		}
		if ro {
			targets[i].ref.Store(&fileRef{ov})
			overlaid = true
		}
		f.repaired(Repair{File: f.name + lazyFileNames[targets[i].kind()], From: before, To: ov.size,
			Reason: fmt.Sprintf("journal replay: %d writes of appends acknowledged before a crash written again", changed)})
	}
	if len(recs) > 1 && !ro {
		for _, t := range targets[1:] {
			if err := t.Sync(); err != nil {
				return nil, overlaid, err
			}
		}
	}
	return ovs[jrnFileSigs], overlaid, nil
}

// startJournal readies a writer's journal after recovery: with sync on,
// the journal must hold exactly a base record of the state loaded, or it
// is written so (created if missing, its directory entry made durable),
// after data, tree and signatures are synced. With NoSync the journal,
// replayed already, is removed: appends that do not journal must not
// leave a base record behind them that a later open would trust.
func (f *Feed) startJournal(s Storage, prefix string, r replayed) (err error) {
	base := journalRecord{kind: jrnBase, records: uint64(f.sigsEnd-headerSize) / sigRecordSize, length: f.length, byteLen: f.byteLen}
	why := "journal cut back to a base record after recovery: its tail was a record torn while being written"
	if r.damaged != nil {
		why = fmt.Sprintf("journal cut back to a base record after recovery: the bytes at offset %d, past its last intact record, were damage, not a torn write", r.damaged.Offset)
	}
	if r.blank {
		why = "journal written anew after recovery: it was shorter than its header or only zeros, a creation torn by a crash"
	}
	if f.cfg.readOnly {
		if r.trailer && !f.cfg.noSync { // what a writable open cuts, then preallocates
			end := headerSize + int64(len(appendJournalRecord(nil, headerSize, &base)))
			f.repaired(Repair{File: f.name + fileJournal, From: r.size, To: max(end, f.journalPreallocSize(journalPreallocOpen)), Reason: why})
		}
		return nil
	}
	if f.cfg.noSync {
		if !r.exists {
			return nil
		}
		if err := f.fjrn().release(); err != nil {
			return err
		}
		return s.Remove(prefix + fileJournal)
	}
	if r.exists && !r.trailer && len(r.recs) == 1 {
		if b := &r.recs[0]; b.records == base.records && b.length == base.length && b.byteLen == base.byteLen {
			f.jrn.end = headerSize + int64(len(appendJournalRecord(nil, headerSize, b)))
			f.jrn.alloc = r.size
			f.jrn.small = r.size < journalPrealloc
			return nil
		}
	}
	for _, file := range []File{f.fdata(), f.ftree(), f.fsigs()} {
		if err := file.Sync(); err != nil {
			return err
		}
	}
	if !r.exists {
		file, err := s.Open(prefix+fileJournal, true)
		if err != nil {
			return err
		}
		f.fjrn().ref.Store(&fileRef{file})
	} else {
		if r.trailer {
			size, err := f.fjrn().Size()
			if err != nil {
				return err
			}
			defer func() {
				if err == nil {
					f.repaired(Repair{File: f.name + fileJournal, From: size, To: f.jrn.alloc, Reason: why})
				}
			}()
		}
		if err := f.fjrn().Truncate(headerSize); err != nil {
			return err
		}
		if err := f.fjrn().Sync(); err != nil {
			return err
		}
	}
	hdr := encodeHeader(magicJournal, 0)
	buf := appendJournalRecord(hdr[:], headerSize, &base)
	end := int64(len(buf))
	if _, err := f.fjrn().WriteAt(buf, 0); err != nil {
		return err
	}
	alloc, err := f.preallocJournalWriteLocked(end, journalPreallocOpen)
	if err != nil {
		return err
	}
	f.jrn.alloc, f.jrn.small = alloc, true
	// A full fsync: a new file's directory entry is made durable with its
	// first.
	if err := f.fjrn().Sync(); err != nil {
		return err
	}
	f.jrn.end = end
	return nil
}

// overlayFile is a stored file as a journal replay would leave it, held in
// memory for a read-only feed: reads see the stored bytes (zeros past
// them), then the writes in order, up to size. Truncate only shrinks.
type overlayFile struct {
	File
	size   int64
	writes []journalWrite
}

func (o *overlayFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errStorageNegativeOffset
	}
	if off >= o.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > o.size-off {
		want = p[:o.size-off]
	}
	n, err := o.File.ReadAt(want, off)
	if err != nil && err != io.EOF {
		return n, err
	}
	clear(want[n:])
	end := off + int64(len(want))
	for _, w := range o.writes {
		wend := w.off + int64(len(w.data))
		if wend <= off || w.off >= end {
			continue
		}
		lo, hi := max(off, w.off), min(end, wend)
		copy(want[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

func (o *overlayFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errStorageNegativeOffset
	}
	o.writes = append(o.writes, journalWrite{off: off, data: bytes.Clone(p)})
	o.size = max(o.size, off+int64(len(p)))
	return len(p), nil
}

func (o *overlayFile) Truncate(size int64) error {
	if size < o.size {
		o.size = size
	}
	return nil
}

func (o *overlayFile) Size() (int64, error) { return o.size, nil }
func (o *overlayFile) Sync() error          { return nil }
