package kappa

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"sync"
	"sync/atomic"
)

// Files of a feed, under its prefix in a Storage. The format is described in
// doc/FORMAT.md.
const (
	fileKey        = "key"
	fileData       = "data"
	fileTree       = "tree"
	fileSignatures = "signatures"
	fileBitfield   = "bitfield"
	fileOlderSigs  = "oldsigs"
	fileJournal    = "journal"
)

// FeedOptions configure OpenFeed. The zero value opens the feed stored
// under the prefix, or creates a new writable feed with a fresh key pair.
type FeedOptions struct {
	// Key is the feed's public key. When set, the stored feed must have
	// this key (else ErrKeyMismatch); a new feed with only a Key is a
	// read-only replica that fills by Put.
	Key []byte

	// SecretKey makes the feed writable: a new feed is created with this
	// key pair, an existing one must hold its public key.
	SecretKey []byte

	// ValueEncoding, if JSON or UTF8, makes Append refuse values that
	// are not valid JSON or UTF-8 with ErrInvalidValue. Binary or ""
	// accepts any bytes. Values from peers are stored as signed.
	ValueEncoding Encoding

	// NoSync turns off fsync. By default every Append and Put is durable
	// when it returns (a small Append is written with one sync, of the
	// feed's journal, which holds its data, tree and signature record;
	// otherwise data and tree are synced before the signature that covers
	// them, the signature before returning). With NoSync a process
	// crash loses nothing, but a power loss may lose recent writes.
	NoSync bool

	// OnRepair, if set, receives each change opening makes to recover
	// from a crash: a torn tail cut back, a bitfield page rebuilt; and a
	// damaged newest signature record that a writer signed again.
	OnRepair func(Repair)

	// ReadOnly opens an existing feed without writing to s: each repair
	// opening would make is reported to OnRepair but not made, and the
	// feed holds the state the repair would give (a key file torn while
	// the feed was created is taken from Key or SecretKey, in memory).
	// Append and Put fail with ErrReadOnly, and so does opening where
	// there is no key file.
	ReadOnly bool

	// lazy creates a replica without syncing its new files: its key file
	// is synced with its first Put. For a Core, whose manifest holds the
	// key to write the file again.
	lazy bool
	// rewriteKey lets a replica whose files hold no data rewrite a
	// damaged key file from Key.
	rewriteKey bool
	// cfg is the configuration a Core's feeds share, used if it matches.
	cfg *feedConfig
}

