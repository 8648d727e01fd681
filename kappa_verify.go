package kappa

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// VerifyOptions configure Core.Verify. Both hooks may be nil.
type VerifyOptions struct {
	// OnDamage receives each problem found: what a read would refuse.
	OnDamage func(Damage)
	// OnFeed receives each loaded feed's counts once it is checked.
	OnFeed func(f *Feed, st VerifyStats)
}

// VerifyStats counts what Core.Verify checked and found.
type VerifyStats struct {
	Feeds      int    // loaded feeds checked
	Entries    uint64 // entries held whose value matched its leaf hash
	Bytes      uint64 // the bytes of those entries' blocks (values and causal contexts)
	Missing    uint64 // entries of replicas not held here
	Nodes      uint64 // tree records checked, leaves and parents
	Signatures int    // signature records whose signature verified against the tree
	// Unchecked counts intact signature records whose signature cannot be
	// checked: this replica does not hold the roots of their length.
	Unchecked int
	// Stale counts records whose CRC was stale over an intact value: not
	// damage (the value matches its leaf hash); the CRC was rewritten and
	// reported as a Repair.
	Stale    int
	Problems int // damage found, each passed to OnDamage
}

func (s *VerifyStats) add(o VerifyStats) {
	s.Feeds += o.Feeds
	s.Entries += o.Entries
	s.Bytes += o.Bytes
	s.Missing += o.Missing
	s.Nodes += o.Nodes
	s.Signatures += o.Signatures
	s.Unchecked += o.Unchecked
	s.Stale += o.Stale
	s.Problems += o.Problems
}

// Verify checks everything the database holds that any read checks: every
// manifest record; and in every loaded feed, every entry held (its leaf's
// CRC, its record's length against the leaf and its value against the leaf
// hash, and its record's CRC), every tree record (a writer must hold every
// node of its tree), every signature record (its CRC, and its signature
// against the tree's roots at its length where the feed holds them) and,
// for a replica, every bitfield page; and a writer's key file, whose
// secret key must give its public key (opening leaves that to the first
// Append). The damage listed by Damaged that is not one entry's (feeds
// that did not load, for example) is passed on too.
//
// Each problem found is passed to OnDamage and counted; a damaged entry is
// also marked as a read marks it (see Damaged). A record whose CRC is stale
// over an intact value is no problem: its CRC is rewritten, as a view's
// read would, and reported as a Repair. Verify returns an error only if
// ctx ends, the database is closed or a file cannot be read.
func (c *Core) Verify(ctx context.Context, opts *VerifyOptions) (VerifyStats, error) {
	var o VerifyOptions
	if opts != nil {
		o = *opts
	}
	var st VerifyStats
	seen := map[string]bool{}
	problem := func(d Damage) {
		if seen[d.Error()] {
			return
		}
		seen[d.Error()] = true
		st.Problems++
		if o.OnDamage != nil {
			o.OnDamage(d)
		}
	}
	select {
	case <-c.done:
		return st, fmt.Errorf("verify: %w", ErrClosed)
	default:
	}
	for _, d := range c.Damaged() {
		if !d.Entry {
			problem(d)
		}
	}
	if err := c.verifyManifest(problem); err != nil {
		return st, err
	}
	for _, f := range c.Feeds() {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		fs, err := f.verify(ctx, func(d Damage) {
			d.Slot, d.Key, d.Name = feedSlot(f), f.Key(), f.writer
			problem(d)
		})
		if err != nil {
			return st, fmt.Errorf("verify feed %x: %w", f.key[:4], err)
		}
		fs.Feeds = 1
		if o.OnFeed != nil {
			o.OnFeed(f, fs)
		}
		fs.Problems = 0 // counted by problem
		st.add(fs)
	}
	return st, nil
}

// verifyManifest checks the CRC of every manifest record that opening
// kept.
func (c *Core) verifyManifest(problem func(Damage)) error {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	size, err := c.manifest.Size()
	if err != nil {
		return fmt.Errorf("verify manifest: %w", err)
	}
	// Records from c.slots on are a torn last record that opening cut, or,
	// read-only, reported as a cut to make.
	n := min(max(size-headerSize, 0)/manifestRecord, int64(c.slots))
	buf := make([]byte, n*manifestRecord)
	if _, err := c.manifest.ReadAt(buf, headerSize); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("verify manifest: %w", err)
	}
	for i := range n {
		if _, _, _, ok := decodeManifestRec(buf[i*manifestRecord : (i+1)*manifestRecord]); !ok {
			off := headerSize + i*manifestRecord
			problem(Damage{Slot: int(i), Err: &CorruptError{File: fileManifest, Offset: off, Reason: "record is damaged; the feed is kept but not loaded"}})
		}
	}
	return nil
}
