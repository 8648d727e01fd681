package kappa

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"sync"
)

// Get returns the value of entry seq (without the causal context stored
// with it: see Entry.Deps). On a replica that lacks it, Get waits until the
// entry arrives, the context ends or the feed is closed; on a writable feed
// a seq at or past Len is ErrOutOfRange. Every value read is checked
// against its leaf hash; a mismatch is ErrCorrupt (a *CorruptError naming
// the file and offset), returned without waiting. The entry is then
// damaged: reported to the Core (see Core.Damaged) and, on a replica,
// fetched again from peers.
func (f *Feed) Get(ctx context.Context, seq uint64) ([]byte, error) {
	if seq >= maxTreeLength {
		return nil, f.opError(fmt.Sprintf("get %d", seq), ErrOutOfRange)
	}
	// A reader going through the feed in order is served from a window of
	// the entries ahead, read (and verified) with one call per file. They
	// are present, so they need no wait; Close drops the window.
	ra := f.ahead.Load()
	if ra == nil {
		f.ahead.CompareAndSwap(nil, new(readAhead))
		ra = f.ahead.Load()
	}
	ra.mu.Lock()
	if seq >= ra.start && seq-ra.start < uint64(len(ra.values)) {
		v := bytes.Clone(ra.values[seq-ra.start])
		if seq-ra.start == uint64(len(ra.values))-1 {
			ra.values = nil // used up: an idle feed keeps no window
		}
		ra.next = seq + 1
		ra.mu.Unlock()
		return v, nil
	}
	sequential := seq > 0 && seq == ra.next
	ra.next = seq + 1
	ra.mu.Unlock()
	if err := f.wait(ctx, seq, seq+1); err != nil {
		return nil, err
	}
	end := seq + 1
	if sequential {
		end = max(seq+1, min(seq+readAheadEntries, f.NextMissing(seq)))
	}
	// Damage ahead ends the window, but does not fail a read of an intact
	// entry: readRange returns the entries before it.
	values, err := f.readRange(seq, end, readAheadBytes)
	if len(values) == 0 {
		return nil, err
	}
	blockValues(values)
	if len(values) > 1 {
		ra.mu.Lock()
		ra.start, ra.values = seq, values
		ra.mu.Unlock()
		return bytes.Clone(values[0]), nil
	}
	return values[0], nil
}

// Read-ahead bounds for sequential Get: a window is at most this many
// entries and bytes (but always at least one entry).
const (
	readAheadEntries = 256
	readAheadBytes   = 32 << 10
)

// readAhead is the window of entries a sequential reader will ask for
// next. Entries in it are present, so they never change.
type readAhead struct {
	mu     sync.Mutex
	start  uint64
	values [][]byte
	next   uint64 // the entry a sequential reader asks for next
}

// GetBatch returns the entries [start, end), waiting for missing ones as Get
// does. It reads each file once, so it is much faster than a loop of Get.
func (f *Feed) GetBatch(ctx context.Context, start, end uint64) ([][]byte, error) {
	blocks, err := f.getBlocks(ctx, start, end)
	if err != nil {
		return nil, err
	}
	return blockValues(blocks), nil
}

// blockValues replaces each block of blocks by its value (see blockValue)
// and returns blocks.
func blockValues(blocks [][]byte) [][]byte {
	for i, b := range blocks {
		blocks[i] = blockValue(b)
	}
	return blocks
}

// getBlocks returns the blocks [start, end) as stored (each a causal
// context and a value, see block.go), waiting for missing ones as GetBatch
// does.
func (f *Feed) getBlocks(ctx context.Context, start, end uint64) ([][]byte, error) {
	if start > end || end-start > maxTreeLength {
		return nil, f.opError(fmt.Sprintf("get [%d, %d)", start, end), ErrOutOfRange)
	}
	if start == end {
		return nil, nil
	}
	if err := f.wait(ctx, start, end); err != nil {
		return nil, err
	}
	values, err := f.readRange(start, end, math.MaxUint64)
	if err != nil {
		return nil, err
	}
	return values, nil
}

