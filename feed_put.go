package kappa

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// putScratch is what one Put works in: the proof's computed nodes, the
// data to write and the span of tree records under the blocks.
type putScratch struct {
	h     *leafHasher
	nodes []storedNode
	fresh []storedNode
	data  []byte
	tree  []byte
	isNew []bool // by position in tree
}

var putScratchPool = sync.Pool{New: func() any { return new(putScratch) }}

func (sc *putScratch) hasher() *leafHasher {
	if sc.h == nil {
		sc.h = newLeafHasher()
	}
	return sc.h
}

// putDirectWrite is the size from which Put writes a block by itself
// rather than copy it into a write of several.
const putDirectWrite = 64 << 10

// maxPooledPut bounds the buffers a putScratch keeps in the pool.
const maxPooledPut = 16 << 20

func (sc *putScratch) release() {
	if cap(sc.data) > maxPooledPut || cap(sc.tree) > maxPooledPut {
		return
	}
	putScratchPool.Put(sc)
}

// Put verifies a proof from a peer and stores its entries and nodes. Nothing
// is written unless the proof's hashes lead to roots that its signature
// signs under this feed's key (or, for a proof without signature, to roots
// this feed already holds), and no node contradicts one already stored. A
// signed proof that raises the length must also determine every full root
// of the length the feed holds (the proof of the first entries past it
// does), so that the new tree is known to contain the old one; one that
// does not is refused, with nothing written.
func (f *Feed) Put(p *Proof) error {
	if p == nil {
		return f.opError("put", fmt.Errorf("%w: nil proof", ErrBadProof))
	}
	if f.writable {
		return f.opError("put", ErrNotWritable)
	}
	if f.cfg.readOnly {
		return f.opError("put", ErrReadOnly)
	}
	if err := f.forkedErr(); err != nil {
		return err
	}
	// Scratch buffers come from a pool shared by all feeds: an idle
	// replica keeps none.
	sc := putScratchPool.Get().(*putScratch)
	defer sc.release()
	// Verify: the proof's hashes lead to roots its signature signs.
	t, err := proofTree(p, sc.hasher(), sc.nodes[:0])
	if err != nil {
		return f.opError("put", err)
	}
	sc.nodes = t.nodes
	if p.Signature != nil && !verifyRoots(f.key, treeHash(t.roots), p.Length, p.Signature) {
		return f.opError(fmt.Sprintf("put at length %d", p.Length), ErrBadSignature)
	}
	if p.Length > maxStoredLength {
		// Valid, but past what this feed's files can address.
		return f.opError(fmt.Sprintf("put at length %d", p.Length), fmt.Errorf("%w: a length over 2^56, where a tree node's file offset would pass 63 bits", ErrFull))
	}
	// Damaged entries and tree records that this Put rewrote from its
	// verified copy are reported healed once the locks are released.
	var healed []uint64
	var corrupt, fixed []*CorruptError
	defer func() {
		f.reportHealedEntries(healed)
		f.reportFixedNodes(fixed)
	}()
	var fork *ForkError // found by this Put: reported once writeMu is released
	defer func() { f.reportFork(fork) }()
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	f.mu.RLock()
	closed, curLen, curBytes := f.closed, f.length, f.byteLen
	f.mu.RUnlock()
	if closed {
		return f.opError("put", ErrClosed)
	}
	if err := f.failedWriteLocked(); err != nil {
		return f.opError("put", fmt.Errorf("refused after a failed write; reopen the feed: %w", err))
	}
	if err := f.forkedErr(); err != nil {
		return err // forked while this Put waited
	}
	if p.Signature == nil && p.Length > curLen {
		return f.opError("put", fmt.Errorf("%w: unsigned proof past length %d", ErrBadProof, curLen))
	}
	// Compare with the stored tree.
	span, corrupt, fork, err := f.putCompareWriteLocked(p, t, sc, curLen)
	if err != nil {
		return err
	}
	// Write: data first, then the nodes that vouch for it, then (synced)
	// the bitfield and signature that make it visible. A failed write is
	// undone (see abortWriteLocked): the new nodes were absent, and the
	// bitfield pages are written back from the blocks held.
	end := p.Start + uint64(len(p.Blocks))
	undo := &writeUndo{length: curLen, byteLen: curBytes, bitPages: f.bitPages, nodes: func() []uint64 {
		var idx []uint64
		for i, isNew := range sc.isNew {
			if isNew {
				idx = append(idx, span.lo+uint64(i))
			}
		}
		for i := range sc.fresh {
			idx = append(idx, sc.fresh[i].Index)
		}
		return idx
	}}
	if len(p.Blocks) > 0 {
		undo.bitLo, undo.bitHi = p.Start/bitPageEntries, (end-1)/bitPageEntries+1
	}
	files, err := f.putWriteWriteLocked(p, t, sc, span, undo)
	if err != nil {
		return err
	}
	// Commit.
	if healed, err = f.putCommitWriteLocked(p, t, files, curLen, undo); err != nil {
		return err
	}
	fixed = corrupt
	if p.Signature != nil && p.Length < curLen {
		f.keepOlderSignatureWriteLocked(p.Length, p.Signature)
	}
	return nil
}

