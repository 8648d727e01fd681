package kappa

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"slices"
	"sync"
	"unicode/utf8"
)

// Options configure a database. The zero value is ready to use: binary
// values, a fresh shared key for a new database, every write synced.
type Options struct {
	// ValueEncoding is Binary, JSON or UTF8. A new database stores it
	// (Binary if empty); an existing one is opened with the stored
	// encoding when this is empty, and fails with ErrEncodingMismatch
	// when it names another. Appends through writers refuse values that
	// do not match it, and views can decode entries with Entry.Decode.
	ValueEncoding Encoding

	// SharedKey is the database's 32-byte shared secret (multifeed's
	// encryption key): only peers that know it may replicate. A new
	// database takes it, or generates one if nil; an existing database
	// must have this key, else Open fails with ErrKeyMismatch.
	SharedKey []byte

	// Sparse makes replicas fetch only what is asked for: entries a Get
	// or GetBatch waits for, and ranges passed to Feed.Download. Without
	// it, replication fetches every entry of every feed.
	Sparse bool

	// NoSync turns off fsync for every feed and for the database's own
	// files; see FeedOptions.NoSync.
	NoSync bool

	// OnError receives errors that no call returns: a view's Map or state
	// failing, a feed that could not be loaded, an entry found damaged (a
	// Damage with Entry set, reported once, by whichever read found it). It
	// is called from background goroutines and must not block for long. A
	// view's error reaches it before Ready returns it or Status shows it.
	// Damage is also listed by Core.Damaged.
	OnError func(error)

	// OnRepair receives each change that opening made to stored files to
	// recover from a crash (a torn tail cut back), and each one made later
	// to heal stored records (a stale checksum rewritten, a damaged entry
	// rewritten from a peer's verified copy); see Repair. Core.Repairs
	// lists them too. It may be called from several goroutines at once
	// (feeds added together are opened side by side).
	OnRepair func(Repair)

	// MaxOpenFiles bounds the file descriptors Open's directory storage
	// keeps open; zero means the default of DirOptions.
	MaxOpenFiles int

	// ReadOnly opens an existing database without writing to it, so that
	// it can be read on read-only media or next to other readers. Open
	// takes a shared lock (see DirOptions.ReadOnly): read-only opens of a
	// directory coexist, and exclude a writer. Opening reports each repair
	// it would make (Repairs, OnRepair) but makes none, and loads the state
	// the repair would give. What would write fails with ErrReadOnly:
	// Append, Writer or AddFeeds creating a feed, Replicate, and Use of a
	// view that implements StateStorer or IndexClearer (views without
	// them run as usual, in memory). Open fails with ErrReadOnly where
	// there is no database.
	ReadOnly bool
}

