package kappa

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
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

	// NoSync turns off fsync for every feed and for the database's own
	// files; see FeedOptions.NoSync.
	NoSync bool

	// OnError receives errors that no call returns: a view's Map or state
	// failing, a feed that could not be loaded. It is called from
	// background goroutines and must not block for long.
	OnError func(error)

	// MaxOpenFiles bounds the file descriptors Open's directory storage
	// keeps open; zero means the default of DirOptions.
	MaxOpenFiles int
}

// Core is a kappa database: a set of feeds, some written here and some
// replicated from peers, and the views built over all of them. A Core is
// safe for concurrent use.
type Core struct {
	store    Storage
	ownStore bool
	opts     Options
	key      []byte
	enc      Encoding // the stored value encoding
	meta     File
	manifest File

	addMu sync.Mutex // serializes adding feeds (and writing the manifest)
	slots int        // manifest records, used or not; guarded by addMu

	mu           sync.RWMutex
	feeds        []*Feed
	byKey        map[string]*Feed
	byName       map[string]*Feed
	feedsChanged chan struct{}
	views        map[string]*Index
	viewList     []*Index
	closed       bool

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Files of a database, besides each feed's files under "feeds/N/".
const (
	fileDB       = "kappa"
	fileManifest = "manifest"

	dbMetaSize     = 52
	manifestRecord = 128
	maxNameLen     = manifestRecord - 40
	flagLocal      = 1
)

var (
	magicDB       = [8]byte{'K', 'A', 'P', 'P', 'A', 'D', 'B', 0}
	magicManifest = [8]byte{'K', 'A', 'P', 'P', 'F', 'E', 'D', 'S'}
)

// Open opens the database in directory dir, creating it if needed. The
// directory is locked: a second Open of it fails with ErrLocked until Close.
func Open(dir string, opts *Options) (*Core, error) {
	var do DirOptions
	if opts != nil {
		do = DirOptions{MaxOpenFiles: opts.MaxOpenFiles, NoSync: opts.NoSync}
	}
	s, err := OpenDir(dir, &do)
	if err != nil {
		return nil, err
	}
	c, err := New(s, opts)
	if err != nil {
		s.Close()
		return nil, err
	}
	c.ownStore = true
	return c, nil
}

// New opens the database held in s, creating it if s is empty. Close does
// not close s.
func New(s Storage, opts *Options) (*Core, error) {
	c := &Core{
		store:        s,
		byKey:        make(map[string]*Feed),
		byName:       make(map[string]*Feed),
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
	return c, nil
}

func (c *Core) load() error {
	var err error
	if c.meta, err = c.store.Open(fileDB, true); err != nil {
		return err
	}
	if c.manifest, err = c.store.Open(fileManifest, true); err != nil {
		return err
	}
	msize, err := c.manifest.Size()
	if err != nil {
		return err
	}
	if err := c.loadKey(msize > headerSize); err != nil {
		return err
	}
	var hdr [headerSize]byte
	copy(hdr[:8], magicManifest[:])
	binary.BigEndian.PutUint32(hdr[8:], formatVersion)
	binary.BigEndian.PutUint32(hdr[12:], manifestRecord)
	if msize < headerSize {
		if _, err := c.manifest.WriteAt(hdr[:], 0); err != nil {
			return err
		}
		return c.sync(c.manifest)
	}
	var got [headerSize]byte
	if _, err := c.manifest.ReadAt(got[:], 0); err != nil {
		return err
	}
	if got != hdr {
		return &CorruptError{File: fileManifest, Offset: 0, Reason: "bad header"}
	}
	n := int((msize - headerSize) / manifestRecord)
	buf := make([]byte, n*manifestRecord)
	if _, err := c.manifest.ReadAt(buf, headerSize); err != nil {
		return err
	}
	for i := range n {
		rec := buf[i*manifestRecord : (i+1)*manifestRecord]
		off := int64(headerSize + i*manifestRecord)
		if crc32.Checksum(rec[4:], castagnoli) != binary.BigEndian.Uint32(rec) {
			if i == n-1 {
				n-- // a torn last record: its feed was never handed out
				break
			}
			c.report(&CorruptError{File: fileManifest, Offset: off, Reason: "record checksum mismatch; feed skipped"})
			continue
		}
		flags, nameLen := rec[4], int(rec[5])
		if nameLen > maxNameLen {
			c.report(&CorruptError{File: fileManifest, Offset: off, Reason: "name too long; feed skipped"})
			continue
		}
		key := rec[8:40]
		name := string(rec[40 : 40+nameLen])
		f, err := OpenFeed(c.store, feedPrefix(i), &FeedOptions{Key: key, ValueEncoding: c.enc, NoSync: c.opts.NoSync})
		if err != nil {
			c.report(fmt.Errorf("kappa: feed %d (%x) not loaded: %w", i, key[:4], err))
			continue
		}
		c.addLocked(f, flags&flagLocal != 0, name)
	}
	c.slots = n
	return truncateBeyond(c.manifest, int64(headerSize+n*manifestRecord))
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
	valid := size >= dbMetaSize && bytes.Equal(buf[:8], magicDB[:]) &&
		crc32.Checksum(buf[:dbMetaSize-4], castagnoli) == binary.BigEndian.Uint32(buf[dbMetaSize-4:])
	if !valid {
		if hasFeeds || (size >= dbMetaSize && !isZero(buf[:])) {
			return &CorruptError{File: fileDB, Offset: 0, Reason: "database key file is damaged"}
		}
		// New, or its creation was torn before anything else was written.
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
		copy(buf[:8], magicDB[:])
		binary.BigEndian.PutUint32(buf[8:], formatVersion)
		buf[12] = c.enc.code()
		copy(buf[16:48], key)
		binary.BigEndian.PutUint32(buf[48:], crc32.Checksum(buf[:48], castagnoli))
		if _, err := c.meta.WriteAt(buf[:], 0); err != nil {
			return err
		}
		return c.sync(c.meta)
	}
	if v := binary.BigEndian.Uint32(buf[8:]); v != formatVersion {
		return &CorruptError{File: fileDB, Offset: 8, Reason: fmt.Sprintf("unknown format version %d", v)}
	}
	enc, ok := encodingFromCode(buf[12])
	if !ok {
		return &CorruptError{File: fileDB, Offset: 12, Reason: fmt.Sprintf("unknown value encoding %d", buf[12])}
	}
	c.enc = enc
	c.key = bytes.Clone(buf[16:48])
	if c.opts.SharedKey != nil && !bytes.Equal(c.opts.SharedKey, c.key) {
		return fmt.Errorf("%w: the database has another shared key", ErrKeyMismatch)
	}
	if c.opts.ValueEncoding != "" && c.opts.ValueEncoding != c.enc {
		return fmt.Errorf("%w: opened as %s, created as %s", ErrEncodingMismatch, c.opts.ValueEncoding, c.enc)
	}
	return nil
}

func (c *Core) sync(f File) error {
	if c.opts.NoSync {
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
	}
	close(c.feedsChanged)
	c.feedsChanged = make(chan struct{})
	views := c.viewList
	c.mu.Unlock()
	for _, x := range views {
		x.wakeUp()
	}
}

func (c *Core) report(err error) {
	if c.opts.OnError != nil {
		c.opts.OnError(err)
	}
}

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

func (c *Core) writer(name string, kp *KeyPair) (*Feed, error) {
	if name == "" || len(name) > maxNameLen {
		return nil, fmt.Errorf("writer %q: %w: a name is 1 to %d bytes", name, ErrInvalidValue, maxNameLen)
	}
	f, err := c.add(name, true, kp, nil)
	if err != nil {
		return nil, fmt.Errorf("writer %q: %w", name, err)
	}
	if kp != nil && !bytes.Equal(f.Key(), kp.PublicKey) {
		return nil, fmt.Errorf("writer %q: %w: it has key %x", name, ErrKeyMismatch, f.Key()[:8])
	}
	return f, nil
}

// AddFeed returns the feed with the given public key, adding an empty
// replica of it if the database does not hold it yet. Replication adds
// feeds this way.
func (c *Core) AddFeed(key []byte) (*Feed, error) {
	if len(key) != PublicKeySize {
		return nil, fmt.Errorf("add feed: %w: key is %d bytes", ErrInvalidKey, len(key))
	}
	f, err := c.add("", false, nil, key)
	if err != nil {
		return nil, fmt.Errorf("add feed %x: %w", key[:4], err)
	}
	return f, nil
}

func (c *Core) add(name string, local bool, kp *KeyPair, key []byte) (*Feed, error) {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	c.mu.RLock()
	closed := c.closed
	f := c.byName[name]
	if !local {
		f = c.byKey[string(key)]
	}
	c.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if f != nil {
		return f, nil
	}
	opts := &FeedOptions{ValueEncoding: c.enc, NoSync: c.opts.NoSync}
	if local {
		if kp == nil {
			k, err := NewKeyPair()
			if err != nil {
				return nil, err
			}
			kp = &k
		}
		key = kp.PublicKey
		opts.SecretKey = kp.SecretKey
	} else {
		opts.Key = key
	}
	if c.Feed(key) != nil {
		return nil, fmt.Errorf("%w: feed %x is already in the database as a replica", ErrKeyMismatch, key[:4])
	}
	// A slot past the manifest's end may hold a feed whose record was torn
	// away by a crash: clear it first.
	slot := c.slots
	prefix := feedPrefix(slot)
	for _, name := range []string{fileKey, fileData, fileTree, fileSignatures, fileBitfield} {
		if err := c.store.Remove(prefix + name); err != nil {
			return nil, err
		}
	}
	f, err := OpenFeed(c.store, prefix, opts)
	if err != nil {
		return nil, err
	}
	var rec [manifestRecord]byte
	if local {
		rec[4] = flagLocal
	}
	rec[5] = byte(len(name))
	copy(rec[8:40], key)
	copy(rec[40:], name)
	binary.BigEndian.PutUint32(rec[:4], crc32.Checksum(rec[4:], castagnoli))
	if _, err := c.manifest.WriteAt(rec[:], int64(headerSize+slot*manifestRecord)); err != nil {
		f.Close()
		return nil, err
	}
	if err := c.sync(c.manifest); err != nil {
		f.Close()
		return nil, err
	}
	c.slots++
	c.addLocked(f, local, name)
	return f, nil
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

// feedCount returns how many feeds the database holds, and whether it is
// closed.
func (c *Core) feedCount() (int, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.feeds), c.closed
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
		c.wg.Wait()
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