// Feed is one signed append-only log: a writer's values, hashed into a
// merkle tree whose roots the writer signs after every Append. A replica
// holds the same log, or any part of it, verified block by block against
// that signature. A Feed is safe for concurrent use.
type Feed struct {
	name string // prefix in storage, for errors
	key  ed25519.PublicKey
	cfg  *feedConfig // shared by the feeds of a Core

	writer   string       // a Core's local writer: its name; set once, before the feed is published
	onRepair func(Repair) // only while opening

	// sigDamage is a damaged newest signature record that opening found
	// and worked around (see recoverDamaged), reported once the feed is
	// added to its Core; a replica's stays until a Put replaces it. Under
	// writeMu once the feed is open.
	sigDamage *damagedSig
	// jrnDamage is damage that opening found in the zeros past a
	// writer's journal records (see decodeJournal), and healed by writing
	// the journal anew; it goes to the Core's OnError once
	// (reportOpenDamage). Under writeMu once the feed is open.
	jrnDamage *CorruptError

	// The data, tree, signatures, bitfield and journal files (see
	// fdata…fjrn): opened on first use, so that a feed nobody used since
	// it was opened holds none. A writable feed has no bitfield; only a
	// writer with sync on has a journal.
	lazy        [5]lazyFile
	filesMu     sync.Mutex // opening and closing them
	filesClosed bool       // under filesMu: the feed is closed
	keyDirty    bool       // the key file (ws.meta) is not synced yet; under writeMu
	writable    bool       // the feed has a secret key (ws.secret, or in the key file)

	// writeMu serializes the writers (Append commits, Put) and Close.
	//
	// Naming: an unexported method whose name ends in WriteLocked must be
	// called with writeMu held (or while opening, before the feed is
	// shared); one ending in Locked (without Write) must be called with mu
	// held.
	writeMu  sync.Mutex
	queue    atomic.Pointer[appendQueue] // made by the first Append
	ws       *writeScratch               // made on the first write, under writeMu
	sigsEnd  int64                       // where the next signature record goes; under writeMu
	bitPages uint64                      // pages in the bitfield file; under writeMu
	jrn      journalState                // a writer's journal (see feed_journal.go); under writeMu

	// checked is a length below which every entry's value is known to
	// be valid in the feed's value encoding: checked by Append before it
	// was signed, here or, as the newest signature record says, before
	// the feed was opened (see sigCheckedShift). Views do not check those
	// values again.
	checked atomic.Uint64
	// plain is a length below which every block is known to carry no
	// causal context: appended as 0x00 ‖ value, here or, as the newest
	// signature record says (sigPlain), before the feed was opened. The
	// causal index's rebuild after open does not read those blocks.
	plain atomic.Uint64

	// mu guards the published state below. Readers hold it only to check
	// what is present: blocks below the length never change on disk.
	mu      sync.RWMutex
	length  uint64
	byteLen uint64
	signed  *signedState                  // nil until used: see signedNow
	have    *bitset                       // replicas only: the blocks held; nil for a writer
	damaged []uint64                      // held entries a read found damaged, sorted; nil if none (see feed_damage.go)
	changed atomic.Pointer[chan struct{}] // closed on a change if waiting > 0; made by the first waiter
	waiting atomic.Int32                  // calls blocked in wait
	nextSub int32
	closed  bool
	subs    []subscriber // in a slice, not a map: an idle feed stays small

	// Made on first use, so that an idle feed stays small.
	ahead atomic.Pointer[readAhead]
	wants atomic.Pointer[wantSet]

	fork atomic.Pointer[forkState] // nil unless forked, or the fork file is damaged; see feed_fork.go
}

// signedState is a feed's newest signed tree. A feed that was opened and
// not used since does not hold it: it is read again from the files (see
// signedNow and commitValuesWriteLocked).
type signedState struct {
	// roots are the roots of the signed tree, in the writer's write
	// scratch: only appends read them, under writeMu. Nil for a replica,
	// which never appends.
	roots []storedNode
	sig   []byte
}

// feedConfig is what a feed shares with the other feeds of its Core.
type feedConfig struct {
	store  Storage
	enc    Encoding // normalized
	noSync bool
	// readOnly is the one test of a read-only feed (FeedOptions.ReadOnly,
	// Options.ReadOnly): then nothing writes to the store. Opening reports
	// the repairs it would make (see Feed.truncate) and keeps their result
	// in memory; Append and Put fail with ErrReadOnly. Any other write,
	// such as one that heals or rewrites a record found on a read, must
	// check it and leave the file as it is.
	readOnly bool

	// A Core's hooks for what its feeds find after opening (nil for a
	// feed opened alone): damage in a loaded feed (an entry, a signature
	// record, a fork), and damage healed, reported as a repair. See
	// Core.feedDamaged and Core.feedHealed.
	damaged func(f *Feed, d Damage)
	healed  func(f *Feed, match func(Damage) bool, r Repair)

	// context, if set, returns the causal context of a writer's next
	// Append call (see block.go), called under its writeMu at commit;
	// contextLost tells that a commit recording one failed. See
	// Core.appendContext.
	context     func(f *Feed) []Pos
	contextLost func(f *Feed)
	// stored, if set, is told of entries start..end-1 of f that an Append
	// or a Put is about to publish, under f's writeMu: first is the first
	// one's block (or just its prefix, uvarint n ‖ context), and each later
	// one's block has no context (n = 0). See Core.causalStored.
	stored func(f *Feed, start, end uint64, first []byte)
}