// Core is a kappa database: a set of feeds, some written here and some
// replicated from peers, and the views built over all of them. A Core is
// safe for concurrent use.
type Core struct {
	store    Storage
	ownStore bool
	opts     Options
	key      []byte
	enc      Encoding    // the stored value encoding
	feedCfg  *feedConfig // what its feeds share; set by load
	meta     File
	manifest File

	addMu sync.Mutex // serializes adding feeds (and writing the manifest)
	slots int        // manifest records, used or not; guarded by addMu
	// addFailed is why adding feeds is refused until the database is
	// opened again: a manifest sync failed, or undoing a failed manifest
	// write did. Guarded by addMu.
	addFailed error

	mu           sync.RWMutex
	feeds        []*Feed
	byKey        map[string]*Feed
	byName       map[string]*Feed
	lost         map[string]error // writer names whose feed did not load
	damaged      []Damage
	repairs      []Repair
	reserveTo    int // manifest slots below this hold unlisted feed files; guarded by addMu
	feedsChanged chan struct{}
	views        map[string]*Index
	viewList     []*Index
	closed       bool

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Files of a database, besides each feed's files under "feeds/N/".
const (
	fileDB       = "kappa"
	fileManifest = "manifest"

	flagLocal = 1
	// flagReserved marks a record written for a slot whose feed files were
	// found without a manifest record: the slot is never reused.
	flagReserved = 2
)

// Damage is damage the database found: a feed it did not load, or lost
// track of, whose files are kept as they are (nothing is cut or reused);
// or, in a feed that is loaded, damage found after opening: one entry
// (Entry is set), a signature record, or a fork (Err matches ErrForked).
type Damage struct {
	Slot int    // the feed's place in the manifest: its files are under "feeds/<Slot>/"
	Key  []byte // the feed's public key, nil if unknown
	Name string // the local writer's name, "" for a replica or if unknown

	// Entry is set when the damage is in one entry, Seq, of a feed that
	// is loaded: its other entries are read, indexed and served as usual.
	Entry bool
	Seq   uint64

	Err error // what is wrong; matches ErrCorrupt when stored data is damaged
}

// Error describes the damage; a Damage is reported to Options.OnError as an
// error that wraps Err.
func (d Damage) Error() string {
	who := fmt.Sprintf("feed %d", d.Slot)
	if d.Key != nil {
		who += fmt.Sprintf(" (%x)", d.Key[:4])
	}
	if d.Name != "" {
		who += fmt.Sprintf(" writer %q", d.Name)
	}
	if d.Entry {
		who += fmt.Sprintf(" entry %d", d.Seq)
	}
	return who + ": " + d.Err.Error()
}

// Unwrap returns Err.
func (d Damage) Unwrap() error { return d.Err }

// Repair is a change made to a stored file: by opening, a tail that a crash
// left torn, cut back to the last state that verifies; later, a record
// rewritten in place (a stale checksum over an intact value, a damaged
// entry or tree record replaced by a verified copy from a peer), for which
// From and To are both the file's size. Repairs never remove anything that
// an Append or Put had acknowledged as durable. A read-only database
// (Options.ReadOnly) reports the repairs it would make, and leaves the
// files as they are.
type Repair struct {
	File   string // the file's name in its Storage
	From   int64  // its size before
	To     int64  // its size after
	Reason string
}

func (r Repair) String() string {
	if r.From == r.To {
		return fmt.Sprintf("%s: %s", r.File, r.Reason)
	}
	return fmt.Sprintf("%s cut from %d to %d bytes: %s", r.File, r.From, r.To, r.Reason)
}

// Open opens the database in directory dir, creating it if needed. The
// directory is locked: a second Open of it fails with ErrLocked until Close.
// With Options.ReadOnly the database must exist, and the lock is shared with
// other read-only opens.
func Open(dir string, opts *Options) (*Core, error) {
	var do DirOptions
	if opts != nil {
		do = DirOptions{MaxOpenFiles: opts.MaxOpenFiles, NoSync: opts.NoSync, ReadOnly: opts.ReadOnly}
	}
	s, err := OpenDir(dir, &do)
	if err != nil {
		if do.ReadOnly && errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrReadOnly, err)
		}
		return nil, err
	}
	c, err := openCore(s, opts)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	c.ownStore = true
	return c, nil
}

// New opens the database held in s, creating it if s is empty. Close does
// not close s.
func New(s Storage, opts *Options) (*Core, error) {
	c, err := openCore(s, opts)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return c, nil
}

func openCore(s Storage, opts *Options) (*Core, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil storage", ErrInvalidValue)
	}
	c := &Core{
		store:        s,
		byKey:        make(map[string]*Feed),
		byName:       make(map[string]*Feed),
		lost:         make(map[string]error),
		views:        make(map[string]*Index),
		feedsChanged: make(chan struct{}),
		done:         make(chan struct{}),
	}
	if opts != nil {
		c.opts = *opts
	}
	if c.opts.ValueEncoding != "" {
		enc, err := c.opts.ValueEncoding.normalize()
		if err != nil {
			return nil, err
		}
		c.opts.ValueEncoding = enc
	}
	if c.opts.SharedKey != nil && len(c.opts.SharedKey) != 32 {
		return nil, fmt.Errorf("%w: shared key is %d bytes, want 32", ErrInvalidKey, len(c.opts.SharedKey))
	}
	if err := c.load(); err != nil {
		for _, f := range c.feeds {
			f.Close()
		}
		for _, f := range []File{c.meta, c.manifest} {
			if f != nil {
				f.Close()
			}
		}
		return nil, err
	}
	// Permissions OpenDir tightened on a database's secret files.
	if ds, ok := s.(*DirStorage); ok {
		for _, r := range ds.takeRepairs() {
			c.repaired(r)
		}
	}
	return c, nil
}