// scanBatch returns the blocks of the present entries [start, end), as a
// view reads them (see decodeBlock). When all of them are present it reads
// their records with one read of the data file: they lie end to end, so
// their bounds need no tree past the first (from entry 0, not even that:
// the records begin after the file's header; from a later entry, its
// leaf's offset, CRC-checked, says where), and each is checked against its
// record's checksum rather than hashed again, the checksum seeded with its
// entry's number, so that a record read at the wrong place fails it.
// Reading a feed that a view has not seen then opens one file, not two.
// Otherwise it reads as GetBatch does.
//
// A record that fails its checksum (or does not parse) is checked against
// its leaf, the one rule for every read: intact, it is used and its stale
// checksum rewritten; else the entry is damaged. Damage ends the batch:
// scanBatch returns the entries before the damaged one, without error (it
// is marked, so the view's next batch starts past it).
//
// With share, a large batch is checked on every core, as GetBatch's is; a
// view reading several batches at once, which keeps the cores busy
// already, reads each on its own.
func (f *Feed) scanBatch(start, end uint64, share bool) ([][]byte, error) {
	mode := readMark
	if share {
		mode |= readShare
	}
	f.mu.RLock()
	present := start < end && f.hasRangeLocked(start, end)
	length, byteLen := f.length, f.byteLen
	f.mu.RUnlock()
	from := int64(headerSize) // where entry start's record begins
	if present && start > 0 {
		leaf, err := f.readNode(2 * start)
		present = err == nil
		from = dataPos(start, leaf.Offset)
	}
	if !present || from >= dataPos(length, byteLen) {
		// (A leaf that cannot be read, or is damaged, is for the tree's
		// read to find and report.)
		if err := f.wait(context.Background(), start, end); err != nil {
			return nil, err
		}
		return intactPrefix(f.readRangeMode(start, end, math.MaxUint64, mode))
	}
	// The records of all entries from start lie below limit. For fewer
	// than all, read as much as their number of records of the mean size
	// take, and a quarter more.
	limit := uint64(dataPos(length, byteLen) - from)
	want := limit
	if end < length {
		mean := byteLen/length + dataFrame
		want = min(limit, mean*(end-start)+mean*(end-start)/4+64)
	}
	raw := make([]byte, want)
	n, err := f.fdata().ReadAt(raw, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readErr(err, start)
	}
	raw = raw[:n]
	out := make([][]byte, 0, end-start)
	pos := 0
	for seq := start; seq < end; seq++ {
		v, size, ok, err := decodeDataRecord(seq, raw[pos:], f.name, from+int64(pos))
		if err != nil {
			// Checked through the tree: intact, the checksum is stale.
			one, err := f.readRange(seq, seq+1, math.MaxUint64)
			if err != nil {
				rest, err := intactPrefix(one, err)
				return append(out, rest...), err
			}
			f.rewriteChecksum(seq, from+int64(pos), one[0])
			out = append(out, one[0])
			pos += dataFrame + len(one[0])
			continue
		}
		if !ok {
			// The read ended inside this record: the rest is read
			// with the tree, which also tells damage from a short guess.
			rest, err := intactPrefix(f.readRangeMode(seq, end, math.MaxUint64, mode))
			return append(out, rest...), err
		}
		out = append(out, v)
		pos += size
	}
	return out, nil
}

// intactPrefix returns what readRange read before damage to an entry
// ended it, without error; other errors are returned as they are.
func intactPrefix(values [][]byte, err error) ([][]byte, error) {
	var ed *entryDamage
	if err != nil && !errors.As(err, &ed) {
		return nil, err
	}
	return values, nil
}

// readRange reads the blocks of present entries from start on, up to end or until they
// add up to more than maxBytes (but at least one), checking each against
// its leaf. An entry that fails (its leaf is missing or fails its CRC, or
// its record does not match the leaf) is marked damaged: readRange then
// returns the entries before it with an error wrapping *entryDamage.
func (f *Feed) readRange(start, end, maxBytes uint64) ([][]byte, error) {
	return f.readRangeMode(start, end, maxBytes, readMark|readShare)
}

// readRangeQuiet is readRange for a reader that must leave no trace (the
// causal index's rebuild after open): damage it meets ends the range the
// same way, but is not marked nor reported; the reads of views and callers
// find it as they did before.
func (f *Feed) readRangeQuiet(start, end, maxBytes uint64) ([][]byte, error) {
	return f.readRangeMode(start, end, maxBytes, readShare)
}

// readMode says how readRangeMode reads.
type readMode uint8

const (
	readMark  readMode = 1 << iota // damage found is marked (see Feed.entryDamaged)
	readShare                      // a large range is checked on every core (see shareWork)
)

