package kappa

import (
	"errors"
	"fmt"
)

// A write of an Append or a Put that fails leaves the feed's files as they
// were in its published (signed) state, or the feed refuses writes:
//
//   - After a failed write, rollbackWriteLocked puts the files back: it cuts the
//     signatures, tree and data files (and a replica's bitfield) back to
//     where the published state ends, zeroes the tree nodes the write added
//     below that end (they were absent), writes back the bitfield pages it
//     touched, and forgets the cached tree records. A later, smaller append
//     then cannot leave leaves of the failed one behind it, with a
//     signature-record ordinal recovery would read as records gone missing.
//   - After a failed sync, the files' durable content is unknown, and a
//     signature record whose sync failed may still land: the files are left
//     as they are (cutting the tree under a record that lands would damage
//     the feed), and the feed refuses every further write until it is
//     opened again, when recovery finds what landed. The same holds when
//     undoing a failed write fails.

// writeUndo is what rollbackWriteLocked needs to put a feed's files back: the
// published state a write started from, and what it wrote below its end.
type writeUndo struct {
	length, byteLen uint64
	// bitPages is the number of bitfield pages the file held (replicas).
	bitPages uint64
	// nodes returns the indexes of the tree nodes the write may have
	// added below the published tree's end, nodes that were absent.
	nodes func() []uint64
	// bitLo, bitHi are the bitfield pages the write may have rewritten.
	bitLo, bitHi uint64
}

// abortWriteLocked undoes a failed write (see writeUndo) and returns err. A
// failed sync was recorded in ws.failed already (see
// writeSignatureWriteLocked and Put): then nothing is undone. A failed undo
// is recorded there too, and named in the error. Called under writeMu.
func (f *Feed) abortWriteLocked(u *writeUndo, err error) error {
	ws := f.scratchWriteLocked()
	ws.recent.forget()
	if ws.failed != nil {
		return err
	}
	uerr := f.rollbackWriteLocked(u)
	if uerr == nil && f.journaling() {
		// The next appends are journaled, their files not synced:
		// the undo is made durable now, else a crash could bring the
		// failed append's records back beside theirs.
		for _, file := range []File{f.fdata(), f.ftree(), f.fsigs()} {
			if uerr = file.Sync(); uerr != nil {
				break
			}
		}
	}
	if uerr != nil {
		uerr = f.opError("undo a failed write", uerr)
		ws.failed = uerr
		return errors.Join(err, uerr)
	}
	return err
}

// rollbackWriteLocked puts the files back in the state u describes.
func (f *Feed) rollbackWriteLocked(u *writeUndo) error {
	var errs []error
	// The signature record first: once it is gone, what follows is
	// unsigned whatever happens next.
	errs = append(errs, cutFile(f.fsigs(), f.sigsEnd))
	treeEnd := int64(headerSize)
	if u.length > 0 {
		treeEnd += int64(2*u.length-1) * nodeSize
	}
	if u.nodes != nil {
		if size, err := f.ftree().Size(); err != nil {
			errs = append(errs, err)
		} else {
			var zero [nodeSize]byte
			for _, i := range u.nodes() {
				off := headerSize + int64(i)*nodeSize
				if off+nodeSize > min(size, treeEnd) {
					continue // cut below, or never in the file
				}
				if _, err := f.ftree().WriteAt(zero[:], off); err != nil {
					errs = append(errs, err)
					break
				}
			}
		}
	}
	errs = append(errs, cutFile(f.ftree(), treeEnd))
	errs = append(errs, cutFile(f.fdata(), dataPos(u.length, u.byteLen)))
	if !f.writable && (u.bitHi > u.bitLo || f.bitPages != u.bitPages) {
		errs = append(errs, f.restoreBitsWriteLocked(u))
	}
	return errors.Join(errs...)
}

// cutFile truncates file to size if it is longer.
func cutFile(file File, size int64) error {
	old, err := file.Size()
	if err != nil || old <= size {
		return err
	}
	return file.Truncate(size)
}

// restoreBitsWriteLocked writes back the bitfield pages a failed Put may have
// rewritten, from the blocks the feed held before it, and cuts the pages it
// added.
func (f *Feed) restoreBitsWriteLocked(u *writeUndo) error {
	f.bitPages = u.bitPages
	if err := cutFile(f.fbits(), headerSize+int64(u.bitPages)*bitPageSize); err != nil {
		return err
	}
	lo, hi := u.bitLo, min(u.bitHi, u.bitPages)
	if lo >= hi {
		return nil
	}
	f.mu.RLock()
	buf := f.have.bytesFor(lo*bitPageEntries, hi*bitPageEntries)
	f.mu.RUnlock()
	out := make([]byte, (hi-lo)*bitPageSize)
	for p := lo; p < hi; p++ {
		rec := out[(p-lo)*bitPageSize : (p-lo+1)*bitPageSize]
		copy(rec, buf[(p-lo)*bitPageBytes:(p-lo+1)*bitPageBytes])
		encodeBitPage(rec, p)
	}
	_, err := f.fbits().WriteAt(out, headerSize+int64(lo)*bitPageSize)
	return err
}

// undoManifest cuts the manifest back to its records before a failed write
// of new ones, so that a torn or unlisted record cannot name a feed that
// was not added; if that fails too, adding feeds is refused until the
// database is opened again. (After a failed sync nothing is cut: the
// records may land yet, and adding feeds is refused.) It returns err, the
// write's error. Called under addMu.
func (c *Core) undoManifest(err error) error {
	uerr := cutFile(c.manifest, int64(headerSize+c.slots*manifestRecord))
	if uerr == nil {
		return err
	}
	uerr = fmt.Errorf("undo a failed manifest write: %w", uerr)
	if c.addFailed == nil {
		c.addFailed = uerr
	}
	return errors.Join(err, uerr)
}