// feedOptions are the options every feed of the database is opened with.
func (c *Core) feedOptions() *FeedOptions {
	return &FeedOptions{ValueEncoding: c.enc, NoSync: c.opts.NoSync, ReadOnly: c.opts.ReadOnly, OnRepair: c.repaired, cfg: c.feedCfg}
}

func (c *Core) repaired(r Repair) {
	c.mu.Lock()
	c.repairs = append(c.repairs, r)
	c.mu.Unlock()
	if c.opts.OnRepair != nil {
		c.opts.OnRepair(r)
	}
}

// damage records a feed that is damaged and reports it.
func (c *Core) damage(d Damage) {
	c.mu.Lock()
	c.damaged = append(c.damaged, d)
	c.mu.Unlock()
	c.report(d)
}

// Damaged lists the damage the database found, each with the reason: feeds
// it did not load (or whose manifest record was lost), and damage found
// since in feeds that are loaded (see Damage). The files of a feed that
// did not load are kept untouched; a local writer's name whose feed is
// listed here makes Writer fail rather than create a new feed. Views do
// not index these feeds, and Ready does not wait for them. Damage that
// heals (a replica fetches a verified copy of a damaged entry) leaves the
// list, and the healing is reported as a Repair.
func (c *Core) Damaged() []Damage {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.damaged)
}

// feedDamaged records damage found in a loaded feed, and reports it once:
// the same entry (or, for other damage, the same error text) found again
// is not listed twice. Feeds call it through their feedConfig.
func (c *Core) feedDamaged(f *Feed, d Damage) {
	d.Slot, d.Key, d.Name = feedSlot(f), f.Key(), f.writer
	c.mu.Lock()
	for _, old := range c.damaged {
		if bytes.Equal(old.Key, d.Key) && old.Entry == d.Entry &&
			((d.Entry && old.Seq == d.Seq) || (!d.Entry && old.Err.Error() == d.Err.Error())) {
			c.mu.Unlock()
			return
		}
	}
	c.damaged = append(c.damaged, d)
	c.mu.Unlock()
	c.report(d)
}

// feedHealed removes from the list the damage of f that match reports as
// healed, and reports r as a repair.
func (c *Core) feedHealed(f *Feed, match func(Damage) bool, r Repair) {
	key := f.Key()
	c.mu.Lock()
	c.damaged = slices.DeleteFunc(c.damaged, func(d Damage) bool {
		return bytes.Equal(d.Key, key) && match(d)
	})
	c.mu.Unlock()
	c.repaired(r)
}

// feedSlot returns the manifest slot of a feed of a Core, from its prefix
// "feeds/N/"; -1 for a feed outside a Core.
func feedSlot(f *Feed) int {
	var slot int
	if _, err := fmt.Sscanf(f.name, "feeds/%d/", &slot); err != nil {
		return -1
	}
	return slot
}

