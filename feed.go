package kappa

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"slices"
	"sync"
	"sync/atomic"
)

// maxTornRecords bounds how far back Open looks for a signature that
// verifies, so that opening never scans a whole log.
const maxTornRecords = 64

// Files of a feed, under its prefix in a Storage. The format is described in
// doc/FORMAT.md.
const (
	fileKey        = "key"
	fileData       = "data"
	fileTree       = "tree"
	fileSignatures = "signatures"
	fileBitfield   = "bitfield"
	fileOlderSigs  = "oldsigs"
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
	// when it returns (data and tree are synced before the signature that
	// covers them, the signature before returning). With NoSync a process
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

	// The data, tree, signatures and bitfield files (see fdata…fbits):
	// opened on first use, so that a feed nobody used since it was opened
	// holds none. A writable feed has no bitfield.
	lazy        [4]lazyFile
	filesMu     sync.Mutex // opening and closing them
	filesClosed bool       // under filesMu: the feed is closed
	keyDirty    bool       // the key file (ws.meta) is not synced yet; under writeMu
	writable    bool       // the feed has a secret key (ws.secret, or in the key file)

	// writeMu serializes the writers (Append commits, Put) and Close.
	writeMu  sync.Mutex
	queue    atomic.Pointer[appendQueue] // made by the first Append
	ws       *writeScratch               // made on the first write, under writeMu
	sigsEnd  int64                       // where the next signature record goes; under writeMu
	bitPages uint64                      // pages in the bitfield file; under writeMu

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
// signedNow and commitValues).
type signedState struct {
	roots []storedNode // nil for a replica, which never appends
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
)

func (f *Feed) fdata() *lazyFile { return &f.lazy[lazyData] }
func (f *Feed) ftree() *lazyFile { return &f.lazy[lazyTree] }
func (f *Feed) fsigs() *lazyFile { return &f.lazy[lazySigs] }
func (f *Feed) fbits() *lazyFile { return &f.lazy[lazyBits] }

// writeScratch is what a feed's writes reuse, under writeMu.
type writeScratch struct {
	secret ed25519.PrivateKey // a writer's, read on first use (see secretKey)
	meta   File               // the key file, while it is not synced (keyDirty)
	older  File               // older signatures, opened on first use
	failed error              // a sync failed: the feed refuses further writes

	hasher         *leafHasher
	data, tree, ex []byte      // data and tree buffers
	recent         recentNodes // the writer's latest tree records
	sig            [sigRecordSize]byte
}

// failed returns the error of a sync that failed, after which the feed
// refuses writes. Called under writeMu.
func (f *Feed) failed() error {
	if f.ws == nil {
		return nil
	}
	return f.ws.failed
}

// scratch returns the feed's write scratch. Called under writeMu.
func (f *Feed) scratch() *writeScratch {
	if f.ws == nil {
		f.ws = &writeScratch{hasher: newLeafHasher()}
	}
	return f.ws
}

// wantSet holds the ranges that calls wait for, by registration.
type wantSet struct {
	mu     sync.Mutex
	wanted map[uint64]span
	next   uint64
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
// that call with ErrCorrupt (an Append appends nothing).
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
	fresh, secret, inFile, err := f.loadKeys(meta, o, blank)
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
	f.writable = secret != nil
	if secret != nil && (fresh || !inFile) {
		f.scratch().secret = secret
	}
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
	standIns := false // read-only: files held in memory, kept open
	for i, x := range files {
		var file File
		if ro {
			hdr := encodeHeader(x.magic, x.rec)
			var standIn bool
			file, standIn, err = f.openReadOnly(s, x.name, hdr[:], blank)
			standIns = standIns || standIn
		} else {
			file, err = s.Open(prefix+x.name, true)
		}
		if err != nil {
			return err
		}
		f.lazy[i].ref.Store(&fileRef{file})
		if err := f.checkHeader(file, x.name, x.magic, x.rec, blank); err != nil {
			return err
		}
	}
	dirty := fresh && !f.cfg.noSync && o.lazy // the key file is synced with the first Put
	if fresh && !f.cfg.noSync && !o.lazy && !ro {
		for i := range files {
			if err := f.lazy[i].Sync(); err != nil {
				return err
			}
		}
	}
	if err := f.recover(); err != nil {
		return err
	}
	if err := f.loadFork(); err != nil {
		return err
	}
	if dirty {
		f.keyDirty = true
		f.scratch().meta = meta
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

// lazyFile is one of a feed's data, tree, signatures and bitfield files,
// opened from the feed's storage on first use. It is part of the Feed.
type lazyFile struct {
	feed *Feed
	ref  atomic.Pointer[fileRef]
}

var lazyFileNames = [...]string{fileData, fileTree, fileSignatures, fileBitfield}

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

// loadKeys reads the key file, or writes it for a new feed. It reports
// whether the feed is new. blank says whether the feed's other files hold
// nothing past their headers.
func (f *Feed) loadKeys(meta File, o *FeedOptions, blank bool) (fresh bool, secret ed25519.PrivateKey, inFile bool, err error) {
	size, err := meta.Size()
	if err != nil {
		return false, nil, false, err
	}
	var buf [metaSize]byte
	if size >= metaSize {
		if _, err := meta.ReadAt(buf[:], 0); err != nil {
			return false, nil, false, err
		}
	}
	if size < metaSize || [8]byte(buf[:8]) != magicKey {
		// A key file that is short or blank is a feed whose creation was
		// torn, unless data was already written under it.
		if !blank || (size >= metaSize && !isZero(buf[:]) && !o.rewriteKey) {
			return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 0, Reason: "key file is missing or damaged but the feed holds data"}
		}
		if size > 0 {
			f.repaired(Repair{File: f.name + fileKey, From: size, To: metaSize, Reason: "torn key file of an empty feed written again"})
		}
		secret, err := f.createKeys(meta, o)
		return true, secret, true, err
	}
	version, pub, stored, ok := decodeKeyRecord(buf[:])
	if !ok && blank && o.rewriteKey && o.Key != nil && o.SecretKey == nil {
		// A replica created without sync whose key file was torn.
		f.repaired(Repair{File: f.name + fileKey, From: size, To: size, Reason: "torn key file of an empty replica written again"})
		secret, err := f.createKeys(meta, o)
		return true, secret, true, err
	}
	if !ok {
		return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 0, Reason: "checksum mismatch"}
	}
	if version != formatVersion {
		return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 8, Reason: fmt.Sprintf("unknown format version %d", version)}
	}
	f.key = ed25519.PublicKey(bytes.Clone(pub))
	if stored != nil {
		if secret, err = f.storedSecret(stored); err != nil {
			return false, nil, false, err
		}
		inFile = true
	}
	if o.Key != nil && !bytes.Equal(o.Key, f.key) {
		return false, nil, false, fmt.Errorf("%w: feed %x is stored here", ErrKeyMismatch, f.key[:8])
	}
	if o.SecretKey != nil {
		kp, err := KeyPairFromSecret(o.SecretKey)
		if err != nil {
			return false, nil, false, err
		}
		if !bytes.Equal(kp.PublicKey, f.key) {
			return false, nil, false, fmt.Errorf("%w: feed %x is stored here", ErrKeyMismatch, f.key[:8])
		}
		if secret == nil {
			secret = kp.SecretKey // only in memory: the key file holds none
		}
	}
	return false, secret, inFile, nil
}

