package kappa

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"sync"
	"sync/atomic"
)

// slotState reports whether the feed slot holds any files, and whether any
// of them holds data past its header: signed entries, or part of them.
func slotState(s Storage, slot int) (exists, hasData bool, err error) {
	prefix := feedPrefix(slot)
	for _, name := range []string{fileKey, fileData, fileTree, fileSignatures, fileBitfield} {
		file, err := s.Open(prefix+name, false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, false, err
		}
		size, err := file.Size()
		file.Close()
		if err != nil {
			return false, false, err
		}
		exists = true
		if name != fileKey && size > headerSize {
			hasData = true
		}
	}
	return exists, hasData, nil
}

// checkWriterKey reports, as ErrCorrupt, a local writer's key file that is
// missing, short or blank, or holds no secret key for key. A writer's key
// file is durable before its manifest record is written, so this is
// damage: opening the feed would make it a replica, or a new feed, in place
// of the writer.
func checkWriterKey(s Storage, prefix string, key []byte) error {
	bad := &CorruptError{File: prefix + fileKey, Offset: 0, Reason: "the writer's key file is missing or holds no secret key"}
	file, err := s.Open(prefix+fileKey, false)
	if errors.Is(err, fs.ErrNotExist) {
		return bad
	}
	if err != nil {
		return err
	}
	defer file.Close()
	var buf [metaSize]byte
	if _, err := file.ReadAt(buf[:], 0); errors.Is(err, io.EOF) {
		return bad
	} else if err != nil {
		return err
	}
	_, pub, secret, ok := decodeKeyRecord(buf[:])
	switch {
	case ok && (secret == nil || !bytes.Equal(pub, key)):
		return bad
	case !ok && isZero(buf[:]):
		// Beside files that hold no entry, OpenFeed would take a blank
		// key file for a creation torn by a crash, and make the writer
		// a new replica.
		return bad
	}
	return nil // a damaged record is OpenFeed's to report
}

// load opens the database's files and loads it, in steps: the shared key,
// the manifest's header, its records and the feed of each, and the slots
// past the manifest's end. Damage that spares the rest of the database is
// reported (see Damaged); an error is returned only for damage that leaves
// nothing to open.
func (c *Core) load() error {
	if err := c.openFiles(); err != nil {
		return err
	}
	msize, err := c.manifest.Size()
	if err != nil {
		return err
	}
	hasFeeds := msize > headerSize
	if !hasFeeds {
		// A manifest cut back to its header or shorter may hide feeds:
		// with a feed in slot 0, the database is not new.
		if hasFeeds, _, err = slotState(c.store, 0); err != nil {
			return err
		}
	}
	if err := c.loadKey(hasFeeds); err != nil {
		return err
	}
	c.feedCfg = &feedConfig{store: c.store, enc: c.enc, noSync: c.opts.NoSync, readOnly: c.opts.ReadOnly, damaged: c.feedDamaged, healed: c.feedHealed,
		context: c.appendContext, contextLost: c.contextLost, stored: c.causalStored}
	headerCut := msize < headerSize
	if headerCut {
		// New, or its header was cut: it holds no record, and slots that
		// hold feed files are reported below.
		if err := c.writeManifestHeader(); err != nil {
			return err
		}
		msize = headerSize
	}
	if err := c.checkManifestHeader(); err != nil {
		return err
	}
	recs, partial, err := c.readManifest(msize)
	if err != nil {
		return err
	}
	opened := c.openSlots(recs)
	defer func() {
		for _, j := range opened {
			if j.f != nil { // not taken: load failed
				j.f.Close()
			}
		}
	}()
	n, torn, recordLost, err := c.loadRecords(recs, opened)
	if err != nil {
		return err
	}
	if torn {
		partial = false
	}
	c.slots = n
	// A partial last record that holds (its lost bytes were zeros) ends the
	// manifest as well: no feed was added after it.
	return c.loadPastEnd(n, headerCut || recordLost || partial)
}

