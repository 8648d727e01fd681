package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// Signature returns the newest signature and the length it covers. sig is
// nil for an empty feed, and if the newest signature record can no longer
// be read (the files were damaged after the feed was opened).
func (f *Feed) Signature() (length uint64, sig []byte) {
	length, sig, err := f.signedNow()
	if err != nil {
		return length, nil
	}
	return length, bytes.Clone(sig)
}

// signedNow returns the feed's length and the signature that covers it,
// reading the signature from the signatures file if the feed does not hold
// it (it was opened and not used since). sig is nil for an empty feed.
func (f *Feed) signedNow() (length uint64, sig []byte, err error) {
	f.mu.RLock()
	length, signed := f.length, f.signed
	f.mu.RUnlock()
	if signed != nil || length == 0 {
		if signed != nil {
			sig = signed.sig
		}
		return length, sig, nil
	}
	f.writeMu.Lock() // sigsEnd, and the length, change only under it
	defer f.writeMu.Unlock()
	f.mu.RLock()
	length, signed, closed := f.length, f.signed, f.closed
	f.mu.RUnlock()
	if signed != nil {
		return length, signed.sig, nil
	}
	if closed {
		return length, nil, ErrClosed
	}
	if sig, err = f.newestSignatureWriteLocked(length); err != nil {
		return length, nil, err
	}
	f.mu.Lock()
	if f.signed == nil && f.length == length {
		f.signed = &signedState{sig: sig}
	}
	f.mu.Unlock()
	return length, sig, nil
}

// newestSignatureWriteLocked reads the newest signature record, which must
// cover length. Called under writeMu.
func (f *Feed) newestSignatureWriteLocked(length uint64) ([]byte, error) {
	var rec [sigRecordSize]byte
	off := f.sigsEnd - sigRecordSize
	if off < headerSize {
		return nil, &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: "no signature record"}
	}
	if _, err := f.fsigs().ReadAt(rec[:], off); err != nil {
		return nil, err
	}
	l, sig, _, ok := decodeSigRecord(rec[:])
	if !ok || l != length {
		return nil, &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: fmt.Sprintf("the newest signature record no longer covers length %d", length)}
	}
	return bytes.Clone(sig), nil
}

// signedRootsWriteLocked reads the roots of the tree at length, the feed's
// newest, and checks them against the newest signature, for a writer whose
// roots are not held (it was opened and has not appended since). Called
// under writeMu.
func (f *Feed) signedRootsWriteLocked(length uint64) ([]storedNode, error) {
	sig, err := f.newestSignatureWriteLocked(length)
	if err != nil {
		return nil, err
	}
	roots, err := f.readRoots(length)
	if err != nil {
		return nil, err
	}
	if !verifyRoots(f.key, treeHash(roots), length, sig) {
		return nil, &CorruptError{File: f.name + fileTree, Offset: headerSize, Reason: fmt.Sprintf("the roots of length %d no longer verify", length)}
	}
	return roots, nil
}

// Verify checks that sig signs this feed's tree at the given length under
// its key. It returns ErrOutOfRange for a length of 0 or past Len, and an
// error matching ErrVerify (ErrBadSignature) when sig does not sign the
// tree.
func (f *Feed) Verify(length uint64, sig []byte) error {
	if length == 0 || length > f.Len() {
		return f.opError(fmt.Sprintf("verify length %d", length), ErrOutOfRange)
	}
	roots, err := f.readRoots(length)
	if err != nil {
		return f.opError("verify", err)
	}
	if !verifyRoots(f.key, treeHash(roots), length, sig) {
		return f.opError(fmt.Sprintf("verify length %d", length), ErrBadSignature)
	}
	return nil
}

