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
	summary: "check every entry, tree node, signature and bitfield page",
	help: `
Verify checks everything that any read checks: every entry held here (its
leaf in the feed's merkle tree, its record's length and value against that
leaf, and its record's checksum), every tree node's checksum (a writer must
hold every node of its tree), every stored signature record (its checksum,
and its signature against the tree's roots at its length where this
database holds them; those it cannot check are counted), every bitfield
page of a replica and every manifest record; and it lists the feeds that
failed to load when the database was opened, and the feeds found forked
(their writer's key signed two histories). It prints one line per
problem, naming the feed, the entry's sequence number (where there is
one) and the damaged file and offset (at most 20 damaged entries a feed,
then one line saying more are not listed), then a summary counting them
all, and exits with status 1 when it found a problem: damage a read would
refuse, damage opening found (a feed that did not load, a fork), and
damage no read of the entries meets, which log reads through with status
0 (an older signature record, a tree node Get and log do not read, a
bitfield page opening rebuilds, a manifest record, a writer's secret
key). Damaged data is reported and kept as it
is. The database is opened read-only: nothing is changed, and a tail torn
by a crash, which opening for writing would cut, is reported. A record
whose checksum is stale but whose value matches its leaf hash is intact:
it is printed as a stale checksum, not a problem (a view's batch of
entries all held, or Core.Verify, on a database opened for writing
rewrites it).`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		verbose := fl.Bool("v", false, "print a line for every feed")
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		core, err := e.openDBReadOnly(false)
		if err != nil {
			return err
		}
		defer core.Close()
		for _, r := range core.Repairs() {
			fmt.Fprintf(e.stdout, "not repaired (opened read-only): %s\n", r)
		}
		var feedLine func(f *kappa.Feed, st kappa.VerifyStats)
		if *verbose {
			feedLine = func(f *kappa.Feed, st kappa.VerifyStats) {
				fmt.Fprintf(e.stdout, "%s: %d %s (%d bytes) re-hashed, %d tree %s and %d %s checked\n",
					feedName(core, f), st.Entries, plural(int(st.Entries), "entry", "entries"), st.Bytes,
					st.Nodes, plural(int(st.Nodes), "node", "nodes"), st.Signatures, plural(st.Signatures, "signature", "signatures"))
			}
		}
		rep, err := verifyCore(e.ctx, core, e.stdout, feedLine)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, rep)
		if n := rep.Problems; n > 0 {
			return fmt.Errorf("%s: %d %s found", e.db, n, plural(n, "problem", "problems"))
		}
		return core.Close()
	},
}

// verifyReport is what verifyCore found.
type verifyReport struct {
	kappa.VerifyStats
}

func (r *verifyReport) String() string {
	s := fmt.Sprintf("verified %d %s: %d %s (%d bytes) re-hashed, %d %s checked",
		r.Feeds, plural(r.Feeds, "feed", "feeds"), r.Entries, plural(int(r.Entries), "entry", "entries"),
		r.Bytes, r.Signatures, plural(r.Signatures, "signature", "signatures"))
	if r.Unchecked > 0 {
		s += fmt.Sprintf(", %d %s at lengths whose tree is not held here", r.Unchecked, plural(r.Unchecked, "signature", "signatures"))
	}
	if r.Stale > 0 {
		s += fmt.Sprintf(", %d stale %s over intact values", r.Stale, plural(r.Stale, "checksum", "checksums"))
	}
	if r.Missing > 0 {
		s += fmt.Sprintf(", %d %s of replicas not held here", r.Missing, plural(int(r.Missing), "entry", "entries"))
	}
	if n := r.Problems; n > 0 {
		s += fmt.Sprintf("; %d %s", n, plural(n, "problem", "problems"))
	}
	return s
}

// maxReported bounds the damaged entries listed per feed; the rest are
// counted.
const maxReported = 20

// verifyCore checks core with Core.Verify, printing each problem to w as it
// is found ("damaged: ...") and each stale checksum found over an intact
// value ("not repaired (opened read-only): ..."); feedLine, if set, is called after each feed. The
// error is only for the context ending or a file that cannot be read.
func verifyCore(ctx context.Context, core *kappa.Core, w io.Writer, feedLine func(*kappa.Feed, kappa.VerifyStats)) (*verifyReport, error) {
	rep := &verifyReport{}
	before := len(core.Repairs())
	entries := map[string]int{} // damaged entries listed, by feed key
	opts := &kappa.VerifyOptions{
		OnDamage: func(d kappa.Damage) {
			if errors.Is(d.Err, kappa.ErrForked) {
				fmt.Fprintf(w, "damaged: %s\n", forkProblem(core, d))
				return
			}
			if !d.Entry {
				var ce *kappa.CorruptError
				if f := core.Feed(d.Key); d.Key != nil && f != nil {
					fmt.Fprintf(w, "damaged: %s: %s\n", feedName(core, f), where(core, d.Err))
				} else if errors.As(d.Err, &ce) && ce.File == "manifest" {
					fmt.Fprintf(w, "damaged: manifest record of slot %d: %s\n", d.Slot, where(core, d.Err))
				} else {
					fmt.Fprintf(w, "damaged: feed in slot %d not loaded: %s\n", d.Slot, describe(core, d))
				}
				return
			}
			f := core.Feed(d.Key)
			if n := entries[string(d.Key)]; n == maxReported {
				fmt.Fprintf(w, "damaged: %s: more damaged entries not listed\n", feedName(core, f))
			}
			if entries[string(d.Key)]++; entries[string(d.Key)] <= maxReported {
				fmt.Fprintf(w, "damaged: %s seq %d: %s\n", feedName(core, f), d.Seq, where(core, d.Err))
			}
		},
		OnFeed: func(f *kappa.Feed, st kappa.VerifyStats) {
			for _, r := range core.Repairs()[before:] {
				fmt.Fprintf(w, "not repaired (opened read-only): %s\n", r)
			}
			before = len(core.Repairs())
			if feedLine != nil {
				feedLine(f, st)
			}
		},
	}
	st, err := core.Verify(ctx, opts)
	if err != nil {
		return nil, err
	}
	rep.VerifyStats = st
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
