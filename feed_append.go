package kappa

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
)

// appendQueue holds the Append calls waiting for the next commit.
type appendQueue struct {
	mu   sync.Mutex
	reqs []*appendReq
}

type appendReq struct {
	values [][]byte
	prefix []byte // the first block's uvarint n ‖ context; nil for 0x00 (see commitWriteLocked)
	seq    uint64
	err    error
	done   bool
}

// Append adds values to the end of a writable feed and returns the sequence
// number of the first. All values of one call are covered by one signature;
// concurrent calls may share one. In a Core, the first entry of each call
// records the causal context of the call (see Entry.Deps): the heads of the
// database's other feeds that this writer had not recorded before. With sync on (the default) the values are
// durable when Append returns. A nil value is ErrInvalidValue, a value over
// MaxBlockSize ErrBlockTooLarge; either way nothing is appended. Append with
// no values appends nothing, writes no signature and returns Len.
func (f *Feed) Append(values ...[]byte) (uint64, error) {
	for i, v := range values {
		if v == nil {
			return 0, f.opError(fmt.Sprintf("append value %d", i), fmt.Errorf("%w: nil", ErrInvalidValue))
		}
		if len(v) > MaxBlockSize {
			return 0, f.opError(fmt.Sprintf("append value %d", i), fmt.Errorf("%w: %d bytes", ErrBlockTooLarge, len(v)))
		}
		if err := f.cfg.enc.check(v); err != nil {
			return 0, f.opError(fmt.Sprintf("append value %d", i), err)
		}
	}
	if !f.writable {
		return 0, f.opError("append", ErrNotWritable)
	}
	if f.cfg.readOnly {
		return 0, f.opError("append", ErrReadOnly)
	}
	req := &appendReq{values: values}
	q := f.queue.Load()
	if q == nil {
		f.queue.CompareAndSwap(nil, new(appendQueue))
		q = f.queue.Load()
	}
	q.mu.Lock()
	q.reqs = append(q.reqs, req)
	q.mu.Unlock()

	// Whoever takes writeMu commits everything queued so far, so calls
	// that arrive while a commit syncs share the next one.
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	if !req.done {
		q.mu.Lock()
		batch := q.reqs
		q.reqs = nil
		q.mu.Unlock()
		f.commitWriteLocked(batch)
	}
	return req.seq, req.err
}

func (f *Feed) commitWriteLocked(batch []*appendReq) {
	batch, recorded := f.contextsWriteLocked(batch)
	seq, err := f.commitValuesWriteLocked(batch)
	if err != nil && recorded && f.cfg.contextLost != nil {
		f.cfg.contextLost(f)
	}
	for _, r := range batch {
		r.seq, r.err, r.done = seq, err, true
		seq += uint64(len(r.values))
	}
}

// contextsWriteLocked gives the first block of each call in batch its
// causal context, from the Core's provider (none for a feed opened alone):
// one context per call, computed now, at commit. A call whose block prefix
// (uvarint n ‖ context) would be over maxContextBytes fails alone with
// ErrBlockTooLarge and is left out of the batch returned. recorded is true if a context was recorded.
func (f *Feed) contextsWriteLocked(batch []*appendReq) (kept []*appendReq, recorded bool) {
	if f.cfg.context == nil {
		return batch, false
	}
	for i, r := range batch {
		r.prefix = nil
		if len(r.values) > 0 {
			ctx := normalizeContext(f.cfg.context(f), f.key)
			if size := contextSize(ctx); uvarintLen(uint64(size))+size > maxContextBytes {
				r.err, r.done = f.opError("append", fmt.Errorf("%w: a causal context of %d feeds (%d bytes)", ErrBlockTooLarge, len(ctx), size)), true
				if kept == nil {
					kept = append(batch[:0:0], batch[:i]...)
				}
				continue
			} else if size > 0 {
				r.prefix = appendBlockPrefix(nil, ctx)
				recorded = true
			}
		}
		if kept != nil {
			kept = append(kept, r)
		}
	}
	if kept == nil {
		return batch, recorded
	}
	return kept, recorded
}

// recentNodes holds the tree records a writer wrote last, by index, so that
// an append can rewrite the nodes between a new parent of an older root and
// its run of new nodes in the same write. It is empty after open and after a
// failed write; it is only a cache of what the tree file holds.
type recentNodes struct {
	recs *[recentSize]recentRecord
}

const recentSize = 64

type recentRecord struct {
	index uint64
	ok    bool
	rec   [nodeSize]byte
}