// createKeys writes the key file of a new feed, and returns its secret key
// (nil for a replica).
func (f *Feed) createKeys(meta File, o *FeedOptions) (ed25519.PrivateKey, error) {
	// Read-only, where there is no key file at all this would create a
	// feed; but a Core's replica (rewriteKey) is the repair of a creation
	// torn before its files were durable: its manifest record has the key.
	if _, none := meta.(*memFileRO); none && !o.rewriteKey {
		return nil, fmt.Errorf("%w: there is no feed here to open", ErrReadOnly)
	}
	var secret ed25519.PrivateKey
	switch {
	case o.SecretKey != nil:
		kp, err := KeyPairFromSecret(o.SecretKey)
		if err != nil {
			return nil, err
		}
		if o.Key != nil && !bytes.Equal(o.Key, kp.PublicKey) {
			return nil, fmt.Errorf("%w: secret key does not match public key", ErrInvalidKey)
		}
		f.key, secret = kp.PublicKey, kp.SecretKey
	case o.Key != nil:
		f.key = ed25519.PublicKey(bytes.Clone(o.Key))
	case f.cfg.readOnly: // a new key pair would be a new feed
		return nil, fmt.Errorf("%w: the key file holds no key, and none was given", ErrReadOnly)
	default:
		kp, err := NewKeyPair()
		if err != nil {
			return nil, err
		}
		f.key, secret = kp.PublicKey, kp.SecretKey
	}
	if f.cfg.readOnly {
		return secret, nil // the repair was reported; the file is left as it is
	}
	buf := encodeKeyRecord(f.key, secret)
	if _, err := meta.WriteAt(buf[:], 0); err != nil {
		return nil, err
	}
	if !f.cfg.noSync && !o.lazy {
		return secret, meta.Sync()
	}
	return secret, nil
}

// secretKey returns a writable feed's secret key, reading it from the key
// file on first use: an idle writer does not hold it. Called under writeMu.
func (f *Feed) secretKey() (ed25519.PrivateKey, error) {
	ws := f.scratch()
	if ws.secret != nil {
		return ws.secret, nil
	}
	name := f.name + fileKey
	meta, err := f.cfg.store.Open(name, false)
	if err != nil {
		return nil, err
	}
	defer meta.Close()
	var buf [metaSize]byte
	if _, err := meta.ReadAt(buf[:], 0); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	_, pub, stored, ok := decodeKeyRecord(buf[:])
	if !ok || stored == nil || !bytes.Equal(pub, f.key) {
		return nil, &CorruptError{File: name, Offset: 0, Reason: "the key file no longer holds the feed's key pair"}
	}
	if ws.secret, err = f.storedSecret(stored); err != nil {
		return nil, err
	}
	return ws.secret, nil
}

// storedSecret checks the secret key stored in the key file against the
// feed's public key.
func (f *Feed) storedSecret(stored []byte) (ed25519.PrivateKey, error) {
	kp, err := KeyPairFromSecret(stored)
	if err != nil || !bytes.Equal(kp.PublicKey, f.key) {
		return nil, &CorruptError{File: f.name + fileKey, Offset: keySecretOff, Reason: "secret key does not match public key"}
	}
	return kp.SecretKey, nil
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

// truncate cuts file name to size if it is longer, and reports the repair.
// A read-only feed reports it and leaves the file as it is: what it reads
// is bounded by the state loaded, not by the file's size.
func (f *Feed) truncate(file File, name string, size int64, why string) error {
	old, err := file.Size()
	if err != nil || old <= size {
		return err
	}
	if f.cfg.readOnly {
		f.repaired(Repair{File: f.name + name, From: old, To: size, Reason: why})
		return nil
	}
	if err := file.Truncate(size); err != nil {
		return err
	}
	f.repaired(Repair{File: f.name + name, From: old, To: size, Reason: why})
	return nil
}

func (f *Feed) repaired(r Repair) {
	if f.onRepair != nil {
		f.onRepair(r)
	}
}

// recover finds the newest signature record that verifies against the
// tree, cuts everything newer, and loads the state it signs.
//
// With sync on, a signature record is written only after the one before it
// was durable, and an append's data and tree only after the record before
// it: so at most the newest record can be torn, and the tree past the
// signed length holds the leaves of one append at most. Anything else is
// damage, reported as ErrCorrupt and left as it is; but a newest record
// that fails its checksum though no crash could have torn it (see
// sigRecordTorn) is damage that recovery works around: see recoverDamaged.
func (f *Feed) recover() error {
	size, err := f.fsigs().Size()
	if err != nil {
		return err
	}
	n := (size - headerSize) / sigRecordSize
	var bad *damagedSig // the newest record, if damaged rather than torn
	for k := n - 1; k >= 0 && k >= n-maxTornRecords; k-- {
		var rec [sigRecordSize]byte
		off := headerSize + k*sigRecordSize
		if _, err := f.fsigs().ReadAt(rec[:], off); err != nil {
			return err
		}
		length, sig, flags, ok := decodeSigRecord(rec[:])
		if !ok {
			if !f.cfg.noSync && k < n-1 {
				return &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: "a signature record before the newest is damaged"}
			}
			if f.cfg.noSync || sigRecordTorn(rec[:], off, size) {
				continue // torn while being written
			}
			// With sync on, a crash cannot explain it: damage, which
			// must not cut what the record covered (see recoverDamaged).
			bad = &damagedSig{number: uint64(k + 1), off: off, rec: rec, fileSize: size}
			continue
		}
		synced := flags&sigSynced != 0
		roots, err := f.readRoots(length)
		switch {
		case err == nil && verifyRoots(f.key, treeHash(roots), length, sig):
			if bad != nil {
				return f.recoverDamaged(bad, length, roots, bytes.Clone(sig))
			}
			if err := f.checkTail(uint64(k+1), length, synced && !f.cfg.noSync); err != nil {
				return err
			}
			return f.load(length, roots, bytes.Clone(sig), off+sigRecordSize)
		case err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, errNoNode):
			return err
		case synced && errors.Is(err, errNoNode):
			return &CorruptError{File: f.name + fileTree, Offset: headerSize, Reason: fmt.Sprintf("a root of the signed length %d is missing", length)}
		case synced && err != nil:
			return err // a damaged root, named by file and offset
		case synced:
			// What this record covers was durable before it was
			// written: a mismatch is damage, not a torn write.
			return &CorruptError{File: f.name + fileSignatures, Offset: off, Reason: fmt.Sprintf("signature for length %d does not verify against the tree", length)}
		}
		// Written without sync: the tree it covers may not have landed.
	}
	if n > 1 {
		// With none of the newest intact the feed was damaged, not torn.
		return &CorruptError{File: f.name + fileSignatures, Offset: headerSize, Reason: "no signature verifies against the tree"}
	}
	if bad != nil {
		return f.recoverDamaged(bad, 0, nil, nil)
	}
	if err := f.checkTail(0, 0, !f.cfg.noSync); err != nil {
		return err
	}
	return f.load(0, nil, nil, headerSize)
}

