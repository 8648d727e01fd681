package kappa

import (
	"cmp"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
)

// errValueFailedCheck is what commitValuesWriteLocked returns when a value
// of an unchecked call failed its check: that call has ended with its
// error, and the rest of the batch is still to commit.
var errValueFailedCheck = errors.New("a value failed its check")

// appendQueue holds the Append calls waiting for the next commit.
type appendQueue struct {
	mu   sync.Mutex
	reqs []*appendReq
	// spare is the list of a committed batch, for the next (guarded by
	// the feed's writeMu).
	spare []*appendReq
}

type appendReq struct {
	values [][]byte
	prefix []byte // the first block's uvarint n ‖ context; nil for 0x00 (see commitWriteLocked)
	// unchecked: the values are still to be checked against the feed's
	// encoding. A large Append's are checked while its records are built,
	// on as many cores as there are (see buildAppendWriteLocked).
	unchecked bool
	seq       uint64
	err       error
	done      bool
}

// Append adds values to the end of a writable feed and returns the sequence
// number of the first. All values of one call are covered by one signature;
// concurrent calls may share one. In a Core, the first entry of each call
// records the causal context of the call (see Entry.Deps): the heads of the
// database's other feeds that this writer had not recorded before. With sync on (the default) the values are
// durable when Append returns. A nil value is ErrInvalidValue, a value over
// MaxBlockSize ErrBlockTooLarge; either way nothing is appended. Append with
// no values appends nothing, writes no signature and returns Len. A call
// of many values is checked, hashed and written on as many cores as there
// are.
func (f *Feed) Append(values ...[]byte) (uint64, error) {
	unchecked := len(values) >= minSharedBuild && f.cfg.enc != Binary
	for i, v := range values {
		if v == nil {
			return 0, f.opError(fmt.Sprintf("append value %d", i), fmt.Errorf("%w: nil", ErrInvalidValue))
		}
		if len(v) > MaxBlockSize {
			return 0, f.opError(fmt.Sprintf("append value %d", i), fmt.Errorf("%w: %d bytes", ErrBlockTooLarge, len(v)))
		}
		if !unchecked {
			if err := f.cfg.enc.check(v); err != nil {
				return 0, f.opError(fmt.Sprintf("append value %d", i), err)
			}
		}
	}
	if !f.writable {
		return 0, f.opError("append", ErrNotWritable)
	}
	if f.cfg.readOnly {
		return 0, f.opError("append", ErrReadOnly)
	}
	req := &appendReq{values: values, unchecked: unchecked}
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
		q.reqs, q.spare = q.spare, nil
		q.mu.Unlock()
		f.commitWriteLocked(batch)
		clear(batch)
		q.spare = batch[:0]
	}
	return req.seq, req.err
}