func (r *recentNodes) forget() {
	if r.recs != nil {
		*r.recs = [recentSize]recentRecord{}
	}
}

// remember records the records in buf, the first at index first. Only the
// highest indexes matter: a slot keeps the larger of two indexes.
func (r *recentNodes) remember(first uint64, buf []byte) {
	if r.recs == nil {
		r.recs = new([recentSize]recentRecord)
	}
	n := uint64(len(buf) / nodeSize)
	for k := n - min(n, recentSize); k < n; k++ {
		i := first + k
		slot := &r.recs[i%recentSize]
		if !slot.ok || slot.index <= i {
			slot.index, slot.ok = i, true
			copy(slot.rec[:], buf[k*nodeSize:(k+1)*nodeSize])
		}
	}
}

// extend returns, in dst, the records from the lowest of the early parents
// up to runStart followed by run, if every record in between is known.
func (r *recentNodes) extend(dst []byte, early []storedNode, runStart uint64, run []byte) ([]byte, bool) {
	lowest := early[len(early)-1].Index
	if r.recs == nil || runStart-lowest > recentSize {
		return nil, false
	}
	dst = append(dst, make([]byte, (runStart-lowest)*nodeSize)...)
	next := 0 // early is in decreasing index order
	for i := lowest; i < runStart; i++ {
		rec := dst[(i-lowest)*nodeSize:]
		if e := len(early) - 1 - next; e >= 0 && early[e].Index == i {
			encodeNode(rec, &early[e])
			next++
			continue
		}
		slot := &r.recs[i%recentSize]
		if !slot.ok || slot.index != i {
			return nil, false
		}
		copy(rec, slot.rec[:])
	}
	return append(dst, run...), true
}

// commitValuesWriteLocked writes the values of a batch as one append: it
// builds the tree (buildAppendWriteLocked), writes the data and the nodes
// (writeAppendWriteLocked), then signs the new length, writes the signature
// record and publishes. It changes the published state only when every
// write succeeded.
func (f *Feed) commitValuesWriteLocked(batch []*appendReq) (uint64, error) {
	f.mu.RLock()
	closed, start, signed, byteLen := f.closed, f.length, f.signed, f.byteLen
	f.mu.RUnlock()
	if closed {
		return 0, f.opError("append", ErrClosed)
	}
	if err := f.failedWriteLocked(); err != nil {
		return 0, f.opError("append", fmt.Errorf("refused after a failed write; reopen the feed: %w", err))
	}
	var n, size uint64
	for _, r := range batch {
		n += uint64(len(r.values))
		for _, v := range r.values {
			size += uint64(len(v)) + 1 // the block's 0x00 prefix
		}
		if len(r.values) > 0 && r.prefix != nil {
			size += uint64(len(r.prefix)) - 1
		}
	}
	if n == 0 {
		return start, nil
	}
	if start+n > maxTreeLength || byteLen+size > maxTreeBytes {
		return 0, f.opError(fmt.Sprintf("append %d entries at %d", n, start), ErrFull)
	}
	secret, err := f.secretKeyWriteLocked()
	if err != nil {
		return 0, f.opError("append", err)
	}
	var roots []storedNode
	if signed != nil && signed.roots != nil {
		roots = signed.roots
	} else if start > 0 {
		// Opened and not appended to since (a proof may have read the
		// signature alone).
		if roots, err = f.signedRootsWriteLocked(start); err != nil {
			return 0, f.opError("append", err)
		}
	}

	b := f.buildAppendWriteLocked(batch, start, n, byteLen, roots)
	// A failed write is undone (see abortWriteLocked): the new parents of older
	// roots, below the signed tree's end, were absent before.
	allEarly := b.early
	undo := &writeUndo{length: start, byteLen: byteLen, nodes: func() []uint64 {
		idx := make([]uint64, len(allEarly))
		for i := range allEarly {
			idx[i] = allEarly[i].Index
		}
		return idx
	}}
	// A small append with sync on is journaled: one sync, of the journal
	// (see feed_journal.go).
	journaled, err := f.journalsAppendWriteLocked(&b)
	if err != nil {
		return 0, err
	}
	length := start + n
	if journaled {
		f.journalBeginWriteLocked(uint64(f.sigsEnd-headerSize)/sigRecordSize+1, length, b.off)
	}
	if err := f.writeAppendWriteLocked(&b, start, byteLen, undo, journaled); err != nil {
		return 0, err
	}
	sig := signRoots(secret, treeHash(b.newRoots), length)
	// Append checked every value against the feed's encoding: if those
	// before were checked too, the record says so.
	checked := f.checked.Load() == start
	var flags uint32
	if checked {
		flags = uint32(f.cfg.enc.code()) << sigCheckedShift
	}
	// Likewise for blocks without a context.
	plain := f.plain.Load() == start && !slices.ContainsFunc(batch, func(r *appendReq) bool { return r.prefix != nil })
	if plain {
		flags |= sigPlain
	}
	if journaled {
		if err := f.writeJournaledWriteLocked(length, sig, flags); err != nil {
			return 0, f.abortWriteLocked(undo, err)
		}
	} else if f.journaling() {
		if err := f.writeLargeWriteLocked(length, b.off, sig, flags); err != nil {
			return 0, f.abortWriteLocked(undo, err)
		}
	} else {
		if err := f.writeSignatureWriteLocked(length, sig, flags, f.fdata(), f.ftree()); err != nil {
			return 0, f.abortWriteLocked(undo, err)
		}
	}
	if f.cfg.stored != nil { // before publishing: readers see it indexed
		seq := start
		for _, r := range batch {
			if k := uint64(len(r.values)); k > 0 {
				prefix := r.prefix
				if prefix == nil {
					prefix = noContext
				}
				f.cfg.stored(f, seq, seq+k, prefix)
				seq += k
			}
		}
	}
	if checked {
		f.checked.Store(length)
	}
	if plain {
		f.plain.Store(length)
	}
	f.publishWriteLocked(length, b.off, b.newRoots, sig, nil)
	return start, nil
}