// reportDamage hands damage found in f to its Core, if it has one.
func (f *Feed) reportDamage(d Damage) {
	if f.cfg.damaged != nil {
		f.cfg.damaged(f, d)
	}
}

// reportHealed tells f's Core, if it has one, that the damage match
// selects healed, as repair r.
func (f *Feed) reportHealed(match func(Damage) bool, r Repair) {
	if f.cfg.healed != nil {
		f.cfg.healed(f, match, r)
	}
}

// The lazy files of a feed, by index in Feed.lazy.
const (
	lazyData = iota
	lazyTree
	lazySigs
	lazyBits
	lazyJrn
)

func (f *Feed) fdata() *lazyFile { return &f.lazy[lazyData] }
func (f *Feed) ftree() *lazyFile { return &f.lazy[lazyTree] }
func (f *Feed) fsigs() *lazyFile { return &f.lazy[lazySigs] }
func (f *Feed) fbits() *lazyFile { return &f.lazy[lazyBits] }
func (f *Feed) fjrn() *lazyFile  { return &f.lazy[lazyJrn] }

// writeScratch is what a feed's writes reuse, under writeMu.
type writeScratch struct {
	secret ed25519.PrivateKey // a writer's, read on first use (see secretKeyWriteLocked)
	tagMAC hash.Hash          // journal tags' HMAC, keyed by secret (see journalTag)
	meta   File               // the key file, while it is not synced (keyDirty)
	older  File               // older signatures, opened on first use
	failed error              // a sync failed: the feed refuses further writes

	hasher         *leafHasher
	hashers        []*leafHasher   // one per group of a large append (see buildAppendWriteLocked)
	starts, firsts []uint64        // the groups and calls of the append being built
	leaves         []storedNode    // their leaves
	data, tree, ex []byte          // data and tree buffers
	recent         recentNodes     // the writer's latest tree records
	roots          rootsHasher     // the hash of the writer's latest roots
	rootLists      [2][]storedNode // the published roots and the next (see signedState)
	group          groupBuild      // the append being built
	sig            [sigRecordSize]byte
}

// failedWriteLocked returns the error of a sync that failed, after which the
// feed refuses writes. Called under writeMu.
func (f *Feed) failedWriteLocked() error {
	if f.ws == nil {
		return nil
	}
	return f.ws.failed
}

// checkedBelow returns a length below which every value is known to be
// valid in encoding enc (see Feed.checked).
func (f *Feed) checkedBelow(enc Encoding) uint64 {
	if f.cfg.enc != enc {
		return 0
	}
	return f.checked.Load()
}

// scratchWriteLocked returns the feed's write scratch. Called under writeMu.
func (f *Feed) scratchWriteLocked() *writeScratch {
	if f.ws == nil {
		f.ws = &writeScratch{hasher: newLeafHasher()}
	}
	return f.ws
}