// openFiles opens the database's key file and its manifest, creating them
// unless the database is read-only. A read-only database without a
// manifest reads as one with an empty manifest.
func (c *Core) openFiles() error {
	ro := c.opts.ReadOnly
	var err error
	if c.meta, err = c.store.Open(fileDB, !ro); ro && errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: there is no database here: %w", ErrReadOnly, err)
	} else if err != nil {
		return err
	}
	if c.manifest, err = c.store.Open(fileManifest, !ro); ro && errors.Is(err, fs.ErrNotExist) {
		c.manifest = &memFileRO{} // as if created
	} else if err != nil {
		return err
	}
	return nil
}

// writeManifestHeader writes the header of a new manifest, or of one whose
// header a crash cut; a read-only database reads it as written.
func (c *Core) writeManifestHeader() error {
	hdr := encodeHeader(magicManifest, manifestRecord)
	if c.opts.ReadOnly {
		c.manifest.Close()
		c.manifest = &memFileRO{data: hdr[:]} // as written
		return nil
	}
	if _, err := c.manifest.WriteAt(hdr[:], 0); err != nil {
		return err
	}
	return c.sync(c.manifest)
}

// checkManifestHeader reports a manifest header that is not this format's.
func (c *Core) checkManifestHeader() error {
	hdr := encodeHeader(magicManifest, manifestRecord)
	var got [headerSize]byte
	if _, err := c.manifest.ReadAt(got[:], 0); err != nil {
		return err
	}
	if got != hdr {
		return &CorruptError{File: fileManifest, Offset: 0, Reason: "bad header"}
	}
	return nil
}

// readManifest reads and decodes the records of a manifest of msize bytes.
// partial reports a last record cut short, which is decoded as if its
// missing bytes were zeros: a torn append, unless its slot holds data.
func (c *Core) readManifest(msize int64) (recs []manifestEntry, partial bool, err error) {
	n := int((msize - headerSize) / manifestRecord)
	partial = (msize-headerSize)%manifestRecord != 0
	if partial {
		n++
	}
	buf := make([]byte, n*manifestRecord)
	if _, err := c.manifest.ReadAt(buf, headerSize); err != nil && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	recs = make([]manifestEntry, n)
	for i := range recs {
		e := &recs[i]
		e.flags, e.key, e.name, e.ok = decodeManifestRec(buf[i*manifestRecord : (i+1)*manifestRecord])
	}
	return recs, partial, nil
}

// loadRecords loads, in manifest order, the feed of each record, taking
// those openSlots opened. It returns how many records the manifest holds:
// all of recs, less a torn last record (torn) whose slot holds no data, as
// its feed was never handed out. recordLost reports a damaged record, or
// feed files whose record was lost.
func (c *Core) loadRecords(recs []manifestEntry, opened []slotOpen) (n int, torn, recordLost bool, err error) {
	n = len(recs)
	for i, rec := range recs {
		switch {
		case !rec.ok:
			_, hasData, err := slotState(c.store, i)
			if err != nil {
				return 0, false, false, err
			}
			if i == n-1 && !hasData {
				// A torn last record: its feed was never handed out.
				return n - 1, true, recordLost, nil
			}
			// A torn record cannot explain a slot that holds data, nor
			// a bad record before the last: damage, kept as it is.
			c.damage(Damage{Slot: i, Err: &CorruptError{File: fileManifest, Offset: int64(headerSize + i*manifestRecord), Reason: "record is damaged; the feed is kept but not loaded"}})
			recordLost = true
		case rec.flags&flagReserved != 0:
			if exists, _, err := slotState(c.store, i); err != nil {
				return 0, false, false, err
			} else if exists {
				recordLost = true
				c.damage(Damage{Slot: i, Err: &CorruptError{File: feedPrefix(i), Offset: 0, Reason: "feed files whose manifest record was lost; kept but not loaded"}})
			}
		default:
			c.loadRecord(i, rec, &opened[i])
		}
	}
	return n, false, recordLost, nil
}