func (f *Feed) commitWriteLocked(batch []*appendReq) {
	batch, recorded := f.contextsWriteLocked(batch)
	seq, err := f.commitValuesWriteLocked(batch)
	lost := false // a context named in a call that failed alone
	for err == errValueFailedCheck {
		// A value of a large call failed its check while built: that call
		// ended with its error; the others are committed without it.
		batch = slices.DeleteFunc(slices.Clone(batch), func(r *appendReq) bool {
			lost = lost || (r.done && r.prefix != nil)
			return r.done
		})
		seq, err = f.commitValuesWriteLocked(batch)
	}
	if (lost || err != nil && recorded) && f.cfg.contextLost != nil {
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
				if f.cfg.contextLost != nil {
					// The provider counted this context as recorded:
					// it was not, so the next one names every head.
					f.cfg.contextLost(f)
				}
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
// and signs the new length (writeAppendWriteLocked), then writes the
// signature record and publishes. It changes the published state only when every
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
	if start+n > maxStoredLength || byteLen+size > maxTreeBytes {
		return 0, f.opError(fmt.Sprintf("append %d entries at %d", n, start), ErrFull)
	}
	secret, err := f.secretKeyWriteLocked()
	if err != nil {
		return 0, f.opError("append", err)
	}
	ws := f.scratchWriteLocked()
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

	b, ok := f.buildAppendWriteLocked(batch, start, n, byteLen, roots)
	if !ok {
		return 0, errValueFailedCheck
	}
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
	hash := ws.roots.hash(b.newRoots)
	sig, pending, err := f.writeAppendWriteLocked(&b, start, byteLen, journaled, secret, hash, length)
	if err != nil {
		return 0, f.abortWriteLocked(appendUndo(start, byteLen, b.early), f.opError("append", err))
	}
	var work func() ([]byte, error)
	if pending != nil {
		work = func() ([]byte, error) {
			if err := pending(); err != nil {
				return nil, f.opError("append", err)
			}
			return signRoots(secret, hash, length), nil
		}
	}
	sig, checked, plain, err := f.writeSigRecordWriteLocked(batch, start, length, b.off, sig, hash, work)
	if err != nil {
		return 0, f.abortWriteLocked(appendUndo(start, byteLen, b.early), err)
	}
	if f.cfg.stored != nil { // before publishing: readers see it indexed
		tellStored(f, batch, start)
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

// appendUndo is how a failed append from length start (byteLen bytes) is
// undone (see abortWriteLocked): the new parents of older roots, early,
// below the signed tree's end, were absent before.
func appendUndo(start, byteLen uint64, early []storedNode) *writeUndo {
	return &writeUndo{length: start, byteLen: byteLen, nodes: func() []uint64 {
		idx := make([]uint64, len(early))
		for i := range early {
			idx[i] = early[i].Index
		}
		return idx
	}}
}

// writeSigRecordWriteLocked writes the signature record of an append of
// batch from start to length (off bytes), signed sig: as a large append's,
// or in the signatures file; or, journaled (work set, sig nil), it writes
// the journal record, with roots, the hash the signature signs, and has
// work write the files and sign while the journal syncs. It returns the
// signature and the flags it recorded: whether every value up to length
// was checked against the encoding, and whether no block has a context.
func (f *Feed) writeSigRecordWriteLocked(batch []*appendReq, start, length, off uint64, sig []byte, roots [32]byte, work func() ([]byte, error)) (_ []byte, checked, plain bool, err error) {
	// Append checked every value against the feed's encoding: if those
	// before were checked too, the record says so.
	checked = f.checked.Load() == start
	var flags uint32
	if checked {
		flags = uint32(f.cfg.enc.code()) << sigCheckedShift
	}
	// Likewise for blocks without a context.
	plain = f.plain.Load() == start && !slices.ContainsFunc(batch, func(r *appendReq) bool { return r.prefix != nil })
	if plain {
		flags |= sigPlain
	}
	switch {
	case work != nil:
		sig, err = f.writeJournaledWriteLocked(length, roots, flags, work)
	case f.journaling():
		err = f.writeLargeWriteLocked(length, off, sig, flags)
	default:
		err = f.writeSignatureWriteLocked(length, sig, flags, f.fdata(), f.ftree())
	}
	return sig, checked, plain, err
}

// tellStored tells the feed's Core of the entries of batch, appended from
// start, each call's with its block prefix.
func tellStored(f *Feed, batch []*appendReq, start uint64) {
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
// the leaves and the parents they complete. It checks the values of
// unchecked calls as it goes; if one fails, that call ends with its error
// and ok is false.
//
// The work per entry (its check, its data record and CRC, its leaf hash,
// the parents inside its aligned group of subtreeLeaves entries) does not
// depend on other groups', so the groups are shared among the cores
// (shareWork); what is left here, in order, is the parents above the
// groups, a few per group.
func (f *Feed) buildAppendWriteLocked(batch []*appendReq, start, n, byteLen uint64, roots []storedNode) (b appendBuild, ok bool) {
	ws := f.scratchWriteLocked()
	// Chunk c holds the entries of the c-th aligned group the append
	// touches.
	first := start - start%subtreeLeaves
	chunks := int((start + n - first + subtreeLeaves - 1) / subtreeLeaves)
	// Where each chunk's first entry begins in the feed's bytes, then the
	// end (each entry's offset follows from the sizes of the blocks before
	// it in its chunk), and the call each entry is from (firsts: the
	// number of the first value of each call, then n). Entry k's block is
	// its call's prefix, for the call's first value, and the value.
	//
	// Not an offset per entry: the caller would write that list afresh each
	// append, after the other cores read it in the last, and on two vCPUs
	// here that took 16 µs a call of 1,000, against 1 µs on one core.
	starts := slices.Grow(ws.starts[:0], chunks+1)[:0]
	firsts := slices.Grow(ws.firsts[:0], len(batch)+1)[:0]
	off, k := byteLen, uint64(0)
	for _, r := range batch {
		firsts = append(firsts, k)
		for i, v := range r.values {
			if k == 0 || (start+k)%subtreeLeaves == 0 {
				starts = append(starts, off)
			}
			off += uint64(len(noContext) + len(v))
			if i == 0 && r.prefix != nil {
				off += uint64(len(r.prefix) - len(noContext))
			}
			k++
		}
	}
	starts = append(starts, off)
	firsts = append(firsts, n)
	ws.starts, ws.firsts = starts[:0], firsts[:0]
	data := slices.Grow(ws.data[:0], int(off-byteLen+n*dataFrame))[:off-byteLen+n*dataFrame]
	ws.data = data[:0]

	// Tree: the leaves and the parents they complete. Nodes at index 2·start
	// and beyond form one contiguous run (none of them was complete
	// before). When start is odd the first leaf completes the parent at
	// 2·start−1, which then begins the run. Other parents of older roots
	// lie before it and are written one by one.
	runStart, runLen := 2*start, 2*n-1
	if start%2 == 1 {
		runStart, runLen = runStart-1, runLen+1
	}
	run := slices.Grow(ws.tree[:0], int(runLen*nodeSize))[:runLen*nodeSize]
	clear(run[:(2*start-runStart)*nodeSize]) // the rest is cleared by build
	ws.tree = run[:0]
	leaves := slices.Grow(ws.leaves[:0], int(n))[:n]
	ws.leaves = leaves[:0]
	g := &ws.group // in the scratch: helpers share it
	g.batch, g.firsts, g.start, g.byteLen = batch, firsts, start, byteLen
	g.data, g.run, g.runStart, g.leaves = data, run, runStart, leaves
	// Each leaf records the number of the signature record that will
	// cover it; see checkTail.
	g.ord = uint32((f.sigsEnd-headerSize)/sigRecordSize + 1)
	g.enc = f.cfg.enc
	g.failed.Store(false)
	defer func() { g.batch = nil }() // the calls' values are not kept
	if n < minSharedBuild {
		g.build(ws.hasher, 0, n, byteLen)
	} else {
		for len(ws.hashers) < runtime.GOMAXPROCS(0) {
			ws.hashers = append(ws.hashers, newLeafHasher())
		}
		hashers := ws.hashers
		shareWork(len(hashers), chunks, func(w, c int) {
			from := max(start, first+uint64(c)*subtreeLeaves) - start
			to := min(start+n, first+uint64(c+1)*subtreeLeaves) - start
			g.build(hashers[w], from, to, starts[c])
		})
	}
	if g.failed.Load() {
		f.failChecksWriteLocked(batch)
		return appendBuild{}, false
	}

	newRoots, early := ws.mergeRoots(roots, leaves, start, run, runStart)
	return appendBuild{data: data, run: run, runStart: runStart, early: early, newRoots: newRoots, off: off}, true
}

// mergeRoots returns the roots of the tree after an append at length start
// under roots, whose entries' leaves are leaves, each block's root in its
// last slot (see groupBuild.build): the parents they complete are written into
// run (from node runStart), or, for those before it, returned in early, in
// decreasing index order.
func (ws *writeScratch) mergeRoots(roots, leaves []storedNode, start uint64, run []byte, runStart uint64) (newRoots, early []storedNode) {
	n := uint64(len(leaves))
	// The new roots go in whichever of the scratch's two lists roots is not
	// in: only appends, under writeMu, read a published list.
	spare := &ws.rootLists[0]
	if len(roots) > 0 && len(*spare) > 0 && &roots[0] == &(*spare)[0] {
		spare = &ws.rootLists[1]
	}
	newRoots = append((*spare)[:0], roots...)
	for k := uint64(0); k < n; {
		// The root of the block from k, computed with it.
		w := alignedBlock(start+k, start+n)
		cur := leaves[k+w-1]
		k += w
		for len(newRoots) > 0 {
			left := &newRoots[len(newRoots)-1]
			if flatDepth(left.Index) != flatDepth(cur.Index) {
				break
			}
			p := storedNode{Node{Index: flatParent(cur.Index), Hash: ws.hasher.parent(&left.Node, &cur.Node), Size: left.Size + cur.Size}, left.Offset}
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
	*spare = newRoots
	return newRoots, early
}

// failChecksWriteLocked ends each unchecked call of batch that has a value
// failing its check with the error of its first such value.
func (f *Feed) failChecksWriteLocked(batch []*appendReq) {
	for _, r := range batch {
		if r.unchecked {
			for i, v := range r.values {
				if err := f.cfg.enc.check(v); err != nil {
					r.err, r.done = f.opError(fmt.Sprintf("append value %d", i), err), true
					break
				}
			}
		}
	}
}

// subtreeLeaves is the size of the aligned groups of entries whose records
// and subtrees an append builds apart from the others: 2^subtreeDepth.
const (
	subtreeDepth  = 6
	subtreeLeaves = 1 << subtreeDepth
)

// minSharedBuild is the number of values of an Append from which it is
// checked and built on more than one core (see shareWork): below it, waking
// another core costs more than it saves.
const minSharedBuild = 4 * subtreeLeaves

// groupBuild is an append being built by groups (buildAppendWriteLocked):
// the entries of the calls of batch, from start (at byte byteLen), whose
// data records go in data and whose tree records go in run (from node
// runStart), and their leaves (or a group's root, see build).
type groupBuild struct {
	batch     []*appendReq
	firsts    []uint64 // the entry number of each call's first value, then n
	start     uint64
	byteLen   uint64
	data, run []byte
	runStart  uint64
	leaves    []storedNode
	ord       uint32
	enc       Encoding
	failed    atomic.Bool // an unchecked value failed its check
}

// build checks the values of entries [from, to) of the append (a group's,
// or the whole append's), the first at byte off of the feed, writes their
// data records, and their leaves, with ordinal ord, into run. It splits
// [from, to) into aligned blocks (see alignedBlock), computes each block's
// parents too, writes them into run, and leaves in leaves each block's
// root in the block's last slot (a block of one entry: its leaf).
//
// Nodes 2·(start+from) to 2·(start+to)−1 of run are the entries' leaves
// and the parents inside their blocks, written here, and the node just
// above each block, which is zeroed here: its parent, if the append
// completes it, is written after (mergeRoots); if not, it stays zero.
func (g *groupBuild) build(h *leafHasher, from, to, off uint64) {
	// The call entry from is in: the last whose first value is at or
	// before it.
	j, _ := slices.BinarySearch(g.firsts, from+1)
	j--
	block := from // the first entry of the block k is in
	blockEnd := block + alignedBlock(g.start+block, g.start+to)
	var first []byte // the block of the first entry of a pair (see below)
	for k := from; k < to; k++ {
		for k >= g.firsts[j+1] {
			j++
		}
		r := g.batch[j]
		value, prefix := r.values[k-g.firsts[j]], noContext
		if k == g.firsts[j] && r.prefix != nil {
			prefix = r.prefix
		}
		if r.unchecked && g.enc.check(value) != nil {
			g.failed.Store(true)
			return
		}
		seq := g.start + k
		at := (off - g.byteLen) + k*dataFrame
		size := uint64(len(prefix) + len(value))
		rec := g.data[at : at+dataFrame+size]
		binary.BigEndian.PutUint32(rec, uint32(size))
		copy(rec[dataLenLen:], prefix)
		copy(rec[dataLenLen+len(prefix):], value)
		binary.BigEndian.PutUint32(rec[dataLenLen+size:], dataChecksum(seq, rec[:dataLenLen+size]))
		// The leaf is over the block, as the record holds it. A block of
		// two or more entries has an even number of them: they are hashed
		// in pairs, two at once (sum2).
		data := rec[dataLenLen : dataLenLen+size]
		g.leaves[k] = storedNode{Node{Index: 2 * seq, Size: size}, off}
		off += size
		switch {
		case (k-block)%2 == 0 && k+1 < blockEnd:
			first = data
			continue
		case (k-block)%2 == 1:
			prev := &g.leaves[k-1]
			prev.Hash, g.leaves[k].Hash = h.sum2(first, data)
			encodeNodeOrd(g.run[(prev.Index-g.runStart)*nodeSize:], prev, g.ord)
		default:
			g.leaves[k].Hash = h.sum(data)
		}
		encodeNodeOrd(g.run[(g.leaves[k].Index-g.runStart)*nodeSize:], &g.leaves[k], g.ord)
		if k+1 == blockEnd {
			buildBlock(h, g.leaves[block:blockEnd], g.run, g.runStart)
			if above := (2*(g.start+blockEnd) - 1 - g.runStart) * nodeSize; above < uint64(len(g.run)) {
				clear(g.run[above : above+nodeSize])
			}
			if block = blockEnd; block < to {
				blockEnd = block + alignedBlock(g.start+block, g.start+to)
			}
		}
	}
}

// alignedBlock returns the size of the block of an append that begins at
// entry seq, the append ending before entry end (seq < end): the largest power of two,
// up to subtreeLeaves, that divides seq and fits. An append's blocks are
// the complete subtrees it adds that lie inside its aligned groups, so a
// group's blocks are the same whether the append is built by groups or at
// once. Their parents are computed with their leaves, on as many cores as
// there are; only the parents above the blocks are left to mergeRoots.
func alignedBlock(seq, end uint64) uint64 {
	w := uint64(subtreeLeaves)
	if seq != 0 {
		w = min(w, seq&-seq)
	}
	for seq+w > end {
		w /= 2
	}
	return w
}

// buildBlock computes the parents of an aligned block (a power of two of
// at most subtreeLeaves leaves), writes them into run, and leaves the
// block's root in the block's last slot.
func buildBlock(h *leafHasher, group []storedNode, run []byte, runStart uint64) {
	var level [subtreeLeaves / 2]storedNode
	src := group
	parentOf := func(l, r *storedNode) storedNode {
		return storedNode{Node{Index: flatParent(l.Index), Size: l.Size + r.Size}, l.Offset}
	}
	for width := len(group); width > 1; width /= 2 {
		// Parents two at once (parent2), and the last alone.
		i := 0
		for ; i+1 < width/2; i += 2 {
			l0, r0, l1, r1 := &src[2*i], &src[2*i+1], &src[2*i+2], &src[2*i+3]
			p0, p1 := parentOf(l0, r0), parentOf(l1, r1)
			p0.Hash, p1.Hash = h.parent2(&l0.Node, &r0.Node, &l1.Node, &r1.Node)
			encodeNode(run[(p0.Index-runStart)*nodeSize:], &p0)
			encodeNode(run[(p1.Index-runStart)*nodeSize:], &p1)
			level[i], level[i+1] = p0, p1
		}
		if i < width/2 {
			l, r := &src[2*i], &src[2*i+1]
			p := parentOf(l, r)
			p.Hash = h.parent(&l.Node, &r.Node)
			encodeNode(run[(p.Index-runStart)*nodeSize:], &p)
			level[i] = p
		}
		src = level[:width/2]
	}
	group[len(group)-1] = src[0]
}

// writeAppendWriteLocked writes an append that buildAppendWriteLocked
// built at length start (byteLen bytes): the data records, then the tree
// records, and remembers the tree records written; it signs the new
// length with secret (hash is its roots hash, of the tree in memory) and
// returns the signature, for the caller to write once both writes
// succeeded. A large append that is not journaled writes its data and its
// tree and signs on as many cores as there are (shareWork). A failed
// write is returned as it is, for the caller to undo.
//
// A journaled append's writes are added to its journal record, and
// returned as pending, not made: they are made while the journal syncs
// (see writeJournaledWriteLocked), and it is not signed here.
func (f *Feed) writeAppendWriteLocked(b *appendBuild, start, byteLen uint64, journaled bool, secret ed25519.PrivateKey, hash [32]byte, length uint64) (sig []byte, pending func() error, err error) {
	ws := f.scratchWriteLocked()
	w := appendWrite{data: b.data, dataAt: dataPos(start, byteLen), run: b.run, treeStart: b.runStart, early: b.early}
	// The parents of older roots lie before the run. If the nodes between
	// the lowest of them and the run were written lately, they are known,
	// and the run grows down to that parent: one write instead of several.
	if len(w.early) > 0 {
		if ext, ok := ws.recent.extend(ws.ex[:0], w.early, b.runStart, w.run); ok {
			ws.ex = ext[:0]
			w.run, w.treeStart, w.early = ext, w.early[len(w.early)-1].Index, nil
		}
	}
	switch {
	case journaled:
		jw := w // only this case's copy escapes
		pending = func() error { return f.writeFilesWriteLocked(&jw) }
	case len(b.data)+len(w.run) < minSharedWrite:
		// Signed first: right after the hashing, before the system calls
		// (measured: 80.6 % of signing against 79.4 in eleven pairs).
		sig = signRoots(secret, hash, length)
		if err := f.writeFilesWriteLocked(&w); err != nil {
			return nil, nil, err
		}
	default:
		var errs [2]error
		var s []byte
		sw := w // only this case's copy escapes
		shareWork(3, 3, func(_, c int) {
			switch c {
			case 0:
				errs[0] = f.writeDataWriteLocked(&sw)
			case 1:
				errs[1] = f.writeTreeWriteLocked(&sw)
			default:
				s = signRoots(secret, hash, length)
			}
		})
		if err := cmp.Or(errs[0], errs[1]); err != nil {
			return nil, nil, err
		}
		sig = s
	}
	if journaled {
		f.journalAddWriteLocked(jrnFileData, w.dataAt, w.data)
		f.journalAddWriteLocked(jrnFileTree, headerSize+int64(w.treeStart)*nodeSize, w.run)
		var rec [nodeSize]byte
		for i := range w.early {
			encodeNode(rec[:], &w.early[i])
			f.journalAddWriteLocked(jrnFileTree, headerSize+int64(w.early[i].Index)*nodeSize, rec[:])
		}
	}
	ws.recent.remember(w.treeStart, w.run)
	for i := range w.early {
		var rec [nodeSize]byte
		encodeNode(rec[:], &w.early[i])
		ws.recent.remember(w.early[i].Index, rec[:])
	}
	return sig, pending, nil
}

// appendWrite is what an append writes to its files: its data records at
// dataAt, its run of tree records from node treeStart, and the parents of
// older roots before the run, one by one.
type appendWrite struct {
	data      []byte
	dataAt    int64
	run       []byte
	treeStart uint64
	early     []storedNode
}

// writeFilesWriteLocked makes the writes of w: the data records, then
// the tree records.
func (f *Feed) writeFilesWriteLocked(w *appendWrite) error {
	if err := f.writeDataWriteLocked(w); err != nil {
		return err
	}
	return f.writeTreeWriteLocked(w)
}

func (f *Feed) writeDataWriteLocked(w *appendWrite) error {
	_, err := f.fdata().WriteAt(w.data, w.dataAt)
	return err
}

func (f *Feed) writeTreeWriteLocked(w *appendWrite) error {
	if _, err := f.ftree().WriteAt(w.run, headerSize+int64(w.treeStart)*nodeSize); err != nil {
		return err
	}
	for i := range w.early {
		var rec [nodeSize]byte
		encodeNode(rec[:], &w.early[i])
		if _, err := f.ftree().WriteAt(rec[:], headerSize+int64(w.early[i].Index)*nodeSize); err != nil {
			return err
		}
	}
	return nil
}

// minSharedWrite is the size of an append's data and tree records from
// which its writes and its signature are shared among the cores.
const minSharedWrite = 64 << 10

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