// OpenFeed opens the feed stored in s under prefix (for example
// "feeds/0/"), creating it if there is none. See FeedOptions for how keys
// are chosen. Opening reads a constant amount of the log (plus, for a
// replica, its bitfield); if the last writes were torn by a crash, the feed
// is cut back to the last length whose signature verifies.
//
// So that a database of many feeds stays small, a feed that was opened and
// not used since holds a few hundred bytes: no open files, and neither the
// roots and signature it verified nor a writer's secret key. Its first use
// reads what it needs again, checking it: a file damaged in between fails
// that call with ErrCorrupt (an Append appends nothing). A writer's secret
// key is checked there too, not on open: that its seed gives the feed's
// public key costs about a signature to check, and the key file is read
// again anyway. Opening checks the rest of the key file.
func OpenFeed(s Storage, prefix string, opts *FeedOptions) (*Feed, error) {
	var o FeedOptions
	if opts != nil {
		o = *opts
	}
	if s == nil {
		return nil, fmt.Errorf("open feed %s: %w: nil storage", prefix, ErrInvalidValue)
	}
	if o.Key != nil && len(o.Key) != PublicKeySize {
		return nil, fmt.Errorf("open feed %s: %w: public key is %d bytes", prefix, ErrInvalidKey, len(o.Key))
	}
	enc, err := o.ValueEncoding.normalize()
	if err != nil {
		return nil, fmt.Errorf("open feed %s: %w", prefix, err)
	}
	cfg := o.cfg
	if cfg == nil || cfg.store != s || cfg.enc != enc || cfg.noSync != o.NoSync || cfg.readOnly != o.ReadOnly {
		cfg = &feedConfig{store: s, enc: enc, noSync: o.NoSync, readOnly: o.ReadOnly}
	}
	f := &Feed{cfg: cfg, name: prefix, onRepair: o.OnRepair}
	for i := range f.lazy {
		f.lazy[i].feed = f
	}
	if err := f.open(s, prefix, &o); err != nil {
		f.closeFiles()
		return nil, fmt.Errorf("open feed %s: %w", prefix, err)
	}
	f.onRepair = nil // repairs are made only while opening
	return f, nil
}

// open opens or creates the feed's files and recovers its state.
func (f *Feed) open(s Storage, prefix string, o *FeedOptions) (err error) {
	ro := f.cfg.readOnly
	var meta File
	if ro {
		meta, _, err = f.openReadOnly(s, fileKey, nil, false)
	} else {
		meta, err = s.Open(prefix+fileKey, true)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && meta != nil {
			meta.Close()
		}
	}()
	blank, err := isBlank(s, prefix)
	if err != nil {
		return err
	}
	fresh, secret, stored, err := f.loadKeys(meta, o, blank)
	if err != nil {
		return err
	}
	if !fresh && blank && !f.cfg.noSync && !f.cfg.readOnly && !o.lazy {
		// A feed whose creation failed at syncing its key file: the
		// key must be durable before anything is appended under it.
		if err := meta.Sync(); err != nil {
			return err
		}
	}
	// A writer's secret key is read again when it next appends, unless it
	// is new or the key file does not hold it.
	f.writable = secret != nil || stored
	if secret != nil && !stored {
		f.scratchWriteLocked().secret = secret
	}
	opened, standIns, err := f.openFiles(s, prefix, blank)
	if err != nil {
		return err
	}
	dirty := fresh && !f.cfg.noSync && o.lazy // the key file is synced with the first Put
	if fresh && !f.cfg.noSync && !o.lazy && !ro {
		for i := range opened {
			if err := f.lazy[i].Sync(); err != nil {
				return err
			}
		}
	}
	var jr replayed
	if f.writable {
		var overlaid bool
		if jr, overlaid, err = f.replayJournal(s, prefix); err != nil {
			return err
		}
		standIns = standIns || overlaid
	}
	if err := f.recover(jr.durable()); err != nil {
		return err
	}
	if f.writable {
		if err := f.startJournal(s, prefix, jr); err != nil {
			return err
		}
	}
	if err := f.loadFork(); err != nil {
		return err
	}
	if dirty {
		f.keyDirty = true
		f.scratchWriteLocked().meta = meta
		return nil
	}
	err, meta = meta.Close(), nil
	if fresh || standIns {
		return err // a new feed is used next: its files stay open
	}
	// The key file is read only here, and the others are opened again on
	// first use: an idle feed keeps its files closed.
	for i := range f.lazy {
		if rerr := f.lazy[i].release(); err == nil {
			err = rerr
		}
	}
	return err
}

