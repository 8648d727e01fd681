package kappa

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"slices"
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

	// Sparse makes replicas fetch only what is asked for: entries a Get
	// or GetBatch waits for, and ranges passed to Feed.Download. Without
	// it, replication fetches every entry of every feed. A sparse replica
	// learns a feed's length from what it fetches (Len stays 0 until then),
	// and a non-live session of a sparse database ends once it holds what
	// local calls asked for.
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

	node nodeID // this opening of the database, for the peers it meets

	contexts contextMemory // what each writer's causal contexts named (kappa_context.go)
	causal   causalState   // the causal index (kappa_causal.go)

	swarmMu sync.Mutex
	swarms  map[*Swarm]bool // open swarms, closed by Close
	// swarmsClosed: Close began, no swarm may start.
	swarmsClosed bool
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
		who += fmt.Sprintf(" (%x)", d.Key[:min(4, len(d.Key))])
	}
	if d.Name != "" {
		who += fmt.Sprintf(" writer %q", d.Name)
	}
	if d.Entry {
		who += fmt.Sprintf(" entry %d", d.Seq)
	}
	if d.Err == nil {
		return who + ": damaged"
	}
	return who + ": " + d.Err.Error()
}

// Unwrap returns Err.
func (d Damage) Unwrap() error { return d.Err }

// Repair is a change made to a stored file: by opening, a tail that a crash
// left torn, cut back to the last state that verifies, or a file that a
// journal replay wrote again (which may grow it); later, a record
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
	if r.To > r.From {
		return fmt.Sprintf("%s grown from %d to %d bytes: %s", r.File, r.From, r.To, r.Reason)
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
			return nil, fmt.Errorf("%w (%w: nothing is created)", err, ErrReadOnly)
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

// openCore opens the database held in s with opts (nil for defaults): it
// checks the options, loads the database (see load), and on failure closes
// whatever it opened. Open and New call it.
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
	if _, err := rand.Read(c.node[:]); err != nil {
		return nil, err
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
	c.startCausal()
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

// Repairs lists every Repair made since the database was opened, as
// Options.OnRepair receives them: what opening did to recover from a crash
// (torn tails cut, journals replayed, permissions tightened) and what was
// healed later (a stale checksum rewritten, a damaged entry rewritten from
// a peer's copy). On a read-only database it lists what opening would
// have done, and nothing was changed.
func (c *Core) Repairs() []Repair {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.repairs)
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

// Dir returns the directory of a database on directory storage (opened
// with Open, or made with New on a *DirStorage), and "" for one made with
// New on another Storage. The database never uses names under
// "views/" in it: a view may keep its own files there, under its name.
func (c *Core) Dir() string {
	if d, ok := c.store.(*DirStorage); ok {
		return d.Dir()
	}
	return ""
}

// Close stops the views (waiting for a Map in progress), closes every feed
// and, for a database made by Open, its directory. Calls waiting in Ready,
// Pause or Get fail with ErrClosed. Close may be called more than once and
// from several goroutines; every call returns once the database is closed.
func (c *Core) Close() error {
	c.closeOnce.Do(func() {
		c.closeSwarms()
		c.addMu.Lock()
		c.mu.Lock()
		c.closed = true
		feeds := c.feeds
		c.feeds = nil
		c.mu.Unlock()
		c.addMu.Unlock()
		close(c.done)
		c.causal.wg.Wait()
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