// appendBuild is what buildAppendWriteLocked makes of a batch: the records
// to write, in the write scratch's buffers, and the new tree's roots.
type appendBuild struct {
	data     []byte       // the values' data records, from dataPos(start, byteLen)
	run      []byte       // the contiguous run of new tree records, from index runStart
	runStart uint64       // the index of the run's first record
	early    []storedNode // new parents of older roots, before the run, in decreasing index order
	newRoots []storedNode // the roots of the tree after the append
	off      uint64       // the byte length after the append
}

// buildAppendWriteLocked builds the records of an append of the n values
// of batch at length start (byteLen bytes, under roots): the data records,
// the leaves and the parents they complete.
func (f *Feed) buildAppendWriteLocked(batch []*appendReq, start, n, byteLen uint64, roots []storedNode) appendBuild {
	// Data: one write of all values' records.
	ws := f.scratchWriteLocked()
	data := ws.data[:0]
	seq := start
	for _, r := range batch {
		for i, v := range r.values {
			prefix := noContext
			if i == 0 && r.prefix != nil {
				prefix = r.prefix
			}
			data = appendBlockRecord(data, seq, prefix, v)
			seq++
		}
	}
	ws.data = data[:0]

	// Tree: the leaves and the parents they complete. Nodes at index 2·start
	// and beyond form one contiguous run (none of them was complete
	// before). When start is odd the first leaf completes the parent at
	// 2·start−1, which then begins the run. Other parents of older roots
	// lie before it and are written one by one.
	newRoots := append(make([]storedNode, 0, len(roots)+1), roots...)
	runStart, runLen := 2*start, 2*n-1
	if start%2 == 1 {
		runStart, runLen = runStart-1, runLen+1
	}
	run := slices.Grow(ws.tree[:0], int(runLen*nodeSize))[:runLen*nodeSize]
	clear(run)
	var early []storedNode
	off := byteLen
	seq = start
	// Each leaf records the number of the signature record that will
	// cover it; see checkTail.
	ord := uint32((f.sigsEnd-headerSize)/sigRecordSize + 1)
	pos := 0 // the record of entry seq in data
	for _, r := range batch {
		for range r.values {
			// The leaf is over the block, as the record holds it.
			size := uint64(binary.BigEndian.Uint32(data[pos:]))
			block := data[pos+dataLenLen : pos+dataLenLen+int(size)]
			pos += dataFrame + int(size)
			cur := storedNode{Node{Index: 2 * seq, Hash: ws.hasher.sum(block), Size: size}, off}
			encodeNodeOrd(run[(cur.Index-runStart)*nodeSize:], &cur, ord)
			off += cur.Size
			seq++
			for len(newRoots) > 0 {
				left := &newRoots[len(newRoots)-1]
				if flatDepth(left.Index) != flatDepth(cur.Index) {
					break
				}
				p := storedNode{Node{Index: flatParent(cur.Index), Hash: parentHash(&left.Node, &cur.Node), Size: left.Size + cur.Size}, left.Offset}
				if p.Index >= runStart {
					encodeNode(run[(p.Index-runStart)*nodeSize:], &p)
				} else {
					early = append(early, p)
				}
				newRoots = newRoots[:len(newRoots)-1]
				cur = p
			}
			newRoots = append(newRoots, cur)
		}
	}
	ws.tree = run[:0]
	return appendBuild{data: data, run: run, runStart: runStart, early: early, newRoots: newRoots, off: off}
}