// openFiles opens the feed's data, tree and signatures files, and a
// replica's bitfield, and checks their headers; it returns how many it
// opened (the first of f.lazy), and whether a read-only open holds one in
// memory (a stand-in for a missing or blank file, kept open).
func (f *Feed) openFiles(s Storage, prefix string, blank bool) (opened int, standIns bool, err error) {
	files := []struct {
		name  string
		magic [8]byte
		rec   uint32
	}{
		lazyData: {fileData, magicData, 0},
		lazyTree: {fileTree, magicTree, nodeSize},
		lazySigs: {fileSignatures, magicSigs, sigRecordSize},
		lazyBits: {fileBitfield, magicBits, bitPageSize},
	}
	if f.writable {
		files = files[:lazyBits] // a writer holds every block below its length
	} else {
		f.have = new(bitset)
	}
	for i, x := range files {
		var file File
		if f.cfg.readOnly {
			hdr := encodeHeader(x.magic, x.rec)
			var standIn bool
			file, standIn, err = f.openReadOnly(s, x.name, hdr[:], blank)
			standIns = standIns || standIn
		} else {
			file, err = s.Open(prefix+x.name, true)
		}
		if err != nil {
			return 0, false, err
		}
		f.lazy[i].ref.Store(&fileRef{file})
		if err := f.checkHeader(file, x.name, x.magic, x.rec, blank); err != nil {
			return 0, false, err
		}
	}
	return len(files), standIns, nil
}

// lazyFile is one of a feed's data, tree, signatures and bitfield files,
// opened from the feed's storage on first use. It is part of the Feed.
type lazyFile struct {
	feed *Feed
	ref  atomic.Pointer[fileRef]
}

var lazyFileNames = [...]string{fileData, fileTree, fileSignatures, fileBitfield, fileJournal}

type fileRef struct{ File }

// kind returns the file's index in its feed's lazy files.
func (l *lazyFile) kind() int {
	for i := range l.feed.lazy {
		if &l.feed.lazy[i] == l {
			return i
		}
	}
	panic("kappa: lazy file outside its feed")
}

// get returns the open file, opening it if it is not.
func (l *lazyFile) get() (File, error) {
	if r := l.ref.Load(); r != nil {
		return r.File, nil
	}
	f := l.feed
	f.filesMu.Lock()
	defer f.filesMu.Unlock()
	if r := l.ref.Load(); r != nil {
		return r.File, nil
	}
	name := f.name + lazyFileNames[l.kind()]
	if f.filesClosed {
		return nil, fmt.Errorf("%s: %w", name, ErrClosed)
	}
	file, err := f.cfg.store.Open(name, false)
	if err != nil {
		return nil, err
	}
	l.ref.Store(&fileRef{file})
	return file, nil
}

// release closes the file, which the next use opens again. Only for a
// feed that nothing else uses yet.
func (l *lazyFile) release() error {
	if r := l.ref.Swap(nil); r != nil {
		return r.Close()
	}
	return nil
}

func (l *lazyFile) ReadAt(p []byte, off int64) (int, error) {
	file, err := l.get()
	if err != nil {
		return 0, err
	}
	return file.ReadAt(p, off)
}

func (l *lazyFile) WriteAt(p []byte, off int64) (int, error) {
	file, err := l.get()
	if err != nil {
		return 0, err
	}
	return file.WriteAt(p, off)
}

func (l *lazyFile) Truncate(size int64) error {
	file, err := l.get()
	if err != nil {
		return err
	}
	return file.Truncate(size)
}

func (l *lazyFile) Size() (int64, error) {
	file, err := l.get()
	if err != nil {
		return 0, err
	}
	return file.Size()
}

func (l *lazyFile) Sync() error {
	file, err := l.get()
	if err != nil {
		return err
	}
	return file.Sync()
}

// Datasync is datasync of the file.
func (l *lazyFile) Datasync() error {
	file, err := l.get()
	if err != nil {
		return err
	}
	return datasync(file)
}

