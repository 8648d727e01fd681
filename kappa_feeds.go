package kappa

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"fmt"
	"unicode/utf8"
)

// Writer returns the local writable feed called name, creating it if there
// is none. Names are local (they are not replicated) and persist across
// restarts. A name is 1 to 88 bytes of UTF-8 without control characters,
// '/' or '\', and not "." or "..", and may look like a number; any other
// name is ErrInvalidValue.
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
	prefix := feedPrefix(slot)
	// Removed last, so a crash while the slot is wiped may leave them
	// alone. They go even from a slot with no other file: a journal left
	// there would be replayed by the new feed, and is another feed's (its
	// tags refuse it).
	last := []string{fileOlderSigs, fileFork, fileJournal}
	names := last
	if exists {
		names = append([]string{fileKey, fileData, fileTree, fileSignatures, fileBitfield}, last...)
	}
	for _, name := range names {
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