// putCompareWriteLocked is Put's second step: every node the proof
// determines must agree with what is stored, and an unsigned proof must
// meet stored roots. It returns the span of tree records under the blocks,
// with the new nodes of the span encoded in place in it (marked in
// sc.isNew); the new nodes outside it are in sc.fresh. It also returns the
// stored records that failed their CRC, rewritten from the verified ones,
// and the fork found if a signed node contradicts a stored one.
func (f *Feed) putCompareWriteLocked(p *Proof, t *provenTree, sc *putScratch, curLen uint64) (*nodeSpan, []*CorruptError, *ForkError, error) {
	// The nodes under the blocks fill one span of the tree file, read in
	// one call; a new node of the span is encoded in place in it, and each
	// run of new ones written from there. The few others (uncles and
	// ancestors) are read one by one.
	end := p.Start + uint64(len(p.Blocks))
	var span *nodeSpan
	var corrupt []*CorruptError
	sc.isNew = sc.isNew[:0]
	if len(p.Blocks) > 0 {
		lo, hi := 2*p.Start, 2*end-1
		sc.tree = slices.Grow(sc.tree[:0], int((hi-lo)*nodeSize))[:(hi-lo)*nodeSize]
		n, err := f.ftree().ReadAt(sc.tree, headerSize+int64(lo)*nodeSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, nil, f.opError("put", err)
		}
		span = &nodeSpan{lo: lo, n: uint64(n) / nodeSize, buf: sc.tree}
		sc.isNew = slices.Grow(sc.isNew[:0], int(hi-lo))[:hi-lo]
		clear(sc.isNew)
	}
	fresh := sc.fresh[:0]
	for i := range t.nodes {
		n := &t.nodes[i]
		old, err := span.node(f, n.Index)
		if err != nil && err != errNoNode {
			// A stored record that fails its CRC is no node: it is
			// rewritten from the verified one. (Tested only here, off
			// the path of nodes that are stored or absent.)
			if ce := (*CorruptError)(nil); errors.As(err, &ce) {
				corrupt = append(corrupt, ce)
				err = errNoNode
			}
		}
		switch {
		case err == errNoNode:
			if span != nil && n.Index >= span.lo && n.Index-span.lo < uint64(len(sc.isNew)) {
				k := n.Index - span.lo
				encodeNode(span.buf[k*nodeSize:], n)
				sc.isNew[k] = true
				continue
			}
			fresh = append(fresh, *n)
		case err != nil:
			return nil, nil, nil, f.opError("put", err)
		case old.Hash != n.Hash || old.Size != n.Size || old.Offset != n.Offset:
			if p.Signature != nil { // the key signed both: a fork
				fork, err := f.forkFoundWriteLocked(p, t, n.Index)
				if err != nil {
					return nil, nil, fork, f.opError("put", fmt.Errorf("%w (%w)", fork, err))
				}
				return nil, nil, fork, f.opError("put", fork)
			}
			return nil, nil, nil, f.opError("put", fmt.Errorf("%w: node %d contradicts the stored tree", ErrBadProof, n.Index))
		}
	}
	sc.fresh = fresh
	if p.Signature != nil && p.Length > curLen && curLen > 0 {
		// The new roots must be shown to contain the tree held: each root
		// of curLen is among the nodes compared above.
		if r, ok := t.unreachedRoot(curLen); !ok {
			return nil, nil, nil, f.opError(fmt.Sprintf("put at length %d", p.Length), fmt.Errorf("%w: it does not determine node %d, a root of length %d", errNoLink, r, curLen))
		}
	}
	if p.Signature == nil {
		for _, r := range t.roots {
			if _, err := f.readNode(r.Index); err != nil {
				return nil, nil, nil, f.opError("put", fmt.Errorf("%w: unsigned proof does not reach a stored root", ErrBadProof))
			}
		}
	}
	return span, corrupt, nil, nil
}