// loadRecord loads the feed of the record in slot i, which j holds if
// openSlots opened it; a feed that does not load is reported as damage.
func (c *Core) loadRecord(i int, rec manifestEntry, j *slotOpen) {
	off := int64(headerSize + i*manifestRecord)
	key, name := bytes.Clone(rec.key), rec.name
	local := rec.flags&flagLocal != 0
	var f *Feed
	var err error
	switch {
	case j.started:
		f, err = j.f, j.err
		j.f = nil
		for _, r := range j.repairs {
			c.repaired(r)
		}
	case c.byKey[string(key)] != nil || (local && c.byName[name] != nil):
		err = &CorruptError{File: fileManifest, Offset: off, Reason: "record names a feed or writer that an earlier record holds"}
	default: // the earlier record of its key or name failed to load
		f, err = c.openSlot(i, key, local, c.repaired)
	}
	if err != nil {
		d := Damage{Slot: i, Key: key, Err: err}
		if local {
			d.Name = name
			if c.byName[name] == nil {
				c.lost[name] = err
			}
		}
		c.damage(d)
		return
	}
	if local {
		delete(c.lost, name) // an earlier record of the name was damaged
	}
	c.addLocked(f, local, name)
	c.reportOpenDamage(f)
	f.reportLoadedFork()
}

// loadPastEnd looks at the slots past the manifest's n records, after a
// manifest that lost records or not (lost).
//
// Slots past the manifest hold feeds whose records were cut from it:
// they are reported, and reserved when the next feed is added. The
// exception is a creation torn by a crash (a feed's files are written
// before its record; AddFeeds writes several): slots past the end that
// hold no data, behind a manifest that shows no other damage. The next
// feed added clears them. Where records were lost, an empty slot is no
// proof of a torn creation, and may hold a writer's key: it is kept.
func (c *Core) loadPastEnd(n int, lost bool) error {
	c.reserveTo = n
	var past []int
	for slot := n; ; slot++ {
		exists, hasData, err := slotState(c.store, slot)
		if err != nil {
			return err
		}
		if !exists {
			break
		}
		past = append(past, slot)
		lost = lost || hasData
	}
	if lost {
		for _, slot := range past {
			c.reserveTo = slot + 1
			c.damage(Damage{Slot: slot, Err: &CorruptError{File: fileManifest, Offset: int64(headerSize + slot*manifestRecord), Reason: "no record for the feed files in this slot; kept but not loaded"}})
		}
		return nil // keep whatever partial record is there
	}
	return c.truncate(c.manifest, fileManifest, int64(headerSize+n*manifestRecord), "torn record of a feed that holds no data")
}

// slotOpen is a feed that openSlots opened (or failed to), with the repairs
// opening it made, to be reported in manifest order.
type slotOpen struct {
	started bool
	f       *Feed
	err     error
	repairs []Repair
}

// manifestEntry is a decoded manifest record; see decodeManifestRec.
type manifestEntry struct {
	flags byte
	key   []byte
	name  string
	ok    bool
}

// openSlots opens, side by side, the feeds of the manifest records whose
// key (and writer name) no earlier record names: opening one
// checks its signature, and needs nothing of the others. What each result
// means is worked out by load in manifest order; a record that repeats an
// earlier key or name is left to load, as it depends on how that one did.
func (c *Core) openSlots(recs []manifestEntry) []slotOpen {
	out := make([]slotOpen, len(recs))
	keys, names := map[string]bool{}, map[string]bool{}
	var first []int
	for i, r := range recs {
		if !r.ok || r.flags&flagReserved != 0 {
			continue
		}
		local := r.flags&flagLocal != 0
		if !keys[string(r.key)] && !(local && names[r.name]) {
			first = append(first, i)
		}
		keys[string(r.key)] = true
		if local {
			names[r.name] = true
		}
	}
	inParallel(len(first), max(4, 2*runtime.GOMAXPROCS(0)), func(k int) {
		i := first[k]
		j := &out[i]
		j.started = true
		local := recs[i].flags&flagLocal != 0
		j.f, j.err = c.openSlot(i, bytes.Clone(recs[i].key), local, func(r Repair) { j.repairs = append(j.repairs, r) })
	})
	return out
}