// datasyncer is a File that offers fdatasync(2) (a DirStorage's).
type datasyncer interface{ Datasync() error }

// datasync makes file's writes durable as Sync does, but with fdatasync(2)
// where the file offers it (a DirStorage's, on Linux): its times are not
// written. A Storage's File may offer it as a method Datasync() error.
func datasync(file File) error {
	if d, ok := file.(datasyncer); ok {
		return d.Datasync()
	}
	return file.Sync()
}

// Close closes the file if it is open; the feed must be marked closed
// first, so that nothing opens it again.
func (l *lazyFile) Close() error {
	l.feed.filesMu.Lock()
	defer l.feed.filesMu.Unlock()
	if r := l.ref.Swap(nil); r != nil {
		return r.Close()
	}
	return nil
}

// isBlank reports whether the feed's files other than its key hold nothing
// past their headers.
func isBlank(s Storage, prefix string) (bool, error) {
	for _, name := range []string{fileData, fileTree, fileSignatures, fileBitfield} {
		file, err := s.Open(prefix+name, false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		size, err := file.Size()
		file.Close()
		if err != nil {
			return false, err
		}
		if size > headerSize {
			return false, nil
		}
	}
	return true, nil
}

// checkHeader checks a file's header, or writes it to a new file. A file
// too short to hold its header is new, or was created by a torn write, and
// can have held nothing that was acknowledged; but if the feed's files hold
// data, the header was damaged, not torn.
func (f *Feed) checkHeader(file File, name string, magic [8]byte, rec uint32, blank bool) error {
	hdr := encodeHeader(magic, rec)
	size, err := file.Size()
	if err != nil {
		return err
	}
	if size < headerSize {
		if !blank {
			return &CorruptError{File: f.name + name, Offset: size, Reason: "file is missing or shorter than its header, but the feed holds data"}
		}
		if size > 0 {
			if err := f.truncate(file, name, 0, "torn header of a new feed"); err != nil {
				return err
			}
		}
		_, err := file.WriteAt(hdr[:], 0)
		return err
	}
	var got [headerSize]byte
	if _, err := file.ReadAt(got[:], 0); err != nil {
		return err
	}
	if got != hdr {
		return &CorruptError{File: f.name + name, Offset: 0, Reason: "bad header"}
	}
	return nil
}

// Len returns the feed's length: the number of entries its newest verified
// signature covers. A replica may hold only some of them; see Has.
func (f *Feed) Len() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.length
}

// ByteLen returns the number of bytes of the blocks of all entries below
// Len: their values and the causal contexts recorded with them (see
// doc/FORMAT.md), one byte at least per entry.
func (f *Feed) ByteLen() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.byteLen
}

// Close closes the feed's files. Calls waiting in Get fail with ErrClosed.
// Close waits for an Append or Put in progress. Closing twice is harmless.
func (f *Feed) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	if ch := f.changed.Swap(nil); ch != nil {
		close(*ch)
	}
	f.subs = nil
	f.mu.Unlock()
	f.ahead.Store(nil) // a Get after Close waits, and fails
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	err := f.closeJournalWriteLocked()
	if cerr := f.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (f *Feed) closeFiles() error {
	f.filesMu.Lock()
	f.filesClosed = true
	f.filesMu.Unlock()
	var first error
	files := []File{f.fdata(), f.ftree(), f.fsigs(), f.fbits(), f.fjrn()}
	if f.ws != nil {
		files = append(files, f.ws.meta, f.ws.older)
	}
	for _, file := range files {
		if file == nil {
			continue
		}
		if err := file.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// String returns the feed's public key in hex.
func (f *Feed) String() string { return hex.EncodeToString(f.key) }

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// opError returns err, the cause of a failed op on the feed, as a
// *FeedError.
func (f *Feed) opError(op string, err error) error {
	return &FeedError{Key: f.key, Op: op, Err: err}
}