// putWriteWriteLocked is Put's third step: it makes a new replica's key
// file durable, then writes the proof's blocks and the new nodes that
// putCompareWriteLocked found. It returns the files written, which are not
// synced yet.
func (f *Feed) putWriteWriteLocked(p *Proof, t *provenTree, sc *putScratch, span *nodeSpan, undo *writeUndo) ([]File, error) {
	if f.keyDirty {
		// A new replica's key file is made durable first: data under a
		// key file that a crash could lose would be damage.
		if err := f.ws.meta.Sync(); err != nil {
			f.scratchWriteLocked().failed = err
			return nil, f.opError("sync key file", err)
		}
	}
	var files []File
	if len(p.Blocks) > 0 {
		if err := f.putBlocksWriteLocked(p, t, sc, undo); err != nil {
			return nil, err
		}
		files = append(files, f.fdata())
	}
	wroteTree, err := f.putNodesWriteLocked(sc, span, undo)
	if err != nil {
		return nil, err
	}
	if wroteTree {
		files = append(files, f.ftree())
	}
	return files, nil
}

// putBlocksWriteLocked writes the records of the proof's blocks to the
// data file. They are contiguous there: they are gathered into one write,
// but a large block is written as it is rather than copied, between its
// record's length and CRC.
func (f *Feed) putBlocksWriteLocked(p *Proof, t *provenTree, sc *putScratch, undo *writeUndo) error {
	off := dataPos(p.Start, t.offsetOf(2*p.Start))
	data := sc.data[:0]
	flush := func(b []byte) error {
		if _, err := f.fdata().WriteAt(b, off); err != nil {
			return f.abortWriteLocked(undo, f.opError("put", err))
		}
		off += int64(len(b))
		return nil
	}
	for i, b := range p.Blocks {
		seq := p.Start + uint64(i)
		if len(b) < putDirectWrite {
			data = appendDataRecord(data, seq, b)
			continue
		}
		var l [dataLenLen]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(b)))
		if err := flush(append(data, l[:]...)); err != nil {
			return err
		}
		if err := flush(b); err != nil {
			return err
		}
		data = binary.BigEndian.AppendUint32(data[:0], dataChecksumParts(seq, l, b))
	}
	if err := flush(data); err != nil {
		return err
	}
	sc.data = data[:0]
	return nil
}