// checkTail checks, for a writer, that the tree past the signed length
// holds the leaves of one append at most: the one after signature record
// number records. Each leaf of a writer's tree records the number of the
// signature record that covers it. Only with strict (the record was
// synced, and the feed is opened with sync on) is more than one append
// past the record damage; without sync a power loss may lose several.
func (f *Feed) checkTail(records, length uint64, strict bool) error {
	if !f.writable || !strict {
		return nil
	}
	size, err := f.ftree().Size()
	if err != nil {
		return err
	}
	nodes := uint64(max(size-headerSize, 0)) / nodeSize
	if 2*length >= nodes {
		return nil
	}
	last := nodes - 1
	if last%2 == 1 {
		last--
	}
	for _, i := range []uint64{2 * length, last} {
		var rec [nodeSize]byte
		off := headerSize + int64(i)*nodeSize
		if _, err := f.ftree().ReadAt(rec[:], off); err != nil {
			return err
		}
		if present, valid := nodeRecordState(i, rec[:]); !present || !valid {
			continue // part of the torn append
		}
		if ord := nodeOrdinal(rec[:]); ord != 0 && uint64(ord) != records+1 {
			return &CorruptError{File: f.name + fileSignatures, Offset: headerSize + int64(records)*sigRecordSize,
				Reason: fmt.Sprintf("signature records are missing: the tree holds entry %d of append %d, the newest record is number %d", i/2, ord, records)}
		}
	}
	return nil
}

// load installs a recovered state and cuts the files back to it.
func (f *Feed) load(length uint64, roots []storedNode, sig []byte, sigsEnd int64) error {
	// The roots and signature verified here are read again when used:
	// an idle feed does not hold them.
	f.length, f.sigsEnd = length, sigsEnd
	for _, r := range roots {
		f.byteLen += r.Size
	}
	why := fmt.Sprintf("torn tail past length %d, the newest that verifies", length)
	if err := f.truncate(f.fsigs(), fileSignatures, sigsEnd, why); err != nil {
		return err
	}
	treeEnd := int64(headerSize)
	if length > 0 {
		treeEnd += int64(2*length-1) * nodeSize
	}
	if err := f.truncate(f.ftree(), fileTree, treeEnd, why); err != nil {
		return err
	}
	dataEnd := dataPos(length, f.byteLen)
	if err := f.truncate(f.fdata(), fileData, dataEnd, why); err != nil {
		return err
	}
	if f.have == nil {
		if size, err := f.fdata().Size(); err != nil {
			return err
		} else if size < dataEnd {
			return &CorruptError{File: f.name + fileData, Offset: size, Reason: fmt.Sprintf("data ends before the %d bytes the signed tree covers", f.byteLen)}
		}
		return nil
	}
	return f.loadBitfield(length)
}

// loadBitfield reads a replica's bitfield pages below length. A page whose
// checksum fails, or that is missing, is rebuilt from the tree and the data
// (each entry whose leaf is stored and whose bytes match it is held), and
// written back: the repair is reported.
func (f *Feed) loadBitfield(length uint64) error {
	size, err := f.fbits().Size()
	if err != nil {
		return err
	}
	pages := bitPages(length)
	inFile := uint64(max(size-headerSize, 0)) / bitPageSize
	buf := make([]byte, pages*bitPageSize)
	if _, err := f.fbits().ReadAt(buf, headerSize); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	bits := make([]byte, pages*bitPageBytes)
	var rebuilt []uint64
	reasons := map[uint64]string{}
	for p := range pages {
		rec := buf[p*bitPageSize : (p+1)*bitPageSize]
		if p < inFile && bitPageValid(p, rec) {
			copy(bits[p*bitPageBytes:], rec[:bitPageBytes])
			continue
		}
		if err := f.rebuildBitPage(p, length, bits[p*bitPageBytes:(p+1)*bitPageBytes]); err != nil {
			return err
		}
		rebuilt = append(rebuilt, p)
		reasons[p] = "page failed its checksum; rebuilt from the tree and data"
		if p >= inFile {
			reasons[p] = "page missing; rebuilt from the tree and data"
		}
	}
	// Bits at or past length in the last page were set by a Put whose
	// signature record was torn away (or cut as damage), and the tree and
	// data under them were cut: cleared, so that a later, longer length
	// does not find them present.
	if k := length % bitPageEntries; k != 0 && reasons[pages-1] == "" {
		last := bits[(pages-1)*bitPageBytes : pages*bitPageBytes]
		if last[k/8]>>(k%8) != 0 || !isZero(last[k/8+1:]) {
			rebuilt = append(rebuilt, pages-1)
			reasons[pages-1] = fmt.Sprintf("entries past length %d marked present; cleared", length)
		}
	}
	// The newest held entry must have its leaf and its bytes, else the
	// bits claim entries that a torn Put never stored or whose tree or data
	// was cut: the page is rebuilt, and the check repeats on the newest
	// entry left (a rebuilt page holds only entries that check).
	dataSize, err := f.fdata().Size()
	if err != nil {
		return err
	}
	for {
		h, ok := lastHeld(bits, length)
		if !ok {
			break
		}
		n, err := f.readNode(2 * h)
		if err == nil && dataPos(h, n.Offset)+dataFrame+int64(n.Size) <= dataSize {
			break
		}
		if err != nil && !errors.Is(err, errNoNode) && !errors.Is(err, ErrCorrupt) {
			return err
		}
		p := h / bitPageEntries
		if err := f.rebuildBitPage(p, length, bits[p*bitPageBytes:(p+1)*bitPageBytes]); err != nil {
			return err
		}
		if reasons[p] == "" {
			rebuilt = append(rebuilt, p)
		}
		reasons[p] = fmt.Sprintf("entry %d is marked present but its leaf or bytes are missing; rebuilt from the tree and data", h)
	}
	f.have.fromBytes(bits, length)
	f.bitPages = pages
	why := fmt.Sprintf("bitfield pages past length %d", length)
	if err := f.truncate(f.fbits(), fileBitfield, headerSize+int64(pages)*bitPageSize, why); err != nil {
		return err
	}
	for _, p := range rebuilt {
		rec := f.bitPage(p)
		off := headerSize + int64(p)*bitPageSize
		if !f.cfg.readOnly { // read-only: reported, and held in memory only
			if _, err := f.fbits().WriteAt(rec, off); err != nil {
				return err
			}
		}
		f.repaired(Repair{File: f.name + fileBitfield, From: size, To: max(size, off+bitPageSize), Reason: reasons[p]})
	}
	if len(rebuilt) > 0 && !f.cfg.noSync && !f.cfg.readOnly {
		return f.fbits().Sync()
	}
	return nil
}

// lastHeld returns the highest entry below length whose bit is set in bits.
func lastHeld(bits []byte, length uint64) (uint64, bool) {
	for i := min(uint64(len(bits)), (length+7)/8); i > 0; i-- {
		for k := uint64(7); k < 8; k-- {
			if seq := (i-1)*8 + k; seq < length && bits[i-1]&(1<<k) != 0 {
				return seq, true
			}
		}
	}
	return 0, false
}

// bitPages returns how many bitfield pages cover length entries.
func bitPages(length uint64) uint64 { return (length + bitPageEntries - 1) / bitPageEntries }