// writeAppendWriteLocked writes an append that buildAppendWriteLocked
// built at length start (byteLen bytes): the data records, then the tree
// records, and remembers the tree records written. A failed write is undone
// with undo.
func (f *Feed) writeAppendWriteLocked(b *appendBuild, start, byteLen uint64, undo *writeUndo, journaled bool) error {
	ws := f.scratchWriteLocked()
	run, early := b.run, b.early
	// The parents of older roots lie before the run. If the nodes between
	// the lowest of them and the run were written lately, they are known,
	// and the run grows down to that parent: one write instead of several.
	treeStart := b.runStart
	if len(early) > 0 {
		if ext, ok := ws.recent.extend(ws.ex[:0], early, b.runStart, run); ok {
			ws.ex = ext[:0]
			run, treeStart, early = ext, early[len(early)-1].Index, nil
		}
	}

	if _, err := f.fdata().WriteAt(b.data, dataPos(start, byteLen)); err != nil {
		return f.abortWriteLocked(undo, f.opError("append", err))
	}
	if _, err := f.ftree().WriteAt(run, headerSize+int64(treeStart)*nodeSize); err != nil {
		return f.abortWriteLocked(undo, f.opError("append", err))
	}
	if journaled {
		f.journalAddWriteLocked(jrnFileData, dataPos(start, byteLen), b.data)
		f.journalAddWriteLocked(jrnFileTree, headerSize+int64(treeStart)*nodeSize, run)
	}
	var rec [nodeSize]byte
	for i := range early {
		encodeNode(rec[:], &early[i])
		if _, err := f.ftree().WriteAt(rec[:], headerSize+int64(early[i].Index)*nodeSize); err != nil {
			return f.abortWriteLocked(undo, f.opError("append", err))
		}
		if journaled {
			f.journalAddWriteLocked(jrnFileTree, headerSize+int64(early[i].Index)*nodeSize, rec[:])
		}
	}
	ws.recent.remember(treeStart, run)
	for i := range early {
		encodeNode(rec[:], &early[i])
		ws.recent.remember(early[i].Index, rec[:])
	}
	return nil
}

// writeSignatureWriteLocked makes the files durable (when syncing), then
// appends and syncs the signature record for length, with flags (and
// sigSynced when syncing).
func (f *Feed) writeSignatureWriteLocked(length uint64, sig []byte, flags uint32, files ...File) error {
	if !f.cfg.noSync {
		for _, file := range files {
			if err := file.Sync(); err != nil {
				f.scratchWriteLocked().failed = err
				return f.opError("sync", err)
			}
		}
	}
	rec := f.scratchWriteLocked().sig[:]
	if !f.cfg.noSync {
		flags |= sigSynced
	}
	encodeSigRecord(rec, length, sig, flags)
	if _, err := f.fsigs().WriteAt(rec, f.sigsEnd); err != nil {
		return f.opError("write signature", err)
	}
	if !f.cfg.noSync {
		if err := f.fsigs().Sync(); err != nil {
			f.scratchWriteLocked().failed = err
			return f.opError("sync", err)
		}
	}
	f.sigsEnd += sigRecordSize
	return nil
}

// publishWriteLocked makes a new state visible and wakes waiters and
// subscribers. Length and roots change only if length grew; got marks blocks
// a replica received.
func (f *Feed) publishWriteLocked(length, byteLen uint64, roots []storedNode, sig []byte, got func(*bitset)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return // Close woke every waiter already
	}
	if length > f.length {
		if !f.writable {
			roots = nil // only appends use them
		}
		f.length, f.byteLen, f.signed = length, byteLen, &signedState{roots: roots, sig: sig}
	}
	if got != nil {
		got(f.have)
	}
	// Waiters announce themselves under the read lock, so one that missed
	// this change is counted.
	if f.waiting.Load() > 0 {
		if ch := f.changed.Swap(nil); ch != nil {
			close(*ch)
		}
	}
	f.notifyLocked()
}
