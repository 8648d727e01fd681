package kappa

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Checking a feed's records for Core.Verify.

// verifyChunk bounds the entries and bytes verify reads at once.
const (
	verifyChunk      = 1024
	verifyChunkBytes = 4 << 20
)

// verify checks f as Core.Verify says, passing each problem to problem
// (Slot, Key and Name unset). The counts it returns include the problems.
func (f *Feed) verify(ctx context.Context, problem func(Damage)) (VerifyStats, error) {
	var st VerifyStats
	bad := func(d Damage) {
		st.Problems++
		problem(d)
	}
	f.mu.RLock()
	length := f.length
	var held []span
	if f.have == nil {
		if length > 0 {
			held = []span{{0, length}}
		}
	} else {
		for s := f.have.nextSet(0, length); s < length; {
			e := f.have.nextClear(s, length)
			held = append(held, span{s, e})
			s = f.have.nextSet(e, length)
		}
	}
	f.mu.RUnlock()
	st.Missing = length
	for _, h := range held {
		st.Missing -= h.end - h.start
		for s := h.start; s < h.end; {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			n, err := f.verifyEntries(s, min(h.end, s+verifyChunk), &st, bad)
			if err != nil {
				return st, err
			}
			s += n
		}
	}
	if err := f.verifyNodes(ctx, length, &st, bad); err != nil {
		return st, err
	}
	if err := f.verifySignatures(ctx, length, &st, bad); err != nil {
		return st, err
	}
	if f.have != nil {
		if err := f.verifyBitfield(length, bad); err != nil {
			return st, err
		}
	}
	if err := f.verifyKey(bad); err != nil {
		return st, err
	}
	return st, nil
}

// verifyKey checks the secret key a writer's key file holds against its
// public key, which opening leaves to the first use (see loadKeys).
func (f *Feed) verifyKey(bad func(Damage)) error {
	if !f.writable {
		return nil
	}
	stored, err := f.readStoredSecret()
	var ce *CorruptError
	switch {
	case errors.As(err, &ce):
		bad(Damage{Err: err})
	case err != nil:
		return err
	case stored == nil:
		// The secret key was given in memory (FeedOptions.SecretKey).
	default:
		if _, err := f.storedSecret(stored); err != nil {
			bad(Damage{Err: err})
		}
	}
	return nil
}

// verifyEntries checks the held entries from start on, up to end or a
// chunk's worth of bytes, and returns how many it checked.
func (f *Feed) verifyEntries(start, end uint64, st *VerifyStats, bad func(Damage)) (uint64, error) {
	count := end - start
	recs := make([]byte, (2*count-1)*nodeSize)
	got, err := f.ftree().ReadAt(recs, headerSize+int64(2*start)*nodeSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	clear(recs[got:])
	// The leaves, whose records lie end to end in the data file from lo to
	// hi. A leaf that fails, or does not follow the one before it, is
	// damage to its entry (as for readRange), and ends the chunk.
	leaves := make([]storedNode, 0, count)
	var lo, hi int64 = -1, -1
	var total uint64
	stop := uint64(0) // entries checked past the leaves: the one that ended the chunk
	for k := range count {
		seq := start + k
		n, off, err := f.decodeLeaf(recs[2*k*nodeSize:], seq)
		if err == nil && k > 0 && n.Offset != leaves[k-1].Offset+leaves[k-1].Size {
			err = &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("leaf of entry %d: offsets are not contiguous", seq)}
		}
		st.Nodes++
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				return 0, err
			}
			f.markDamaged(seq, ce)
			bad(Damage{Entry: true, Seq: seq, Err: ce})
			stop = 1
			break
		}
		if k > 0 && total+n.Size > verifyChunkBytes {
			st.Nodes--
			break
		}
		total += n.Size
		pos := dataPos(seq, n.Offset)
		if lo < 0 {
			lo = pos
		}
		hi = pos + dataFrame + int64(n.Size)
		leaves = append(leaves, n)
	}
	if len(leaves) == 0 {
		return stop, nil
	}
	raw := make([]byte, hi-lo)
	got, err = f.fdata().ReadAt(raw, lo)
	if got < len(raw) && err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	h := newLeafHasher()
	for k := range leaves {
		n := &leaves[k]
		seq := start + uint64(k)
		pos := dataPos(seq, n.Offset)
		at := pos - lo
		var ce *CorruptError
		var v []byte
		if at+dataFrame+int64(n.Size) > int64(got) {
			ce = &CorruptError{File: f.name + fileData, Offset: lo + int64(got), Reason: fmt.Sprintf("data file ends inside entry %d", seq)}
		} else if v, err = f.leafValue(h, raw[at:], n, pos); err != nil {
			errors.As(err, &ce)
		}
		if ce != nil {
			f.markDamaged(seq, ce)
			bad(Damage{Entry: true, Seq: seq, Err: ce})
			continue
		}
		st.Entries++
		st.Bytes += n.Size
		rec := raw[at : at+dataFrame+int64(n.Size)]
		if dataChecksum(seq, rec[:dataLenLen+n.Size]) != binary.BigEndian.Uint32(rec[dataLenLen+n.Size:]) {
			st.Stale++
			f.rewriteChecksum(seq, pos, v)
		}
	}
	return uint64(len(leaves)) + stop, nil
}