// bitPage encodes bitfield page p from the set of held entries.
func (f *Feed) bitPage(p uint64) []byte {
	rec := make([]byte, bitPageSize)
	copy(rec, f.have.bytesFor(p*bitPageEntries, (p+1)*bitPageEntries))
	encodeBitPage(rec, p)
	return rec
}

// rebuildBitPage sets in dst the bits of page p's entries below length that
// the feed holds: those whose leaf is stored and whose data matches it.
func (f *Feed) rebuildBitPage(p, length uint64, dst []byte) error {
	clear(dst)
	lo := p * bitPageEntries
	hi := min(lo+bitPageEntries, length)
	span, err := f.readNodeSpan(2*lo, 2*hi-1)
	if err != nil {
		return err
	}
	h := newLeafHasher()
	for seq := lo; seq < hi; seq++ {
		n, err := span.node(f, 2*seq)
		if err != nil {
			continue // not stored, or damaged: not held
		}
		pos := dataPos(seq, n.Offset)
		rec := make([]byte, dataFrame+n.Size)
		if f.readData(rec, pos) != nil {
			continue
		}
		if _, err := f.leafValue(h, rec, &n, pos); err != nil {
			continue
		}
		dst[(seq-lo)/8] |= 1 << (seq % 8)
	}
	return nil
}

var errNoNode = errors.New("node not stored")

// readNode reads node i from the tree file. It returns errNoNode if the
// node is not stored.
func (f *Feed) readNode(i uint64) (storedNode, error) {
	var rec [nodeSize]byte
	off := headerSize + int64(i)*nodeSize
	if _, err := f.ftree().ReadAt(rec[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return storedNode{}, errNoNode
		}
		return storedNode{}, err
	}
	return decodeNode(i, rec[:], f.name, off)
}

// nodeSpan holds the tree records of nodes [lo, lo+n) as read by
// readNodeSpan; n counts only the records read whole.
type nodeSpan struct {
	lo, n uint64
	buf   []byte
}

// readNodeSpan reads the tree records of nodes [lo, hi) with one call.
func (f *Feed) readNodeSpan(lo, hi uint64) (*nodeSpan, error) {
	buf := make([]byte, (hi-lo)*nodeSize)
	n, err := f.ftree().ReadAt(buf, headerSize+int64(lo)*nodeSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return &nodeSpan{lo: lo, n: uint64(n) / nodeSize, buf: buf}, nil
}

// node returns node i as readNode does, from the span if it covers i. A
// node of the span past the end of the file is not stored; a nil span
// covers nothing.
func (s *nodeSpan) node(f *Feed, i uint64) (storedNode, error) {
	if s == nil || i < s.lo || i >= s.lo+uint64(len(s.buf))/nodeSize {
		return f.readNode(i)
	}
	if i >= s.lo+s.n {
		return storedNode{}, errNoNode
	}
	off := (i - s.lo) * nodeSize
	return decodeNode(i, s.buf[off:off+nodeSize], f.name, headerSize+int64(i)*nodeSize)
}

func (f *Feed) readRoots(length uint64) ([]storedNode, error) {
	if length == 0 || length > maxTreeLength {
		return nil, errNoNode
	}
	var idx [64]uint64
	var roots []storedNode
	for _, i := range fullRoots(idx[:0], length) {
		n, err := f.readNode(i)
		if err != nil {
			return nil, err
		}
		roots = append(roots, n)
	}
	return roots, nil
}

// Key returns the feed's public key.
func (f *Feed) Key() ed25519.PublicKey { return f.key }

// DiscoveryKey returns the feed's discovery key; see DiscoveryKey.
func (f *Feed) DiscoveryKey() [32]byte { return DiscoveryKey(f.key) }

// Writable reports whether the feed holds its secret key.
func (f *Feed) Writable() bool { return f.writable }

// Len returns the feed's length: the number of entries its newest verified
// signature covers. A replica may hold only some of them; see Has.
func (f *Feed) Len() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.length
}

// ByteLen returns the number of bytes of all entries below Len.
func (f *Feed) ByteLen() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.byteLen
}

// Has reports whether the entry seq is stored locally. An entry a read
// found damaged is not, until a verified copy replaces it.
func (f *Feed) Has(seq uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.hasLocked(seq) && !f.isDamagedLocked(seq)
}

// HasRange reports whether every entry in [start, end) is stored locally
// (and not found damaged).
func (f *Feed) HasRange(start, end uint64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.hasRangeLocked(start, end) && f.nextDamagedLocked(start) >= end
}

// Downloaded returns how many entries below Len are stored locally, not
// counting those found damaged.
func (f *Feed) Downloaded() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	bad := f.countDamagedLocked(f.length)
	if f.have == nil {
		return f.length - bad
	}
	return f.have.count() - bad
}

// NextMissing returns the first entry at or after seq, below Len, that is
// not stored locally (or was found damaged), or Len if there is none.
func (f *Feed) NextMissing(seq uint64) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if seq >= f.length {
		return max(seq, f.length)
	}
	m := f.length
	if f.have != nil {
		m = f.have.nextClear(seq, f.length)
	}
	return min(m, f.nextDamagedLocked(seq))
}

// presentSpans returns the runs of entries below end (and the length) that
// are stored locally and not found damaged, in order, read under one lock.
func (f *Feed) presentSpans(end uint64) []span {
	f.mu.RLock()
	defer f.mu.RUnlock()
	end = min(end, f.length)
	if f.have == nil {
		if end == 0 {
			return nil
		}
		return f.withoutDamagedLocked([]span{{0, end}})
	}
	var out []span
	for s := f.have.nextSet(0, end); s < end; {
		e := f.have.nextClear(s, end)
		out = append(out, span{s, e})
		s = f.have.nextSet(e, end)
	}
	return f.withoutDamagedLocked(out)
}

// NextPresent returns the first entry at or after seq that is stored
// locally (and not found damaged), or Len if there is none.
func (f *Feed) NextPresent(seq uint64) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for seq < f.length {
		if f.have != nil {
			seq = f.have.nextSet(seq, f.length)
		}
		if seq >= f.length || !f.isDamagedLocked(seq) {
			break
		}
		seq++
	}
	return min(seq, f.length)
}

func (f *Feed) hasLocked(seq uint64) bool {
	if seq >= f.length {
		return false
	}
	return f.have == nil || f.have.get(seq)
}

func (f *Feed) hasRangeLocked(start, end uint64) bool {
	if end > f.length || start > end {
		return false
	}
	return f.have == nil || f.have.nextClear(start, end) == end
}

