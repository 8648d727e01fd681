package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	kappa "github.com/kappa-db/kappa-go"
)

var verifyCommand = &command{
	name:    "verify",
	args:    "[-db DIR] [-v]",
	summary: "re-hash every entry and check every signature",
	help: `
Verify reads every entry held here and checks it against its leaf hash in
the feed's merkle tree, checks each feed's newest signature against the
tree's roots, and lists the feeds that failed to load when the database was
opened, and the feeds found forked (their writer's key signed two
histories). It prints one line per problem, naming the feed, the entry's
sequence number and the damaged file, then a summary, and exits with status
1 if it found any problem. Nothing is changed: damaged data is reported and
kept as it is.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		verbose := fl.Bool("v", false, "print a line for every feed")
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		core, err := e.openDB(false)
		if err != nil {
			return err
		}
		defer core.Close()
		for _, r := range core.Repairs() {
			fmt.Fprintf(e.stdout, "repaired on open: %s\n", r)
		}
		var feedLine func(f *kappa.Feed, r feedCheck)
		if *verbose {
			feedLine = func(f *kappa.Feed, r feedCheck) {
				fmt.Fprintf(e.stdout, "%s: %d entries (%d bytes) re-hashed, signature at length %d checked\n",
					feedName(core, f), r.entries, r.bytes, r.sigLength)
			}
		}
		rep, err := verifyCore(e.ctx, core, e.stdout, feedLine)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, rep)
		if n := len(rep.problems); n > 0 {
			return fmt.Errorf("%s: %d %s found", e.db, n, plural(n, "problem", "problems"))
		}
		return core.Close()
	},
}

// verifyReport is what verifyCore found.
type verifyReport struct {
	feeds      int    // feeds checked
	signatures int    // signatures that verified
	entries    uint64 // entries whose hash matched
	bytes      uint64 // and their bytes
	missing    uint64 // entries of replicas not held here
	problems   []string
}

func (r *verifyReport) String() string {
	s := fmt.Sprintf("verified %d %s: %d %s (%d bytes) re-hashed, %d %s checked",
		r.feeds, plural(r.feeds, "feed", "feeds"), r.entries, plural(int(r.entries), "entry", "entries"),
		r.bytes, r.signatures, plural(r.signatures, "signature", "signatures"))
	if r.missing > 0 {
		s += fmt.Sprintf(", %d %s of replicas not held here", r.missing, plural(int(r.missing), "entry", "entries"))
	}
	if n := len(r.problems); n > 0 {
		s += fmt.Sprintf("; %d %s", n, plural(n, "problem", "problems"))
	}
	return s
}

// feedCheck is what verifyCore found in one feed.
type feedCheck struct {
	entries, bytes, sigLength uint64
}

// maxReported bounds the damaged entries listed per feed; the rest are
// counted.
const maxReported = 20

// verifyCore checks every feed of core: the newest signature against the
// tree (Feed.Verify of Feed.Signature), and every entry held against its
// leaf hash (GetBatch checks each entry it reads), reading in chunks and,
// when a chunk fails, entry by entry to name the damaged ones. It also
// counts the feeds that did not load (Core.Damaged) as problems. Problems
// are printed to w as they are found, and listed in the report; feedLine,
// if set, is called after each feed. The error is only for the context
// ending.
func verifyCore(ctx context.Context, core *kappa.Core, w io.Writer, feedLine func(*kappa.Feed, feedCheck)) (*verifyReport, error) {
	rep := &verifyReport{}
	problem := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		rep.problems = append(rep.problems, line)
		fmt.Fprintf(w, "damaged: %s\n", line)
	}
	for _, d := range core.Damaged() {
		if errors.Is(d.Err, kappa.ErrForked) {
			problem("%s", forkProblem(core, d))
			continue
		}
		problem("feed in slot %d not loaded: %s", d.Slot, describe(core, d))
	}
	for _, f := range core.Feeds() {
		rep.feeds++
		var fc feedCheck
		name := feedName(core, f)
		length, sig := f.Signature()
		fc.sigLength = length
		if length > 0 {
			if err := f.Verify(length, sig); err != nil {
				problem("%s: signature at length %d: %s", name, length, where(core, err))
			} else {
				rep.signatures++
			}
		}
		chunk := chunkEntries(f)
		bad := 0
		for s := f.NextPresent(0); s < length; s = f.NextPresent(s) {
			stop := min(f.NextMissing(s), length)
			for s < stop {
				n := min(stop-s, chunk)
				values, err := f.GetBatch(ctx, s, s+n)
				if err == nil {
					for _, v := range values {
						fc.bytes += uint64(len(v))
					}
					fc.entries += n
					s += n
					continue
				}
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				// Name each damaged entry: read the chunk one by one.
				for end := s + n; s < end; s++ {
					v, err := f.GetBatch(ctx, s, s+1)
					if err == nil {
						fc.bytes += uint64(len(v[0]))
						fc.entries++
						continue
					}
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					if bad++; bad <= maxReported {
						problem("%s seq %d: %s", name, s, where(core, err))
					}
				}
			}
		}
		if bad > maxReported {
			problem("%s: %d more damaged entries not listed", name, bad-maxReported)
		}
		rep.missing += length - f.Downloaded()
		rep.entries += fc.entries
		rep.bytes += fc.bytes
		if feedLine != nil {
			feedLine(f, fc)
		}
	}
	return rep, nil
}

// feedName names a feed for a person: its short key and writer name.
func feedName(core *kappa.Core, f *kappa.Feed) string {
	if name, ok := core.WriterName(f.Key()); ok {
		return fmt.Sprintf("feed %s (writer %q)", shortKey(f.Key()), name)
	}
	return fmt.Sprintf("feed %s", shortKey(f.Key()))
}

// where describes an error, naming the damaged file by its path when the
// error is a *kappa.CorruptError.
func where(core *kappa.Core, err error) string {
	var ce *kappa.CorruptError
	if errors.As(err, &ce) {
		return fmt.Sprintf("%s at offset %d: %s", filepath.Join(core.Dir(), filepath.FromSlash(ce.File)), ce.Offset, ce.Reason)
	}
	return cleanMsg(err)
}

// describe describes a feed that did not load.
func describe(core *kappa.Core, d kappa.Damage) string {
	who := ""
	if d.Key != nil {
		who = fmt.Sprintf("feed %s ", shortKey(d.Key))
	}
	if d.Name != "" {
		who += fmt.Sprintf("(writer %q) ", d.Name)
	}
	return who + where(core, d.Err)
}