// Repairs lists the torn tails that opening the database cut back (on a
// read-only database: would have cut back); see Repair.
func (c *Core) Repairs() []Repair {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.repairs)
}

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
// missing or holds no secret key for key. A writer's key file is durable
// before its manifest record is written, so this is damage: opening the feed
// would make it a replica, or a new feed, in place of the writer.
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
	if _, pub, secret, ok := decodeKeyRecord(buf[:]); ok && (secret == nil || !bytes.Equal(pub, key)) {
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
	c.feedCfg = &feedConfig{store: c.store, enc: c.enc, noSync: c.opts.NoSync, readOnly: c.opts.ReadOnly, damaged: c.feedDamaged, healed: c.feedHealed}
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
// returns when all returned.
func inParallel(n, limit int, fn func(i int)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
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
		return &CorruptError{File: fileDB, Offset: dbVersionAt, Reason: fmt.Sprintf("format version %d; this build reads version %d", v, formatVersion)}
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

func (c *Core) sync(f File) error {
	if c.opts.NoSync || c.opts.ReadOnly {
		return nil
	}
	return f.Sync()
}

func feedPrefix(slot int) string { return fmt.Sprintf("feeds/%d/", slot) }

// addLocked publishes a loaded or created feed.
func (c *Core) addLocked(f *Feed, local bool, name string) {
	c.mu.Lock()
	c.feeds = append(c.feeds, f)
	c.byKey[string(f.Key())] = f
	if local {
		c.byName[name] = f
		f.writer = name
	}
	close(c.feedsChanged)
	c.feedsChanged = make(chan struct{})
	c.mu.Unlock()
}

func (c *Core) report(err error) {
	if c.opts.OnError != nil {
		c.opts.OnError(err)
	}
}

// ValueEncoding returns the value encoding the database was created with.
func (c *Core) ValueEncoding() Encoding { return c.enc }

// SharedKey returns the database's 32-byte shared key, to hand to peers
// that may replicate with it.
func (c *Core) SharedKey() []byte { return bytes.Clone(c.key) }

// Writer returns the local writable feed called name, creating it if there
// is none. Names are local (they are not replicated) and persist across
// restarts; any non-empty string of up to 88 bytes works, including ones
// that look like numbers.
func (c *Core) Writer(name string) (*Feed, error) {
	return c.writer(name, nil)
}

// WriterWithKeyPair is Writer for a feed created from an existing key
// pair. If the writer exists already, it must have that key.
func (c *Core) WriterWithKeyPair(name string, kp KeyPair) (*Feed, error) {
	if len(kp.SecretKey) != SecretKeySize {
		return nil, fmt.Errorf("writer %q: %w: secret key is %d bytes", name, ErrInvalidKey, len(kp.SecretKey))
	}
	return c.writer(name, &kp)
}

// checkName reports whether name can name a writer: 1 to 88 bytes of
// UTF-8 without control characters or slashes, and not "." or "..", so that
// a name is also safe to show and to use in a path.
func checkName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("writer %q: %w: %s", name, ErrInvalidValue, why)
	}
	switch {
	case name == "" || len(name) > maxNameLen:
		return bad(fmt.Sprintf("a name is 1 to %d bytes", maxNameLen))
	case !utf8.ValidString(name):
		return bad("a name is UTF-8")
	case name == "." || name == "..":
		return bad("a name is not . or ..")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' {
			return bad("a name has no control characters or slashes")
		}
	}
	return nil
}

func (c *Core) writer(name string, kp *KeyPair) (*Feed, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	c.mu.RLock()
	lost := c.lost[name]
	c.mu.RUnlock()
	if lost != nil {
		return nil, fmt.Errorf("writer %q: its feed did not load (see Damaged): %w", name, lost)
	}
	fs, err := c.add([]feedReq{{name: name, local: true, kp: kp}})
	if err != nil {
		return nil, fmt.Errorf("writer %q: %w", name, err)
	}
	f := fs[0]
	if kp != nil && !bytes.Equal(f.Key(), kp.PublicKey) {
		return nil, fmt.Errorf("writer %q: %w: it has key %x", name, ErrKeyMismatch, f.Key()[:8])
	}
	return f, nil
}

// AddFeed returns the feed with the given public key, adding an empty
// replica of it if the database does not hold it yet. Replication adds
// feeds this way.
func (c *Core) AddFeed(key []byte) (*Feed, error) {
	fs, err := c.AddFeeds(key)
	if err != nil {
		return nil, err
	}
	return fs[0], nil
}

// AddFeeds is AddFeed for many keys at once: the feeds, in the order of
// keys. New replicas cost one manifest write and one sync for the whole
// call, so adding hundreds of feeds is cheap. Either every new feed is
// added or, on error, none is.
func (c *Core) AddFeeds(keys ...[]byte) ([]*Feed, error) {
	reqs := make([]feedReq, len(keys))
	for i, key := range keys {
		if len(key) != PublicKeySize {
			return nil, fmt.Errorf("add feed: %w: key %d is %d bytes", ErrInvalidKey, i, len(key))
		}
		reqs[i] = feedReq{key: key}
	}
	fs, err := c.add(reqs)
	if err != nil {
		return nil, fmt.Errorf("add feeds: %w", err)
	}
	return fs, nil
}

// feedReq asks add for a local writer (name, and kp or a fresh key pair)
// or a replica (key).
type feedReq struct {
	name  string
	local bool
	kp    *KeyPair
	key   []byte
}

