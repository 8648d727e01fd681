// Package kappa is a minimal peer-to-peer database, based on append-only
// logs and materialized views: a Go re-implementation of kappa-core 7 and
// the modules under it (hypercore 9, multifeed, multifeed-index), in one
// package that imports only the standard library.
//
// # Getting started
//
// Open a database in a directory, install a view, get a writer and append:
//
//	core, err := kappa.Open("./log", &kappa.Options{ValueEncoding: kappa.JSON})
//	if err != nil { ... }
//	defer core.Close()
//
//	sum := &sumView{}                     // any type with Map([]kappa.Entry) error
//	core.Use("sum", 1, sum)               // name, version, view
//
//	w, err := core.Writer("default")      // a local feed, created once, kept by name
//	seq, err := w.Append([]byte(`1`))     // one signature per call
//
//	err = core.Ready(ctx, "sum")          // wait until the view caught up
//
// See the package example for the whole program.
//
// # Feeds
//
// A Feed is one writer's append-only log. Every entry is a leaf of a merkle
// tree laid out as a flat tree (hypercore's layout); after each Append the
// writer signs the hash of the tree's roots and its length with ed25519. A
// peer that holds only the public key verifies any entry it is given
// through a Proof: the entries, the tree nodes linking them to the roots,
// and the signature. Put stores nothing that does not verify, and raises a
// replica's length only with a proof that reaches the roots it holds. Hashes are
// SHA-256 with a type byte for leaves, parents and roots, so the format is
// hypercore's in structure, not byte for byte.
//
// # Views
//
// A View's Map is called with batches of entries from all feeds; see View
// for the contract (batch shape, fairness, holes, delivery guarantee).
// Views are versioned: when the version passed to Use differs from the one
// the view's stored progress was made with, the view is wiped (ClearIndex)
// together with its progress and rebuilt from the first entry.
//
// # Storage and durability
//
// Feeds live in a Storage: a directory (OpenDir; locked against a second
// process, with a bounded number of open file descriptors; read-only opens,
// Options.ReadOnly, share it and write nothing) or memory
// (NewMemStorage; this package's own tests use it to simulate crashes). The on-disk
// format is described in doc/FORMAT.md. By default every Append is durable
// when it returns: a small one writes one record of a per-feed journal
// holding its data and tree records and the hash its signature signs, and
// fsyncs the journal alone (one sync per Append, the signature made and the
// files written meanwhile; checkpoints sync the files and cut the
// journal); a large one fsyncs data and tree before the signature
// record that covers them, and that record before Append returns. Options.NoSync
// turns fsync off: a process crash still loses nothing, a power loss may
// lose the newest appends.
//
// Recovery rule: on open, a feed's length is that of the newest signature
// record whose checksum holds and whose signature verifies over the roots
// stored in the tree file. Newer records, and data and tree past that
// length, are a torn tail and are cut. Opening reads a constant amount of
// each feed (plus a replica's bitfield), never the whole log. Damage that a
// torn write cannot explain, such as a bad header or no verifying signature
// among the newest records, is an error matching ErrCorrupt: a
// *CorruptError naming the file and offset. Every entry read is checked:
// against its leaf hash by Get and GetBatch, against its record's CRC-32C
// by a view reading entries all held (then, if that fails, against its
// leaf hash). So damage inside the log is
// reported the same way, never returned as data.
//
// # Damage
//
// Damage is reported and kept, never repaired by throwing data away. A feed
// that fails to load (a damaged header, tree root or manifest record, whole
// signature records missing while sync was on) is listed by Core.Damaged
// with the reason, sent to Options.OnError, and left untouched on disk: it
// is not indexed, Ready does not wait for it, its slot is never reused, and
// Writer for its name returns the error instead of a new feed. What opening
// does change, a torn tail cut back after a crash or a replica's bitfield
// page rebuilt from the tree, is listed by Core.Repairs and sent to
// Options.OnRepair; a read-only database lists what it would change, and
// changes nothing.
//
// Damage to one entry of a loaded feed, found by any read, stays with that
// entry. An entry is intact when its record's length matches its leaf and
// its value hashes to the leaf, whatever the record's CRC says (a stale CRC
// is rewritten and reported as a repair). A damaged entry is reported once
// (a Damage with Entry set, listed by Core.Damaged) and becomes a hole:
// views index every other entry, Ready does not wait for it, peers are told
// it is not available while the rest is served, and a replica fetches it
// again from its peers, which heals it. Core.Verify checks everything the
// reads check.
//
// # Forks
//
// A writer's key that signed two histories (used by two databases, or a
// copied key file) forks its feed. A replica that holds one history and is
// sent the other keeps the evidence (Feed.Fork, a ForkEvidence anyone can
// Verify), marks the feed forked (Feed.Forked; Core.Damaged and
// Options.OnError with a *ForkError matching ErrForked), and no longer
// replicates it; it still reads and indexes its own history, and every
// other feed replicates as before.
//
// # Where a view keeps its files
//
// A database made by Open owns its directory (Core.Dir) except for
// "views/": a view may keep its files under views/<name>/ there, or
// anywhere else of its choosing.
//
// # Errors
//
// Errors wrap the package's sentinel errors (ErrClosed, ErrCorrupt,
// ErrKeyMismatch, …), which are the only messages that start with
// "kappa:"; test them with errors.Is. Bad input to any function returns an
// error; nothing panics on input. (A nil context.Context is not input but a
// mistake, as in the standard library: pass context.Background().)
package kappa