// readRangeMode is readRange, read as mode says.
func (f *Feed) readRangeMode(start, end, maxBytes uint64, mode readMode) ([][]byte, error) {
	damaged := f.entryDamaged
	if mode&readMark == 0 {
		damaged = func(seq uint64, ce *CorruptError) error { return &entryDamage{seq: seq, err: ce} }
	}
	sc := readScratchPool.Get().(*readScratch)
	defer putReadScratch(sc)
	nodes, total, bad, err := f.readLeaves(sc, start, end, maxBytes, damaged)
	defer func() { sc.nodes = nodes[:0] }()
	if err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, f.readErr(bad, start)
	}
	count := uint64(len(nodes))
	// The entries' records are contiguous in the data file: read them with
	// one call, and check each where it lies against its leaf.
	first := dataPos(start, nodes[0].Offset)
	raw := make([]byte, total+count*dataFrame)
	got, err := f.fdata().ReadAt(raw, first)
	if got < len(raw) && err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readErr(err, start)
	}
	out := make([][]byte, count)
	// check checks entries [from, to) against their leaves, and returns
	// the first that fails, and why (to and nil if none).
	check := func(h *leafHasher, from, to int) (int, *CorruptError) {
		for k := from; k < to; k++ {
			n := &nodes[k]
			seq := start + uint64(k)
			at := dataPos(seq, n.Offset) - first
			if at+dataFrame+int64(n.Size) > int64(got) {
				return k, &CorruptError{File: f.name + fileData, Offset: first + int64(got), Reason: fmt.Sprintf("data file ends inside entry %d", seq)}
			}
			v, err := f.leafValue(h, raw[at:], n, first+at)
			if err != nil {
				return k, err.(*CorruptError)
			}
			out[k] = v
		}
		return to, nil
	}
	failed, why := len(nodes), (*CorruptError)(nil)
	if len(nodes) < minSharedRead || mode&readShare == 0 {
		failed, why = check(sc.hasher, 0, len(nodes))
	} else {
		// Hashing is most of a read: large ranges are shared among the
		// cores, by chunks. Damage found ends the range at the first
		// entry that fails, as when checked in order.
		chunks := (len(nodes) + sharedReadChunk - 1) / sharedReadChunk
		for len(sc.hashers) < runtime.GOMAXPROCS(0) {
			sc.hashers = append(sc.hashers, newLeafHasher())
		}
		fails := make([]int, chunks)
		whys := make([]*CorruptError, chunks)
		shareWork(len(sc.hashers), chunks, func(w, c int) {
			fails[c], whys[c] = check(sc.hashers[w], c*sharedReadChunk, min(len(nodes), (c+1)*sharedReadChunk))
		})
		for c := range chunks {
			if whys[c] != nil {
				failed, why = fails[c], whys[c]
				break
			}
		}
	}
	if why != nil {
		out = out[:failed]
		bad = damaged(start+uint64(failed), why)
	}
	if bad != nil {
		return out, f.readErr(bad, start+uint64(len(out)))
	}
	return out, nil
}

// A read of at least minSharedRead entries checks them against their
// leaves on as many cores as there are, by chunks of sharedReadChunk
// (see shareWork).
const (
	minSharedRead   = 64
	sharedReadChunk = 32
)

// readLeaves reads the leaves of entries [start, end) in one read, into
// sc's buffers, as far as their values fit in maxBytes (the first one
// always): it returns them, with their values' total size. Damage to a
// leaf (damaged says what it becomes) ends them, and is returned as bad;
// err is a failed read.
func (f *Feed) readLeaves(sc *readScratch, start, end, maxBytes uint64, damaged func(uint64, *CorruptError) error) (nodes []storedNode, total uint64, bad, err error) {
	count := end - start
	recs := slices.Grow(sc.recs[:0], int((2*count-1)*nodeSize))[:(2*count-1)*nodeSize]
	sc.recs = recs
	got, err := f.ftree().ReadAt(recs, headerSize+int64(2*start)*nodeSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return sc.nodes, 0, nil, f.readErr(err, start)
	}
	clear(recs[got:]) // past the end of the tree file: no leaf
	all := slices.Grow(sc.nodes[:0], int(count))[:count]
	for k := range count {
		seq := start + k
		// Decoded in place: the slot is in nodes only once it is taken.
		n := &all[k]
		off, err := f.decodeLeafTo(n, recs[2*k*nodeSize:], seq)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				return all[:k], 0, nil, f.readErr(err, seq)
			}
			return all[:k], total, damaged(seq, ce), nil
		}
		if k > 0 && n.Offset != all[k-1].Offset+all[k-1].Size {
			// Each value is sliced out of one read by its offset.
			return all[:k], total, damaged(seq, &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("leaf of entry %d: offsets are not contiguous", seq)}), nil
		}
		if k > 0 && total+n.Size > maxBytes {
			return all[:k], total, nil, nil
		}
		total += n.Size
	}
	return all, total, nil, nil
}