// add returns the feeds asked for, creating those the database does not
// hold, with one manifest write for all of them. In steps: plan a slot and
// a manifest record for each new feed (planFeed), create their files side
// by side (createFeeds), then write and sync the records (commitAdd).
func (c *Core) add(reqs []feedReq) ([]*Feed, error) {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	if err := c.addAllowed(); err != nil {
		return nil, err
	}
	out := make([]*Feed, len(reqs))
	p := c.newAddPlan()
	jobOf := make([]int, len(reqs)) // per request without a feed yet, its job
	for i, r := range reqs {
		if out[i] = c.existing(r); out[i] != nil {
			continue
		}
		j, err := c.planFeed(p, r)
		if err != nil {
			return nil, err
		}
		jobOf[i] = j
	}
	if len(p.jobs) == 0 {
		return out, nil
	}
	created, err := c.createFeeds(p.jobs)
	if err != nil {
		return nil, err
	}
	for i := range out {
		if out[i] == nil {
			out[i] = p.jobs[jobOf[i]].f
		}
	}
	if err := c.commitAdd(p, created); err != nil {
		for _, f := range created {
			f.Close()
		}
		return nil, err
	}
	return out, nil
}

// addAllowed reports why add may not add feeds: the database is closed,
// or an earlier manifest write failed.
func (c *Core) addAllowed() error {
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if c.addFailed != nil {
		return fmt.Errorf("add feed refused after a failed manifest write; reopen the database: %w", c.addFailed)
	}
	return nil
}

// addPlan is what one add writes: the manifest records it appends and the
// feeds it creates.
type addPlan struct {
	recs  []byte         // the records to append to the manifest
	slot  int            // the next free slot
	jobs  []openJob      // the feeds to create, one per new slot
	batch map[string]int // jobs, by name ("n"+name) or key ("k"+key)
}

// newAddPlan starts a plan. Slots whose feed files lost their manifest
// record get a reserved record, so they are never reused.
func (c *Core) newAddPlan() *addPlan {
	p := &addPlan{batch: map[string]int{}}
	for c.slots+len(p.recs)/manifestRecord < c.reserveTo {
		p.recs = append(p.recs, manifestRec(flagReserved, nil, "")...)
	}
	p.slot = c.slots + len(p.recs)/manifestRecord
	return p
}

// existing returns the feed of the database that r asks for, or nil.
func (c *Core) existing(r feedReq) *Feed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if r.local {
		return c.byName[r.name]
	}
	return c.byKey[string(r.key)]
}

// planFeed adds to p the feed that r asks for, which the database does not
// hold, and returns its job: a job of p that creates the same feed already,
// or a new one in the next free slot.
func (c *Core) planFeed(p *addPlan, r feedReq) (int, error) {
	if c.opts.ReadOnly {
		return 0, fmt.Errorf("%w: cannot create a feed", ErrReadOnly)
	}
	id := "k" + string(r.key)
	if r.local {
		id = "n" + r.name
	}
	if j, ok := p.batch[id]; ok {
		return j, nil // filled in once its feed is open
	}
	opts := c.feedOptions()
	key := r.key
	if r.local {
		kp := r.kp
		if kp == nil {
			k, err := NewKeyPair()
			if err != nil {
				return 0, err
			}
			kp = &k
		}
		key = kp.PublicKey
		opts.SecretKey = kp.SecretKey
		if _, ok := p.batch["k"+string(key)]; ok || c.Feed(key) != nil {
			return 0, fmt.Errorf("%w: feed %x is already in the database as a replica", ErrKeyMismatch, key[:4])
		}
	} else {
		// A replica's key file can be written again from its
		// manifest record, so it need not be synced before it.
		opts.Key = key
		opts.lazy = true
	}
	if err := c.clearSlot(p.slot); err != nil {
		return 0, err
	}
	var flags byte
	if r.local {
		flags = flagLocal
	}
	p.recs = append(p.recs, manifestRec(flags, key, r.name)...)
	j := len(p.jobs)
	p.batch[id] = j
	p.batch["k"+string(key)] = j
	p.jobs = append(p.jobs, openJob{prefix: feedPrefix(p.slot), opts: opts, name: r.name})
	p.slot++
	return j, nil
}