// verifyNodes checks the tree records that verifyEntries does not: parents,
// and the leaves of entries a replica does not hold. A record is checked
// where the tree of length has a node whose subtree is complete; a writer
// must hold every such node, a replica those its proofs carried.
func (f *Feed) verifyNodes(ctx context.Context, length uint64, st *VerifyStats, bad func(Damage)) error {
	if length == 0 {
		return nil
	}
	last := 2*length - 1 // nodes [0, last)
	const chunk = 4096
	buf := make([]byte, chunk*nodeSize)
	for lo := uint64(0); lo < last; lo += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		hi := min(last, lo+chunk)
		b := buf[:(hi-lo)*nodeSize]
		got, err := f.ftree().ReadAt(b, headerSize+int64(lo)*nodeSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		clear(b[got:])
		for i := lo; i < hi; i++ {
			if _, e := flatBlocks(i); e > length {
				continue // not a node of this tree yet
			}
			if i%2 == 0 && f.holdsEntry(i/2) {
				continue // checked with its entry
			}
			off := headerSize + int64(i)*nodeSize
			_, err := decodeNode(i, b[(i-lo)*nodeSize:], f.name, off)
			if errors.Is(err, errNoNode) {
				if f.writable {
					bad(Damage{Err: &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("node %d of a writer's tree is missing", i)}})
				}
				continue
			}
			st.Nodes++
			var ce *CorruptError
			if errors.As(err, &ce) {
				bad(Damage{Err: ce})
			} else if err != nil {
				return err
			}
		}
	}
	return nil
}

// verifySignatures checks every signature record: its CRC, and its
// signature against the roots the tree holds at its length.
func (f *Feed) verifySignatures(ctx context.Context, length uint64, st *VerifyStats, bad func(Damage)) error {
	file := f.fsigs()
	size, err := file.Size()
	if err != nil {
		return err
	}
	// Records from sigsEnd on are a tail that opening cut, or, read-only,
	// reported as a cut to make. A damaged newest record that opening
	// found is reported already: as listed damage (a replica's), or as a
	// repair made or, read-only, to be made (a writer's, re-signed).
	known := int64(-1)
	f.writeMu.Lock()
	end := min(size, f.sigsEnd)
	if d := f.sigDamage; d != nil {
		known = d.off
	}
	f.writeMu.Unlock()
	n := max(end-headerSize, 0) / sigRecordSize
	var rec [sigRecordSize]byte
	for k := range n {
		if k%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		off := headerSize + k*sigRecordSize
		if _, err := file.ReadAt(rec[:], off); err != nil {
			return err
		}
		l, sig, _, ok := decodeSigRecord(rec[:])
		if !ok && off == known {
			continue
		}
		if !ok {
			bad(Damage{Err: &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: fmt.Sprintf("signature record %d fails its checksum", k+1)}})
			continue
		}
		if l == 0 || l > length {
			st.Unchecked++
			continue
		}
		roots, err := f.readRoots(l)
		if err != nil {
			// Roots not held (a replica), or damaged (reported with
			// the tree's records).
			st.Unchecked++
			continue
		}
		if !verifyRoots(f.key, treeHash(roots), l, sig) {
			bad(Damage{Err: &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: fmt.Sprintf("the signature of length %d does not verify against the tree", l)}})
			continue
		}
		st.Signatures++
	}
	return nil
}

// verifyBitfield checks every page of a replica's bitfield below length.
func (f *Feed) verifyBitfield(length uint64, bad func(Damage)) error {
	pages := bitPages(length)
	if pages == 0 {
		return nil
	}
	buf := make([]byte, pages*bitPageSize)
	got, err := f.fbits().ReadAt(buf, headerSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	for p := range pages {
		off := headerSize + int64(p)*bitPageSize
		rec := buf[p*bitPageSize : (p+1)*bitPageSize]
		if uint64(got) < (p+1)*bitPageSize {
			bad(Damage{Err: &CorruptError{File: f.name + fileBitfield, Offset: off, Reason: fmt.Sprintf("bitfield page %d is missing", p)}})
		} else if !bitPageValid(p, rec) {
			bad(Damage{Err: &CorruptError{File: f.name + fileBitfield, Offset: off, Reason: fmt.Sprintf("bitfield page %d fails its checksum", p)}})
		}
	}
	return nil
}

// holdsEntry reports whether entry seq is held, damaged or not.
func (f *Feed) holdsEntry(seq uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.hasLocked(seq)
}