// decodeLeaf decodes rec, the tree record of entry seq's leaf, at off in
// the tree file; an absent one is damage too: the entry is present.
func (f *Feed) decodeLeaf(rec []byte, seq uint64) (n storedNode, off int64, err error) {
	off, err = f.decodeLeafTo(&n, rec, seq)
	return n, off, err
}

// decodeLeafTo is decodeLeaf into *n.
func (f *Feed) decodeLeafTo(n *storedNode, rec []byte, seq uint64) (off int64, err error) {
	off = headerSize + int64(2*seq)*nodeSize
	err = decodeNodeTo(n, 2*seq, rec, f.name, off)
	if err == errNoNode {
		err = &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("no leaf for present entry %d", seq)}
	}
	return off, err
}

// readScratch is what readRange reuses between calls. Large buffers are
// not kept: see putReadScratch.
type readScratch struct {
	recs    []byte
	nodes   []storedNode
	hasher  *leafHasher
	hashers []*leafHasher // one per core, for large reads
}

var readScratchPool = sync.Pool{New: func() any { return &readScratch{hasher: newLeafHasher()} }}

// putReadScratch returns sc to the pool, without buffers larger than those
// of a batch of 1,024 entries.
func putReadScratch(sc *readScratch) {
	if cap(sc.recs) > 2048*nodeSize {
		sc.recs = nil
	}
	if cap(sc.nodes) > 1024 {
		sc.nodes = nil
	}
	readScratchPool.Put(sc)
}

// Head returns the last entry; ErrEmpty if the feed has none. It is
// Get(ctx, Len()-1): on a replica that lacks that entry it waits, as Get
// does, until the entry arrives, ctx ends or the feed is closed.
func (f *Feed) Head(ctx context.Context) ([]byte, error) {
	n := f.Len()
	if n == 0 {
		return nil, f.opError("head", ErrEmpty)
	}
	return f.Get(ctx, n-1)
}

// wait blocks until every entry in [start, end) is present.
func (f *Feed) wait(ctx context.Context, start, end uint64) error {
	registered := false
	for {
		f.mu.RLock()
		if f.closed {
			f.mu.RUnlock()
			return f.opError("wait", ErrClosed)
		}
		if f.hasRangeLocked(start, end) {
			f.mu.RUnlock()
			return nil
		}
		if f.have == nil && end > f.length {
			f.mu.RUnlock()
			return f.opError(fmt.Sprintf("get %d of %d", end-1, f.length), ErrOutOfRange)
		}
		f.waiting.Add(1)
		ch := f.changedChan()
		f.mu.RUnlock()
		if !registered && f.have != nil {
			// A replica records what it waits for, so that replication
			// sessions of a sparse database fetch it.
			registered = true
			defer f.want(start, end)()
		}
		select {
		case <-ch:
			f.waiting.Add(-1)
		case <-ctx.Done():
			f.waiting.Add(-1)
			return f.opError(fmt.Sprintf("waiting for %d", start), ctx.Err())
		}
	}
}

// readData fills dst from the data file at pos.
func (f *Feed) readData(dst []byte, pos int64) error {
	n, err := f.fdata().ReadAt(dst, pos)
	if n == len(dst) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return &CorruptError{File: f.name + fileData, Offset: pos + int64(n), Reason: "data file ends inside a stored entry"}
	}
	return err
}

// leafValue returns the value in rec, which starts with the data record
// (found at pos) of leaf n's entry, checked against the leaf: the record's
// length against the leaf's size, the value against its hash (which makes
// the record's CRC redundant here).
func (f *Feed) leafValue(h *leafHasher, rec []byte, n *storedNode, pos int64) ([]byte, error) {
	why := "has a record length that does not match its leaf"
	if uint64(binary.BigEndian.Uint32(rec)) == n.Size {
		v := rec[dataLenLen : dataLenLen+n.Size : dataLenLen+n.Size]
		if h.sum(v) == n.Hash {
			return v, nil
		}
		why = "does not match its hash"
	}
	return nil, &CorruptError{File: f.name + fileData, Offset: pos, Reason: fmt.Sprintf("entry %d %s", n.Index/2, why)}
}

func (f *Feed) readErr(err error, seq uint64) error {
	if errors.Is(err, errNoNode) {
		err = &CorruptError{File: f.name + fileTree, Offset: headerSize + int64(2*seq)*nodeSize, Reason: fmt.Sprintf("no leaf for present entry %d", seq)}
	}
	return f.opError(fmt.Sprintf("read %d", seq), err)
}