// openSlot opens the feed of slot i, whose manifest record names key (a
// local writer's key file must hold it), sending its repairs to onRepair.
func (c *Core) openSlot(i int, key []byte, local bool, onRepair func(Repair)) (*Feed, error) {
	if local {
		if err := checkWriterKey(c.store, feedPrefix(i), key); err != nil {
			return nil, err
		}
	}
	o := c.feedOptions()
	o.Key = key
	o.rewriteKey = !local
	o.OnRepair = onRepair
	return OpenFeed(c.store, feedPrefix(i), o)
}

// inParallel calls fn(i) for each i in [0, n), at most limit at once, and
// returns when all returned. Its limit goroutines take the next i in turn,
// so that a goroutine's stack, grown by one call, serves the next: with a
// goroutine per call, growing each new stack cost a database of 10,000
// feeds 6 % of its open.
func inParallel(n, limit int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, limit) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// truncate cuts file name to size if it is longer, and reports the repair.
// A read-only database reports it and leaves the file as it is.
func (c *Core) truncate(file File, name string, size int64, why string) error {
	old, err := file.Size()
	if err != nil || old <= size {
		return err
	}
	if c.opts.ReadOnly {
		c.repaired(Repair{File: name, From: old, To: size, Reason: why})
		return nil
	}
	if err := file.Truncate(size); err != nil {
		return err
	}
	c.repaired(Repair{File: name, From: old, To: size, Reason: why})
	return nil
}

// loadKey reads the shared key, or creates it for a new database.
func (c *Core) loadKey(hasFeeds bool) error {
	size, err := c.meta.Size()
	if err != nil {
		return err
	}
	var buf [dbMetaSize]byte
	if size >= dbMetaSize {
		if _, err := c.meta.ReadAt(buf[:], 0); err != nil {
			return err
		}
	}
	if !dbMetaValid(buf[:]) {
		if hasFeeds || (size >= dbMetaSize && !isZero(buf[:])) {
			return &CorruptError{File: fileDB, Offset: 0, Reason: "database key file is damaged"}
		}
		// New, or its creation was torn before anything else was written.
		if c.opts.ReadOnly {
			return fmt.Errorf("%w: there is no database here (%s holds no key): %w", ErrReadOnly, fileDB, fs.ErrNotExist)
		}
		key := c.opts.SharedKey
		if key == nil {
			key = make([]byte, 32)
			rand.Read(key)
		}
		c.key = bytes.Clone(key)
		c.enc = c.opts.ValueEncoding
		if c.enc == "" {
			c.enc = Binary
		}
		buf = encodeDBMeta(key, c.enc)
		if _, err := c.meta.WriteAt(buf[:], 0); err != nil {
			return err
		}
		return c.sync(c.meta)
	}
	if v := binary.BigEndian.Uint32(buf[dbVersionAt:]); v != formatVersion {
		return &CorruptError{File: fileDB, Offset: dbVersionAt, Reason: "database of " + otherFormat(v)}
	}
	enc, ok := encodingFromCode(buf[dbEncOff])
	if !ok {
		return &CorruptError{File: fileDB, Offset: dbEncOff, Reason: fmt.Sprintf("unknown value encoding %d", buf[dbEncOff])}
	}
	c.enc = enc
	c.key = bytes.Clone(buf[dbKeyOff : dbKeyOff+32])
	if c.opts.SharedKey != nil && !bytes.Equal(c.opts.SharedKey, c.key) {
		return fmt.Errorf("%w: the database has another shared key", ErrKeyMismatch)
	}
	if c.opts.ValueEncoding != "" && c.opts.ValueEncoding != c.enc {
		return fmt.Errorf("%w: opened as %s, created as %s", ErrEncodingMismatch, c.opts.ValueEncoding, c.enc)
	}
	if !hasFeeds {
		// Its creation may have failed at syncing this file: it must
		// be durable before a feed is added.
		return c.sync(c.meta)
	}
	return nil
}