// clearSlot readies a slot past the manifest's end for a new feed. The slot
// may hold a feed whose record was torn away by a crash before it held
// data: its files are removed. One that holds data is damage.
func (c *Core) clearSlot(slot int) error {
	exists, hasData, err := slotState(c.store, slot)
	if err != nil {
		return err
	} else if hasData {
		return &CorruptError{File: feedPrefix(slot), Offset: 0, Reason: "a feed without a manifest record appeared in the next free slot"}
	}
	if !exists {
		return nil // a slot nobody used: nothing to clear
	}
	prefix := feedPrefix(slot)
	for _, name := range []string{fileKey, fileData, fileTree, fileSignatures, fileBitfield, fileOlderSigs, fileFork} {
		if err := c.store.Remove(prefix + name); err != nil {
			return err
		}
	}
	return nil
}

// createFeeds creates the feeds of jobs, side by side: each create waits on
// the file system, not on the CPU. It returns them in the order of jobs, or
// the first error, having closed those it created.
func (c *Core) createFeeds(jobs []openJob) ([]*Feed, error) {
	inParallel(len(jobs), maxParallelOpens, func(i int) {
		j := &jobs[i]
		j.f, j.err = OpenFeed(c.store, j.prefix, j.opts)
	})
	var created []*Feed
	var openErr error
	for i := range jobs {
		if j := &jobs[i]; j.err != nil {
			openErr = cmp.Or(openErr, j.err)
		} else {
			created = append(created, j.f)
		}
	}
	if openErr != nil {
		for _, f := range created {
			f.Close()
		}
		return nil, openErr
	}
	return created, nil
}

// commitAdd appends p's records to the manifest, syncs it, and publishes
// the feeds created for p. On error the caller closes them.
func (c *Core) commitAdd(p *addPlan, created []*Feed) error {
	if _, err := c.manifest.WriteAt(p.recs, int64(headerSize+c.slots*manifestRecord)); err != nil {
		return c.undoManifest(err)
	}
	if err := c.sync(c.manifest); err != nil {
		// The records may land yet: they are left as they are.
		c.addFailed = err
		return err
	}
	c.slots = p.slot
	c.reserveTo = 0
	for i, f := range created {
		c.addLocked(f, f.Writable(), p.jobs[i].name)
	}
	return nil
}

// maxParallelOpens bounds the feeds one add creates at once.
const maxParallelOpens = 16

// openJob is one feed that add creates.
type openJob struct {
	prefix string
	opts   *FeedOptions
	name   string
	f      *Feed
	err    error
}

// FindWriter returns the local writer called name, or nil if there is
// none. Unlike Writer it never creates one.
func (c *Core) FindWriter(name string) *Feed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byName[name]
}

// WriterName returns the name of the local writer whose feed has the given
// public key, and false if that feed is not a local writer.
func (c *Core) WriterName(key []byte) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if f := c.byKey[string(key)]; f != nil && c.byName[f.writer] == f {
		return f.writer, true
	}
	return "", false
}

// Dir returns the directory of a database opened with Open, and "" for one
// made with New on another Storage. The database never uses names under
// "views/" in it: a view may keep its own files there, under its name.
func (c *Core) Dir() string {
	if d, ok := c.store.(*DirStorage); ok {
		return d.Dir()
	}
	return ""
}

// Feed returns the feed with the given public key, or nil.
func (c *Core) Feed(key []byte) *Feed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byKey[string(key)]
}

// FeedHex returns the feed whose public key has the given hex form, or nil.
func (c *Core) FeedHex(key string) *Feed {
	b, err := hex.DecodeString(key)
	if err != nil {
		return nil
	}
	return c.Feed(b)
}

// Feeds returns every feed in the order it was added to the database, an
// order that restarts keep. It is empty after Close.
func (c *Core) Feeds() []*Feed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]*Feed(nil), c.feeds...)
}

// FeedsChanged returns a channel that is closed when the next feed is
// added. To follow the set of feeds: take the channel, read Feeds, wait.
func (c *Core) FeedsChanged() <-chan struct{} {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.feedsChanged
}