// Proof returns a proof of entries [start, end). If remoteLength is not
// zero the caller says that the receiver already holds a verified tree of
// that length; when it covers [start, end) and this feed holds that tree,
// the proof is made against it and carries no signature. Otherwise the
// proof reaches the newest signed length.
func (f *Feed) Proof(start, end, remoteLength uint64) (*Proof, error) {
	f.mu.RLock()
	closed := f.closed
	ok := f.hasRangeLocked(start, end) // still true at a later length
	f.mu.RUnlock()
	if closed {
		return nil, f.opError("proof", ErrClosed)
	}
	length, sig, err := f.signedNow()
	if err != nil {
		return nil, f.opError("proof", err)
	}
	if !ok || length == 0 {
		return nil, f.opError(fmt.Sprintf("proof of [%d, %d) with length %d", start, end, length), ErrOutOfRange)
	}
	if remoteLength > 0 && end <= remoteLength && remoteLength <= length {
		if p, err := f.proofAt(start, end, remoteLength); err == nil {
			return p, nil
		}
	}
	p, err := f.proofAt(start, end, length)
	if err == nil {
		p.Signature = bytes.Clone(sig)
		return p, nil
	}
	if !errors.Is(err, ErrNotAvailable) {
		return nil, err
	}
	// A replica that does not hold the whole tree at its newest length may
	// hold it at an older length whose signature it kept.
	if q, err := f.olderProof(start, end, length); err == nil {
		return q, nil
	}
	return nil, err
}

// maxOlderProofs bounds how many older signed lengths Proof tries.
const maxOlderProofs = 64

// olderProof looks back through the signature records below length, newest
// first, for a signed length that covers [start, end) and whose tree nodes
// this feed holds.
func (f *Feed) olderProof(start, end, length uint64) (*Proof, error) {
	err := error(ErrNotAvailable)
	tries := 0
	try := func(file File, ascending bool) *Proof {
		if file == nil {
			return nil
		}
		size, serr := file.Size()
		if serr != nil {
			return nil
		}
		n := max(size-headerSize, 0) / sigRecordSize
		for k := n - 1; k >= 0 && tries < maxOlderProofs; k-- {
			var rec [sigRecordSize]byte
			if _, rerr := file.ReadAt(rec[:], headerSize+k*sigRecordSize); rerr != nil {
				return nil
			}
			l, sig, _, ok := decodeSigRecord(rec[:])
			if !ok || l >= length {
				continue
			}
			if l < end {
				if ascending {
					break
				}
				continue
			}
			tries++
			p, perr := f.proofAt(start, end, l)
			if perr != nil {
				err = perr
				continue
			}
			p.Signature = bytes.Clone(sig)
			return p
		}
		return nil
	}
	// The signatures file holds ascending lengths; the file of older ones
	// holds them in the order they arrived.
	if p := try(f.fsigs(), true); p != nil {
		return p, nil
	}
	var older File
	f.writeMu.Lock()
	if f.ws != nil {
		older = f.ws.older
	}
	f.writeMu.Unlock()
	if older == nil {
		if file, oerr := f.cfg.store.Open(f.name+fileOlderSigs, false); oerr == nil {
			defer file.Close()
			older = file
		}
	}
	if p := try(older, false); p != nil {
		return p, nil
	}
	return nil, f.opError(fmt.Sprintf("proof of [%d, %d)", start, end), err)
}

func (f *Feed) proofAt(start, end, length uint64) (*Proof, error) {
	p := &Proof{Start: start, Length: length}
	for _, i := range proofIndexes(nil, start, end, length) {
		n, err := f.readNode(i)
		if errors.Is(err, errNoNode) {
			if f.writable {
				err = &CorruptError{File: f.name + fileTree, Offset: headerSize + int64(i)*nodeSize, Reason: fmt.Sprintf("node %d of a writer's tree is missing", i)}
			} else {
				err = fmt.Errorf("%w: this replica does not hold node %d", ErrNotAvailable, i)
			}
		}
		if err != nil {
			return nil, f.opError(fmt.Sprintf("proof of [%d, %d) at length %d", start, end, length), err)
		}
		p.Nodes = append(p.Nodes, n.Node)
	}
	if start < end {
		blocks, err := f.getBlocks(context.Background(), start, end)
		if err != nil {
			return nil, err
		}
		p.Blocks = blocks
	}
	return p, nil
}