// Get returns entry seq. On a replica that lacks it, Get waits until the
// entry arrives, the context ends or the feed is closed; on a writable feed
// a seq at or past Len is ErrOutOfRange. Every value read is checked
// against its leaf hash; a mismatch is ErrCorrupt (a *CorruptError naming
// the file and offset), returned without waiting. The entry is then
// damaged: reported to the Core (see Core.Damaged) and, on a replica,
// fetched again from peers.
func (f *Feed) Get(ctx context.Context, seq uint64) ([]byte, error) {
	if seq >= maxTreeLength {
		return nil, fmt.Errorf("feed %x: get %d: %w", f.key[:4], seq, ErrOutOfRange)
	}
	if err := f.wait(ctx, seq, seq+1); err != nil {
		return nil, err
	}
	// A reader going through the feed in order is served from a window of
	// the entries ahead, read (and verified) with one call per file.
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
	if start > end || end-start > maxTreeLength {
		return nil, fmt.Errorf("feed %x: get [%d, %d): %w", f.key[:4], start, end, ErrOutOfRange)
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

// scanBatch returns the present entries [start, end), as a view reads
// them. From entry 0 it reads the data file alone: the records lie end to
// end after the file's header, so their bounds need no tree, and each is
// checked against its record's checksum rather than hashed again. Reading
// a feed that a view has not seen then opens one file, not two. Elsewhere
// it reads as GetBatch does.
//
// A record that fails its checksum (or does not parse) is checked against
// its leaf, the one rule for every read: intact, it is used and its stale
// checksum rewritten; else the entry is damaged. Damage ends the batch:
// scanBatch returns the entries before the damaged one, without error (it
// is marked, so the view's next batch starts past it).
func (f *Feed) scanBatch(start, end uint64) ([][]byte, error) {
	f.mu.RLock()
	present := start == 0 && end > 0 && f.hasRangeLocked(0, end)
	length, byteLen := f.length, f.byteLen
	f.mu.RUnlock()
	if !present {
		if err := f.wait(context.Background(), start, end); err != nil {
			return nil, err
		}
		return intactPrefix(f.readRange(start, end, math.MaxUint64))
	}
	// The records of all entries lie below limit. For fewer than all, read
	// as much as end records of the mean size take, and a quarter more.
	limit := uint64(dataPos(length, byteLen) - headerSize)
	want := limit
	if end < length {
		mean := byteLen/length + dataFrame
		want = min(limit, mean*end+mean*end/4+64)
	}
	raw := make([]byte, want)
	n, err := f.fdata().ReadAt(raw, headerSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readErr(err, start)
	}
	raw = raw[:n]
	out := make([][]byte, 0, end)
	pos := 0
	for seq := uint64(0); seq < end; seq++ {
		v, size, ok, err := decodeDataRecord(seq, raw[pos:], f.name, headerSize+int64(pos))
		if err != nil {
			// Checked through the tree: intact, the checksum is stale.
			one, err := f.readRange(seq, seq+1, math.MaxUint64)
			if err != nil {
				rest, err := intactPrefix(one, err)
				return append(out, rest...), err
			}
			f.rewriteChecksum(seq, headerSize+int64(pos), one[0])
			out = append(out, one[0])
			pos += dataFrame + len(one[0])
			continue
		}
		if !ok {
			// The read ended inside this record: the rest is read
			// with the tree, which also tells damage from a short guess.
			rest, err := intactPrefix(f.readRange(seq, end, math.MaxUint64))
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

// readRange reads present entries from start on, up to end or until they
// add up to more than maxBytes (but at least one), checking each against
// its leaf. An entry that fails (its leaf is missing or fails its CRC, or
// its record does not match the leaf) is marked damaged: readRange then
// returns the entries before it with an error wrapping *entryDamage.
func (f *Feed) readRange(start, end, maxBytes uint64) ([][]byte, error) {
	count := end - start
	sc := readScratchPool.Get().(*readScratch)
	defer putReadScratch(sc)
	recs := slices.Grow(sc.recs[:0], int((2*count-1)*nodeSize))[:(2*count-1)*nodeSize]
	sc.recs = recs
	got, err := f.ftree().ReadAt(recs, headerSize+int64(2*start)*nodeSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readErr(err, start)
	}
	clear(recs[got:]) // past the end of the tree file: no leaf
	nodes := slices.Grow(sc.nodes[:0], int(count))
	defer func() { sc.nodes = nodes[:0] }()
	var total uint64
	var bad error // damage to entry start+len(nodes), which ends the range
	for k := range count {
		seq := start + k
		off := headerSize + int64(2*seq)*nodeSize
		n, err := decodeNode(2*seq, recs[2*k*nodeSize:], f.name, off)
		if errors.Is(err, errNoNode) {
			err = &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("no leaf for present entry %d", seq)}
		}
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				return nil, f.readErr(err, seq)
			}
			bad = f.entryDamaged(seq, ce)
			break
		}
		if k > 0 && n.Offset != nodes[k-1].Offset+nodes[k-1].Size {
			// Each value is sliced out of one read by its offset.
			bad = f.entryDamaged(seq, &CorruptError{File: f.name + fileTree, Offset: off, Reason: fmt.Sprintf("leaf of entry %d: offsets are not contiguous", seq)})
			break
		}
		if k > 0 && total+n.Size > maxBytes {
			break
		}
		nodes = append(nodes, n)
		total += n.Size
	}
	if len(nodes) == 0 {
		return nil, f.readErr(bad, start)
	}
	count = uint64(len(nodes))
	// The entries' records are contiguous in the data file: read them with
	// one call, and check each where it lies against its leaf.
	first := dataPos(start, nodes[0].Offset)
	raw := make([]byte, total+count*dataFrame)
	got, err = f.fdata().ReadAt(raw, first)
	if got < len(raw) && err != nil && !errors.Is(err, io.EOF) {
		return nil, f.readErr(err, start)
	}
	out := make([][]byte, 0, count)
	for k := range nodes {
		n := &nodes[k]
		seq := start + uint64(k)
		at := dataPos(seq, n.Offset) - first
		if at+dataFrame+int64(n.Size) > int64(got) {
			bad = f.entryDamaged(seq, &CorruptError{File: f.name + fileData, Offset: first + int64(got), Reason: fmt.Sprintf("data file ends inside entry %d", seq)})
			break
		}
		v, err := f.leafValue(sc.hasher, raw[at:], n, first+at)
		if err != nil {
			bad = f.entryDamaged(seq, err.(*CorruptError))
			break
		}
		out = append(out, v)
	}
	if bad != nil {
		return out, f.readErr(bad, start+uint64(len(out)))
	}
	return out, nil
}

// readScratch is what readRange reuses between calls. Large buffers are
// not kept: see putReadScratch.
type readScratch struct {
	recs   []byte
	nodes  []storedNode
	hasher *leafHasher
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

// Head returns the last entry; ErrEmpty if the feed has none.
func (f *Feed) Head(ctx context.Context) ([]byte, error) {
	n := f.Len()
	if n == 0 {
		return nil, fmt.Errorf("feed %x: head: %w", f.key[:4], ErrEmpty)
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
			return fmt.Errorf("feed %x: %w", f.key[:4], ErrClosed)
		}
		if f.hasRangeLocked(start, end) {
			f.mu.RUnlock()
			return nil
		}
		if f.have == nil && end > f.length {
			f.mu.RUnlock()
			return fmt.Errorf("feed %x: get %d of %d: %w", f.key[:4], end-1, f.length, ErrOutOfRange)
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
			return fmt.Errorf("feed %x: waiting for %d: %w", f.key[:4], start, ctx.Err())
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
	return fmt.Errorf("feed %x: read %d: %w", f.key[:4], seq, err)
}

// appendQueue holds the Append calls waiting for the next commit.
type appendQueue struct {
	mu   sync.Mutex
	reqs []*appendReq
}

type appendReq struct {
	values [][]byte
	seq    uint64
	err    error
	done   bool
}

// Append adds values to the end of a writable feed and returns the sequence
// number of the first. All values of one call are covered by one signature;
// concurrent calls may share one. With sync on (the default) the values are
// durable when Append returns. A nil value is ErrInvalidValue, a value over
// MaxBlockSize ErrBlockTooLarge; either way nothing is appended. Append with
// no values appends nothing, writes no signature and returns Len.
func (f *Feed) Append(values ...[]byte) (uint64, error) {
	for i, v := range values {
		if v == nil {
			return 0, fmt.Errorf("feed %x: append value %d: %w: nil", f.key[:4], i, ErrInvalidValue)
		}
		if len(v) > MaxBlockSize {
			return 0, fmt.Errorf("feed %x: append value %d: %w: %d bytes", f.key[:4], i, ErrBlockTooLarge, len(v))
		}
		if err := f.cfg.enc.check(v); err != nil {
			return 0, fmt.Errorf("feed %x: append value %d: %w", f.key[:4], i, err)
		}
	}
	if !f.writable {
		return 0, fmt.Errorf("feed %x: append: %w", f.key[:4], ErrNotWritable)
	}
	if f.cfg.readOnly {
		return 0, fmt.Errorf("feed %x: append: %w", f.key[:4], ErrReadOnly)
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
		f.commit(batch)
	}
	return req.seq, req.err
}

func (f *Feed) commit(batch []*appendReq) {
	seq, err := f.commitValues(batch)
	for _, r := range batch {
		r.seq, r.err, r.done = seq, err, true
		seq += uint64(len(r.values))
	}
}

// commitValues writes the values of a batch as one append. It runs under
// writeMu; it changes the published state only when every write succeeded.
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

func (f *Feed) commitValues(batch []*appendReq) (uint64, error) {
	f.mu.RLock()
	closed, start, signed, byteLen := f.closed, f.length, f.signed, f.byteLen
	f.mu.RUnlock()
	if closed {
		return 0, fmt.Errorf("feed %x: append: %w", f.key[:4], ErrClosed)
	}
	if err := f.failed(); err != nil {
		return 0, fmt.Errorf("feed %x: append refused after a failed write; reopen the feed: %w", f.key[:4], err)
	}
	var n, size uint64
	for _, r := range batch {
		n += uint64(len(r.values))
		for _, v := range r.values {
			size += uint64(len(v))
		}
	}
	if n == 0 {
		return start, nil
	}
	if start+n > maxTreeLength || byteLen+size > maxTreeBytes {
		return 0, fmt.Errorf("feed %x: append %d entries at %d: %w", f.key[:4], n, start, ErrFull)
	}
	secret, err := f.secretKey()
	if err != nil {
		return 0, fmt.Errorf("feed %x: append: %w", f.key[:4], err)
	}
	var roots []storedNode
	if signed != nil && signed.roots != nil {
		roots = signed.roots
	} else if start > 0 {
		// Opened and not appended to since (a proof may have read the
		// signature alone).
		if roots, err = f.signedRoots(start); err != nil {
			return 0, fmt.Errorf("feed %x: append: %w", f.key[:4], err)
		}
	}

	// Data: one write of all values' records.
	ws := f.scratch()
	data := ws.data[:0]
	seq := start
	for _, r := range batch {
		for _, v := range r.values {
			data = appendDataRecord(data, seq, v)
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
	run := ws.tree[:0]
	run = append(run, make([]byte, runLen*nodeSize)...)
	var early []storedNode
	off := byteLen
	seq = start
	// Each leaf records the number of the signature record that will
	// cover it; see checkTail.
	ord := uint32((f.sigsEnd-headerSize)/sigRecordSize + 1)
	for _, r := range batch {
		for _, v := range r.values {
			cur := storedNode{Node{Index: 2 * seq, Hash: ws.hasher.sum(v), Size: uint64(len(v))}, off}
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
	// The parents of older roots lie before the run. If the nodes between
	// the lowest of them and the run were written lately, they are known,
	// and the run grows down to that parent: one write instead of several.
	treeStart := runStart
	// A failed write is undone (see failWrite): the new parents of older
	// roots, below the signed tree's end, were absent before.
	allEarly := early
	undo := &writeUndo{length: start, byteLen: byteLen, nodes: func() []uint64 {
		idx := make([]uint64, len(allEarly))
		for i := range allEarly {
			idx[i] = allEarly[i].Index
		}
		return idx
	}}
	if len(early) > 0 {
		if ext, ok := ws.recent.extend(ws.ex[:0], early, runStart, run); ok {
			ws.ex = ext[:0]
			run, treeStart, early = ext, early[len(early)-1].Index, nil
		}
	}

	if _, err := f.fdata().WriteAt(data, dataPos(start, byteLen)); err != nil {
		return 0, f.failWrite(undo, fmt.Errorf("feed %x: append: %w", f.key[:4], err))
	}
	if _, err := f.ftree().WriteAt(run, headerSize+int64(treeStart)*nodeSize); err != nil {
		return 0, f.failWrite(undo, fmt.Errorf("feed %x: append: %w", f.key[:4], err))
	}
	var rec [nodeSize]byte
	for i := range early {
		encodeNode(rec[:], &early[i])
		if _, err := f.ftree().WriteAt(rec[:], headerSize+int64(early[i].Index)*nodeSize); err != nil {
			return 0, f.failWrite(undo, fmt.Errorf("feed %x: append: %w", f.key[:4], err))
		}
	}
	ws.recent.remember(treeStart, run)
	for i := range early {
		encodeNode(rec[:], &early[i])
		ws.recent.remember(early[i].Index, rec[:])
	}
	length := start + n
	sig := signRoots(secret, treeHash(newRoots), length)
	if err := f.writeSignature(length, sig, f.fdata(), f.ftree()); err != nil {
		return 0, f.failWrite(undo, err)
	}
	f.publish(length, off, newRoots, sig, nil)
	return start, nil
}

// writeSignature makes the files durable (when syncing), then appends and
// syncs the signature record for length.
func (f *Feed) writeSignature(length uint64, sig []byte, files ...File) error {
	if !f.cfg.noSync {
		for _, file := range files {
			if err := file.Sync(); err != nil {
				f.scratch().failed = err
				return fmt.Errorf("feed %x: sync: %w", f.key[:4], err)
			}
		}
	}
	rec := f.scratch().sig[:]
	var flags uint32
	if !f.cfg.noSync {
		flags = sigSynced
	}
	encodeSigRecord(rec, length, sig, flags)
	if _, err := f.fsigs().WriteAt(rec, f.sigsEnd); err != nil {
		return fmt.Errorf("feed %x: write signature: %w", f.key[:4], err)
	}
	if !f.cfg.noSync {
		if err := f.fsigs().Sync(); err != nil {
			f.scratch().failed = err
			return fmt.Errorf("feed %x: sync: %w", f.key[:4], err)
		}
	}
	f.sigsEnd += sigRecordSize
	return nil
}

// publish makes a new state visible and wakes waiters and subscribers.
// Length and roots change only if length grew; got marks blocks a replica
// received.
func (f *Feed) publish(length, byteLen uint64, roots []storedNode, sig []byte, got func(*bitset)) {
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

// changedChan returns the channel that the next change closes. Called with
// f.mu held, at least for reading: changes happen under the write lock.
func (f *Feed) changedChan() chan struct{} {
	if ch := f.changed.Load(); ch != nil {
		return *ch
	}
	ch := make(chan struct{})
	if f.changed.CompareAndSwap(nil, &ch) {
		return ch
	}
	return *f.changed.Load()
}

// subscriber is a Subscribe channel or an internal function.
type subscriber struct {
	id int
	c  chan<- struct{}
	fn func()
}

// notifyLocked signals every subscriber; f.mu is held.
func (f *Feed) notifyLocked() {
	for _, s := range f.subs {
		if s.fn != nil {
			s.fn()
			continue
		}
		select {
		case s.c <- struct{}{}:
		default:
		}
	}
}

// subscribe adds a subscriber and returns the function that removes it.
func (f *Feed) subscribe(sub subscriber) (cancel func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sub.id = int(f.nextSub)
	f.nextSub++
	f.subs = append(f.subs, sub)
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.subs = slices.DeleteFunc(f.subs, func(s subscriber) bool { return s.id == sub.id })
	}
}

// want records that [start, end) is wanted until the returned function is
// called, and signals the subscribers.
func (f *Feed) want(start, end uint64) (done func()) {
	ws := f.wants.Load()
	if ws == nil {
		f.wants.CompareAndSwap(nil, &wantSet{wanted: make(map[uint64]span)})
		ws = f.wants.Load()
	}
	ws.mu.Lock()
	id := ws.next
	ws.next++
	ws.wanted[id] = span{start, end}
	ws.mu.Unlock()
	f.signal()
	return func() {
		ws.mu.Lock()
		delete(ws.wanted, id)
		ws.mu.Unlock()
	}
}

// wantedRanges returns the ranges that calls are waiting for, sorted and
// merged.
func (f *Feed) wantedRanges() []span {
	ws := f.wants.Load()
	if ws == nil {
		return nil
	}
	ws.mu.Lock()
	out := make([]span, 0, len(ws.wanted))
	for _, w := range ws.wanted {
		out = append(out, w)
	}
	ws.mu.Unlock()
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	merged := out[:0]
	for _, w := range out {
		if n := len(merged); n > 0 && merged[n-1].end >= w.start {
			merged[n-1].end = max(merged[n-1].end, w.end)
			continue
		}
		merged = append(merged, w)
	}
	return merged
}

// signal wakes the subscribers without a change of state.
func (f *Feed) signal() {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.notifyLocked()
}

// Download fetches entries [start, end) of a replica from the peers it
// replicates with, and returns once they are all held locally, the context
// ends or the feed is closed. In a sparse database (Options.Sparse) this is
// how entries are asked for; in others every entry is fetched anyway. On a
// writable feed it returns at once, or ErrOutOfRange past its length.
func (f *Feed) Download(ctx context.Context, start, end uint64) error {
	if start > end || end > maxTreeLength {
		return fmt.Errorf("feed %x: download [%d, %d): %w", f.key[:4], start, end, ErrOutOfRange)
	}
	if start == end {
		return nil
	}
	return f.wait(ctx, start, end)
}

// subscribeFunc calls fn whenever Subscribe would signal. fn runs with the
// feed's lock held: it must not call the feed and must not block.
func (f *Feed) subscribeFunc(fn func()) (cancel func()) {
	return f.subscribe(subscriber{fn: fn})
}

// Subscribe asks for a signal on c whenever entries are appended to the
// feed or arrive from a peer, or a call starts waiting for entries a
// replica lacks. Sends never block: if c is full, a signal is
// already pending. Many feeds may share one channel. The returned function
// ends the subscription.
func (f *Feed) Subscribe(c chan<- struct{}) (cancel func()) {
	return f.subscribe(subscriber{c: c})
}

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
	if sig, err = f.newestSignature(length); err != nil {
		return length, nil, err
	}
	f.mu.Lock()
	if f.signed == nil && f.length == length {
		f.signed = &signedState{sig: sig}
	}
	f.mu.Unlock()
	return length, sig, nil
}

// newestSignature reads the newest signature record, which must cover
// length. Called under writeMu.
func (f *Feed) newestSignature(length uint64) ([]byte, error) {
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

// signedRoots reads the roots of the tree at length, the feed's newest,
// and checks them against the newest signature, for a writer whose roots
// are not held (it was opened and has not appended since). Called under
// writeMu.
func (f *Feed) signedRoots(length uint64) ([]storedNode, error) {
	sig, err := f.newestSignature(length)
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
// its key. It returns ErrVerify if not.
func (f *Feed) Verify(length uint64, sig []byte) error {
	if length == 0 || length > f.Len() {
		return fmt.Errorf("feed %x: verify length %d: %w", f.key[:4], length, ErrOutOfRange)
	}
	roots, err := f.readRoots(length)
	if err != nil {
		return fmt.Errorf("feed %x: verify: %w", f.key[:4], err)
	}
	if !verifyRoots(f.key, treeHash(roots), length, sig) {
		return fmt.Errorf("feed %x: signature for length %d: %w", f.key[:4], length, ErrBadSignature)
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
		return nil, fmt.Errorf("feed %x: proof: %w", f.key[:4], ErrClosed)
	}
	length, sig, err := f.signedNow()
	if err != nil {
		return nil, fmt.Errorf("feed %x: proof: %w", f.key[:4], err)
	}
	if !ok || length == 0 {
		return nil, fmt.Errorf("feed %x: proof of [%d, %d) with length %d: %w", f.key[:4], start, end, length, ErrOutOfRange)
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
	return nil, fmt.Errorf("feed %x: proof of [%d, %d): %w", f.key[:4], start, end, err)
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
			return nil, fmt.Errorf("feed %x: proof of [%d, %d) at length %d: %w", f.key[:4], start, end, length, err)
		}
		p.Nodes = append(p.Nodes, n.Node)
	}
	if start < end {
		blocks, err := f.GetBatch(context.Background(), start, end)
		if err != nil {
			return nil, err
		}
		p.Blocks = blocks
	}
	return p, nil
}

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
		return fmt.Errorf("feed %x: put: %w: nil proof", f.key[:4], ErrBadProof)
	}
	if f.writable {
		return fmt.Errorf("feed %x: put: %w", f.key[:4], ErrNotWritable)
	}
	if f.cfg.readOnly {
		return fmt.Errorf("feed %x: put: %w", f.key[:4], ErrReadOnly)
	}
	if err := f.forkedErr(); err != nil {
		return err
	}
	// Scratch buffers come from a pool shared by all feeds: an idle
	// replica keeps none.
	sc := putScratchPool.Get().(*putScratch)
	defer sc.release()
	t, err := proofTree(p, sc.hasher(), sc.nodes[:0])
	if err != nil {
		return fmt.Errorf("feed %x: put: %w", f.key[:4], err)
	}
	sc.nodes = t.nodes
	if p.Signature != nil && !verifyRoots(f.key, treeHash(t.roots), p.Length, p.Signature) {
		return fmt.Errorf("feed %x: put at length %d: %w", f.key[:4], p.Length, ErrBadSignature)
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
		return fmt.Errorf("feed %x: put: %w", f.key[:4], ErrClosed)
	}
	if err := f.failed(); err != nil {
		return fmt.Errorf("feed %x: put refused after a failed write; reopen the feed: %w", f.key[:4], err)
	}
	if err := f.forkedErr(); err != nil {
		return err // forked while this Put waited
	}
	if p.Signature == nil && p.Length > curLen {
		return fmt.Errorf("feed %x: put: %w: unsigned proof past length %d", f.key[:4], ErrBadProof, curLen)
	}
	// Every node the proof determines must agree with what is stored; an
	// unsigned proof must meet stored roots.
	// The nodes under the blocks fill one span of the tree file, read in
	// one call; a new node of the span is encoded in place in it, and each
	// run of new ones written from there. The few others (uncles and
	// ancestors) are read one by one.
	end := p.Start + uint64(len(p.Blocks))
	var span *nodeSpan
	sc.isNew = sc.isNew[:0]
	if len(p.Blocks) > 0 {
		lo, hi := 2*p.Start, 2*end-1
		sc.tree = slices.Grow(sc.tree[:0], int((hi-lo)*nodeSize))[:(hi-lo)*nodeSize]
		n, err := f.ftree().ReadAt(sc.tree, headerSize+int64(lo)*nodeSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("feed %x: put: %w", f.key[:4], err)
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
			return fmt.Errorf("feed %x: put: %w", f.key[:4], err)
		case old.Hash != n.Hash || old.Size != n.Size || old.Offset != n.Offset:
			if p.Signature != nil { // the key signed both: a fork
				var err error
				if fork, err = f.forkFound(p, t, n.Index); err != nil {
					return fmt.Errorf("feed %x: put: %w (%v)", f.key[:4], fork, err)
				}
				return fmt.Errorf("feed %x: put: %w", f.key[:4], fork)
			}
			return fmt.Errorf("feed %x: put: %w: node %d contradicts the stored tree", f.key[:4], ErrBadProof, n.Index)
		}
	}
	sc.fresh = fresh
	if p.Signature != nil && p.Length > curLen && curLen > 0 {
		// The new roots must be shown to contain the tree held: each root
		// of curLen is among the nodes compared above.
		if r, ok := t.unreachedRoot(curLen); !ok {
			return fmt.Errorf("feed %x: put at length %d: %w: it does not determine node %d, a root of length %d", f.key[:4], p.Length, errNoLink, r, curLen)
		}
	}
	if p.Signature == nil {
		for _, r := range t.roots {
			if _, err := f.readNode(r.Index); err != nil {
				return fmt.Errorf("feed %x: put: %w: unsigned proof does not reach a stored root", f.key[:4], ErrBadProof)
			}
		}
	}
	// Data first, then the nodes that vouch for it, then (synced) the
	// bitfield and signature that make it visible. A failed write is
	// undone (see failWrite): the new nodes were absent, and the bitfield
	// pages are written back from the blocks held.
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
	if f.keyDirty {
		// A new replica's key file is made durable first: data under a
		// key file that a crash could lose would be damage.
		if err := f.ws.meta.Sync(); err != nil {
			f.scratch().failed = err
			return fmt.Errorf("feed %x: sync key file: %w", f.key[:4], err)
		}
	}
	var files []File
	if len(p.Blocks) > 0 {
		// The blocks' records are contiguous in the data file: they are
		// gathered into one write, but a large block is written as it
		// is rather than copied, between its record's length and CRC.
		off := dataPos(p.Start, t.offsetOf(2*p.Start))
		data := sc.data[:0]
		flush := func(b []byte) error {
			if _, err := f.fdata().WriteAt(b, off); err != nil {
				return f.failWrite(undo, fmt.Errorf("feed %x: put: %w", f.key[:4], err))
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
		files = append(files, f.fdata())
	}
	wroteTree := false
	// One write per run of consecutive new nodes: in the span, from its
	// buffer; the others encoded one run at a time.
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
			return f.failWrite(undo, fmt.Errorf("feed %x: put: %w", f.key[:4], err))
		}
		wroteTree = true
		i = j
	}
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
				return f.failWrite(undo, fmt.Errorf("feed %x: put: %w", f.key[:4], err))
			}
			i = j
		}
		wroteTree = true
	}
	if wroteTree {
		files = append(files, f.ftree())
	}
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
					f.scratch().failed = err
					return f.failWrite(undo, fmt.Errorf("feed %x: sync: %w", f.key[:4], err))
				}
			}
			files = nil
		}
		if err := f.writeBits(p.Start, end, newLen); err != nil {
			return f.failWrite(undo, err)
		}
	}
	length, byteLen, roots, sig := curLen, uint64(0), []storedNode(nil), []byte(nil)
	if p.Signature != nil && p.Length > curLen {
		length, roots, sig = p.Length, t.roots, bytes.Clone(p.Signature)
		for _, r := range roots {
			byteLen += r.Size
		}
		if err := f.writeSignature(length, sig, append(files, f.fbits())...); err != nil {
			return f.failWrite(undo, err)
		}
		f.sigReplaced(length)
	} else if !f.cfg.noSync {
		for _, file := range append(files, f.fbits()) {
			if err := file.Sync(); err != nil {
				f.scratch().failed = err
				return f.failWrite(undo, fmt.Errorf("feed %x: sync: %w", f.key[:4], err))
			}
		}
	}
	if f.keyDirty {
		f.keyDirty = false
		meta := f.ws.meta
		f.ws.meta = nil
		if err := meta.Close(); err != nil {
			f.ws.failed = err
			return fmt.Errorf("feed %x: close key file: %w", f.key[:4], err)
		}
	}
	f.publish(length, byteLen, roots, sig, func(b *bitset) {
		b.setRange(p.Start, end)
		healed = f.clearDamagedLocked(p.Start, end)
	})
	fixed = corrupt
	if p.Signature != nil && p.Length < curLen {
		f.keepOlderSignature(p.Length, p.Signature)
	}
	return nil
}

// keepOlderSignature records a verified signature of a length below the
// feed's, so that the feed can later prove entries at that length (a
// replica may lack the nodes to prove them at its newest). The file of
// older signatures is a cache: it is never synced, never part of recovery,
// and its records are checked again by whoever receives a proof made with
// one. Called under writeMu; a failure only loses the cache.
func (f *Feed) keepOlderSignature(length uint64, sig []byte) {
	ws := f.scratch()
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

// writeBits records blocks [start, end) in the bitfield file, and makes the
// file cover every page below length, so that a page missing from it is
// damage. It rewrites whole pages, each with its checksum.
func (f *Feed) writeBits(start, end, length uint64) error {
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
		return fmt.Errorf("feed %x: put: %w", f.key[:4], err)
	}
	f.bitPages = max(f.bitPages, hi)
	return nil
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
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	return f.closeFiles()
}

func (f *Feed) closeFiles() error {
	f.filesMu.Lock()
	f.filesClosed = true
	f.filesMu.Unlock()
	var first error
	files := []File{f.fdata(), f.ftree(), f.fsigs(), f.fbits()}
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