// Close stops the views (waiting for a Map in progress), closes every feed
// and, for a database made by Open, its directory. Calls waiting in Ready,
// Pause or Get fail with ErrClosed. Close may be called more than once and
// from several goroutines; every call returns once the database is closed.
func (c *Core) Close() error {
	c.closeOnce.Do(func() {
		c.addMu.Lock()
		c.mu.Lock()
		c.closed = true
		feeds := c.feeds
		c.feeds = nil
		c.mu.Unlock()
		c.addMu.Unlock()
		close(c.done)
		c.waitViews()
		var errs []error
		for _, f := range feeds {
			errs = append(errs, f.Close())
		}
		errs = append(errs, c.meta.Close(), c.manifest.Close())
		if c.ownStore {
			errs = append(errs, c.store.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Views.

var _ indexHost = (*Core)(nil)

// closing returns a channel closed when Close begins: views stop.
func (c *Core) closing() <-chan struct{} { return c.done }

// valueEncoding returns the stored value encoding.
func (c *Core) valueEncoding() Encoding { return c.enc }

// waitViews waits until every view's goroutine has returned; Close calls
// it once c.done is closed.
func (c *Core) waitViews() {
	c.mu.RLock()
	xs := c.viewList
	c.mu.RUnlock()
	for _, x := range xs {
		x.wait()
	}
}

// Use installs a view called name at a version. If the view's stored
// progress was made by another version, the view is wiped (ClearIndex) and
// rebuilt from the first entry. The view starts indexing at once, in its own
// goroutine; Ready waits for it.
func (c *Core) Use(name string, version int, view View) (*Index, error) {
	if view == nil || version < 0 {
		return nil, fmt.Errorf("use %q: %w: need a view and a version >= 0", name, ErrInvalidValue)
	}
	if c.opts.ReadOnly {
		_, stores := view.(StateStorer)
		_, clears := view.(IndexClearer)
		if stores || clears {
			return nil, fmt.Errorf("use %q: %w: the view stores state or clears its index", name, ErrReadOnly)
		}
	}
	x := newIndex(c, name, uint64(version), view)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("use %q: %w", name, ErrClosed)
	}
	if c.views[name] != nil {
		return nil, fmt.Errorf("use %q: %w", name, ErrViewExists)
	}
	c.views[name] = x
	c.viewList = append(c.viewList, x)
	x.start() // under c.mu, so Close waits for it
	return x, nil
}

// Index returns the index of the view called name, or nil.
func (c *Core) Index(name string) *Index {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.views[name]
}

// indexes returns the named views, all if none.
func (c *Core) indexes(names []string) ([]*Index, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("views: %w", ErrClosed)
	}
	if len(names) == 0 {
		return append([]*Index(nil), c.viewList...), nil
	}
	out := make([]*Index, len(names))
	for i, n := range names {
		if out[i] = c.views[n]; out[i] == nil {
			return nil, fmt.Errorf("view %q: %w", n, ErrNoView)
		}
	}
	return out, nil
}

// Ready waits until the named views (all if none) have indexed every entry
// that was present when Ready was called. It returns at once for a paused
// view, and a view's error if it stopped on one (see Retry).
func (c *Core) Ready(ctx context.Context, names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		if err := x.Ready(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Pause pauses the named views (all if none) and waits until the batch each
// is mapping is done. Pauses are counted: a view runs again when Resume was
// called as often as Pause. If Pause fails, it undoes the pauses it made.
func (c *Core) Pause(ctx context.Context, names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for i, x := range xs {
		if err := x.Pause(ctx); err != nil {
			for _, y := range xs[:i] {
				y.Resume()
			}
			return err
		}
	}
	return nil
}

// Resume undoes one Pause of the named views (all if none). It does not
// restart a view that stopped on an error: see Retry.
func (c *Core) Resume(names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		x.Resume()
	}
	return nil
}

// Retry restarts the named views (all if none) that stopped on an error,
// retrying what failed; see Index.Retry.
func (c *Core) Retry(names ...string) error {
	xs, err := c.indexes(names)
	if err != nil {
		return err
	}
	for _, x := range xs {
		if err := x.Retry(); err != nil {
			return err
		}
	}
	return nil
}