// putNodesWriteLocked writes the new nodes to the tree file, one write per
// run of consecutive new nodes: in the span, from its buffer; the others
// (sc.fresh) encoded one run at a time. It reports whether it wrote any.
func (f *Feed) putNodesWriteLocked(sc *putScratch, span *nodeSpan, undo *writeUndo) (bool, error) {
	wroteTree := false
	for i := 0; i < len(sc.isNew); {
		if !sc.isNew[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(sc.isNew) && sc.isNew[j] {
			j++
		}
		if _, err := f.ftree().WriteAt(span.buf[i*nodeSize:j*nodeSize], headerSize+int64(span.lo+uint64(i))*nodeSize); err != nil {
			return false, f.abortWriteLocked(undo, f.opError("put", err))
		}
		wroteTree = true
		i = j
	}
	fresh := sc.fresh
	if len(fresh) > 0 {
		slices.SortFunc(fresh, func(a, b storedNode) int { return cmp.Compare(a.Index, b.Index) })
		var rec [nodeSize]byte
		buf := rec[:0]
		for i := 0; i < len(fresh); {
			j := i + 1
			for j < len(fresh) && fresh[j].Index == fresh[j-1].Index+1 {
				j++
			}
			run := slices.Grow(buf[:0], (j-i)*nodeSize)[:(j-i)*nodeSize]
			for k := i; k < j; k++ {
				encodeNode(run[(k-i)*nodeSize:], &fresh[k])
			}
			if _, err := f.ftree().WriteAt(run, headerSize+int64(fresh[i].Index)*nodeSize); err != nil {
				return false, f.abortWriteLocked(undo, f.opError("put", err))
			}
			i = j
		}
		wroteTree = true
	}
	return wroteTree, nil
}

// putCommitWriteLocked is Put's last step: it writes the bitfield (once
// the data and nodes under it are durable, with sync on) and, for a signed
// proof that raises the length, the signature record; then it publishes
// the new state. It returns the damaged entries that the blocks healed.
func (f *Feed) putCommitWriteLocked(p *Proof, t *provenTree, files []File, curLen uint64, undo *writeUndo) ([]uint64, error) {
	end := p.Start + uint64(len(p.Blocks))
	newLen := curLen
	if p.Signature != nil {
		newLen = max(curLen, p.Length)
	}
	if len(p.Blocks) > 0 || bitPages(newLen) > f.bitPages {
		// The bits claim blocks: with sync on, they are written only once
		// the data and nodes under them are durable.
		if !f.cfg.noSync && len(p.Blocks) > 0 {
			for _, file := range files {
				if err := file.Sync(); err != nil {
					f.scratchWriteLocked().failed = err
					return nil, f.abortWriteLocked(undo, f.opError("sync", err))
				}
			}
			files = nil
		}
		if err := f.writeBitsWriteLocked(p.Start, end, newLen); err != nil {
			return nil, f.abortWriteLocked(undo, err)
		}
	}
	length, byteLen, roots, sig := curLen, uint64(0), []storedNode(nil), []byte(nil)
	if p.Signature != nil && p.Length > curLen {
		length, roots, sig = p.Length, t.roots, bytes.Clone(p.Signature)
		for _, r := range roots {
			byteLen += r.Size
		}
		if err := f.writeSignatureWriteLocked(length, sig, 0, append(files, f.fbits())...); err != nil {
			return nil, f.abortWriteLocked(undo, err)
		}
		f.sigReplacedWriteLocked(length)
	} else if !f.cfg.noSync {
		for _, file := range append(files, f.fbits()) {
			if err := file.Sync(); err != nil {
				f.scratchWriteLocked().failed = err
				return nil, f.abortWriteLocked(undo, f.opError("sync", err))
			}
		}
	}
	if f.keyDirty {
		f.keyDirty = false
		meta := f.ws.meta
		f.ws.meta = nil
		if err := meta.Close(); err != nil {
			f.ws.failed = err
			return nil, f.opError("close key file", err)
		}
	}
	f.storedBlocksWriteLocked(p.Start, p.Blocks)
	var healed []uint64
	f.publishWriteLocked(length, byteLen, roots, sig, func(b *bitset) {
		b.setRange(p.Start, end)
		healed = f.clearDamagedLocked(p.Start, end)
	})
	return healed, nil
}

// keepOlderSignatureWriteLocked records a verified signature of a length
// below the feed's, so that the feed can later prove entries at that length
// (a replica may lack the nodes to prove them at its newest). The file of
// older signatures is a cache: it is never synced, never part of recovery,
// and its records are checked again by whoever receives a proof made with
// one. Called under writeMu; a failure only loses the cache.
func (f *Feed) keepOlderSignatureWriteLocked(length uint64, sig []byte) {
	ws := f.scratchWriteLocked()
	if ws.older == nil {
		file, err := f.cfg.store.Open(f.name+fileOlderSigs, true)
		if err != nil {
			return
		}
		ws.older = file
	}
	older := ws.older
	size, err := older.Size()
	if err != nil {
		return
	}
	end := headerSize + max(size-headerSize, 0)/sigRecordSize*sigRecordSize
	if size < headerSize {
		hdr := encodeHeader(magicOlderSigs, sigRecordSize)
		if _, err := older.WriteAt(hdr[:], 0); err != nil {
			return
		}
		end = headerSize
	}
	var rec [sigRecordSize]byte
	encodeSigRecord(rec[:], length, sig, 0)
	older.WriteAt(rec[:], end)
}

// writeBitsWriteLocked records blocks [start, end) in the bitfield file, and
// makes the file cover every page below length, so that a page missing from
// it is damage. It rewrites whole pages, each with its checksum.
func (f *Feed) writeBitsWriteLocked(start, end, length uint64) error {
	lo, hi := f.bitPages, bitPages(length)
	if start < end {
		lo, hi = min(lo, start/bitPageEntries), max(hi, (end-1)/bitPageEntries+1)
	}
	if lo >= hi {
		return nil
	}
	f.mu.RLock()
	buf := f.have.bytesFor(lo*bitPageEntries, hi*bitPageEntries)
	f.mu.RUnlock()
	for i := start; i < end; i++ {
		buf[i/8-lo*bitPageBytes] |= 1 << (i % 8)
	}
	out := make([]byte, (hi-lo)*bitPageSize)
	for p := lo; p < hi; p++ {
		rec := out[(p-lo)*bitPageSize : (p-lo+1)*bitPageSize]
		copy(rec, buf[(p-lo)*bitPageBytes:(p-lo+1)*bitPageBytes])
		encodeBitPage(rec, p)
	}
	if _, err := f.fbits().WriteAt(out, headerSize+int64(lo)*bitPageSize); err != nil {
		return f.opError("put", err)
	}
	f.bitPages = max(f.bitPages, hi)
	return nil
}
