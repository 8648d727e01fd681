package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"unicode/utf8"

	kappa "github.com/kappa-db/kappa-go"
)

// dbFile is the file that makes a directory a database (doc/FORMAT.md).
const dbFile = "kappa"

// checkDB returns an error unless dir holds a database. Commands other than
// init check this first, because kappa.Open creates a database where there
// is none. A database's file "kappa" starts with a magic (doc/FORMAT.md);
// a "kappa" file without it, next to no manifest, is some other file (the
// binary itself, say), and the directory no database.
func checkDB(dir string) error {
	if dir == "" {
		return usagef("-db is empty")
	}
	if err := checkNotFile(dir); err != nil {
		return err
	}
	none := fmt.Errorf("no database in %s (kappa init -db %s creates one in a new or empty directory)", dir, dir)
	f, err := os.Open(filepath.Join(dir, dbFile))
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return none
	case err != nil:
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return none
	}
	magic := make([]byte, len(dbMagic))
	if _, err := io.ReadFull(f, magic); err == nil && string(magic) == dbMagic {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest")); err != nil {
		return none
	}
	return nil // a damaged database: Open says what is wrong
}

// dbMagic starts the database file.
const dbMagic = "KAPPADB\x00"

// openDB opens the database in e.db, which must exist. With warn, feeds
// that did not load are reported with one warning line on standard error
// (verify lists them).
func (e *env) openDB(warn bool) (*kappa.Core, error) { return e.openDBWith(warn, nil) }

// openDBReadOnly is openDB for the commands that only read: the database is
// opened read-only (kappa.Options.ReadOnly), so that they work on read-only
// media and beside each other, and change nothing, not even a torn tail.
func (e *env) openDBReadOnly(warn bool) (*kappa.Core, error) {
	return e.openDBWith(warn, &kappa.Options{ReadOnly: true})
}

func (e *env) openDBWith(warn bool, opts *kappa.Options) (*kappa.Core, error) {
	core := e.servedCore()
	if core == nil {
		if err := checkDB(e.db); err != nil {
			return nil, err
		}
		var err error
		core, err = kappa.Open(e.db, opts)
		if errors.Is(err, kappa.ErrLocked) {
			return nil, e.servedOr(err)
		}
		if err != nil {
			return nil, err
		}
		if warn && opts != nil && opts.ReadOnly {
			if n := len(core.Repairs()); n > 0 {
				fmt.Fprintf(e.stderr, "kappa: warning: %d repair(s) not made: opened read-only (kappa verify lists them)\n", n)
			}
		}
	}
	if d := core.Damaged(); warn && len(d) > 0 {
		n := forked(d)
		unloaded, hurt := damagedFeeds(core, d)
		if unloaded > 0 {
			fmt.Fprintf(e.stderr, "kappa: warning: %d damaged feed(s) were not loaded (kappa verify lists them)\n", unloaded)
		}
		if hurt > 0 {
			fmt.Fprintf(e.stderr, "kappa: warning: %d loaded feed(s) have damage, read around (kappa verify lists it)\n", hurt)
		}
		if n > 0 {
			fmt.Fprintf(e.stderr, "kappa: warning: %d feed(s) are forked and no longer replicated (kappa verify says more)\n", n)
		}
	}
	return core, nil
}

// damagedFeeds counts the feeds that damage ds names, forks aside: those
// that did not load, and loaded ones whose damage (an entry, or a record
// such as a replica's newest signature) is read around.
func damagedFeeds(core *kappa.Core, ds []kappa.Damage) (unloaded, hurt int) {
	slots := map[int]bool{}
	for _, d := range ds {
		if errors.Is(d.Err, kappa.ErrForked) || slots[d.Slot] {
			continue
		}
		slots[d.Slot] = true
		if d.Entry || d.Key != nil && core.Feed(d.Key) != nil {
			hurt++
		} else {
			unloaded++
		}
	}
	return unloaded, hurt
}

// storedEncoding returns the value encoding the database in dir was created
// with. The package has no accessor for it, so it is read from the database
// file, whose layout doc/FORMAT.md gives: magic "KAPPADB\0", version, then
// the encoding's code at byte 12 (0 or 1 binary, 2 json, 3 utf-8). Call it
// after kappa.Open succeeded, which checked the file.
func storedEncoding(dir string) (kappa.Encoding, error) {
	f, err := os.Open(filepath.Join(dir, dbFile))
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b [16]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return "", fmt.Errorf("%s: %w", f.Name(), err)
	}
	if string(b[:8]) != dbMagic {
		return "", fmt.Errorf("%s: not a database file", f.Name())
	}
	switch b[12] {
	case 0, 1:
		return kappa.Binary, nil
	case 2:
		return kappa.JSON, nil
	case 3:
		return kappa.UTF8, nil
	}
	return "", fmt.Errorf("%s: unknown value encoding %d", f.Name(), b[12])
}

// parseEncoding checks a value encoding given on the command line.
func parseEncoding(s string) (kappa.Encoding, error) {
	switch strings.ToLower(s) {
	case "binary":
		return kappa.Binary, nil
	case "json":
		return kappa.JSON, nil
	case "utf-8", "utf8":
		return kappa.UTF8, nil
	}
	return "", usagef("unknown encoding %q: want json, utf-8 or binary", s)
}

// shortKey is how the tool names a feed in lines meant for people: the
// first 4 bytes of its key in hex, as the package's errors do.
func shortKey(key []byte) string {
	if len(key) < 4 {
		return hex.EncodeToString(key)
	}
	return hex.EncodeToString(key[:4])
}

// parseNoArgs is parse for a command that takes flags only.
func (e *env) parseNoArgs(c *command, fl *flag.FlagSet, args []string) error {
	args, err := e.parse(c, fl, args)
	if err == nil && len(args) > 0 {
		err = usagef("unexpected argument %q", args[0])
	}
	return err
}

// init

var initCommand = &command{
	name:    "init",
	args:    "[-db DIR] [-key HEX|-] [-encoding json|utf-8|binary]",
	summary: "create a database, or join one with -key",
	help: `
Init creates a database in DIR, which must be new or empty. With -key it
joins an existing database instead: the new one has the same shared key
(printed by "kappa key" on a peer's database), so the two can replicate.
-key - reads the key from the first line of standard input instead, so
that it is not in the command line, which other users of the machine can
read (kappa key -db PEER | kappa init -key -). The value encoding is fixed
at creation: every appended value must be JSON, UTF-8 text, or any bytes
(binary, the default). The key does not carry it: a database joined with
-key gets the -encoding given here, so give the one the peer's database
has ("kappa stat" there prints it); the peers' own checks differ
otherwise.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		keyHex := fl.String("key", "", "join the database with this shared `HEX` key (64 hex digits; - reads it from standard input)")
		encName := fl.String("encoding", "binary", "the value `ENCODING`: json, utf-8 or binary")
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		enc, err := parseEncoding(*encName)
		if err != nil {
			return err
		}
		var key []byte
		keySet := false // -key "" is a mistake, not "make a new key"
		fl.Visit(func(f *flag.Flag) { keySet = keySet || f.Name == "key" })
		if keySet {
			if *keyHex == "-" {
				if *keyHex, err = readKeyLine(e.stdin); err != nil {
					return err
				}
			}
			key, err = hex.DecodeString(*keyHex)
			if err != nil || len(key) != 32 {
				return usagef("-key wants the 32-byte shared key as 64 hex digits")
			}
		}
		if e.db == "" {
			return usagef("-db is empty")
		}
		if err := checkNotFile(e.db); err != nil {
			return err
		}
		if checkDB(e.db) == nil {
			return fmt.Errorf("%s already holds a database", e.db)
		}
		created := false
		switch entries, err := os.ReadDir(e.db); {
		case errors.Is(err, fs.ErrNotExist):
			// Made here, so that a failed open removes only a directory
			// this command made.
			if err := os.MkdirAll(filepath.Dir(e.db), 0o700); err != nil {
				return err
			}
			if err := os.Mkdir(e.db, 0o700); err == nil {
				created = true
			} else if !errors.Is(err, fs.ErrExist) {
				return err
			}
		case err != nil:
			return err
		case len(entries) > 0:
			return fmt.Errorf("%s is not empty: init wants a new or empty directory", e.db)
		}
		core, err := kappa.Open(e.db, &kappa.Options{ValueEncoding: enc, SharedKey: key})
		if err != nil {
			if created {
				// Only while it is empty: another init may have made a
				// database in it meanwhile, which is not this one's to
				// remove.
				os.Remove(e.db)
			}
			return err
		}
		verb := "created"
		if key != nil {
			verb = "joined"
		}
		fmt.Fprintf(e.stdout, "%s database %s (encoding %s)\nshared key: %x\n", verb, e.db, enc, core.SharedKey())
		return core.Close()
	},
}

// readKeyLine reads the shared key's line from r (standard input, for
// init -key -): its first line, spaces around it dropped.
func readKeyLine(r io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(r, 1<<10)).ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		if err == io.EOF {
			return "", usagef("-key -: standard input is empty; want the shared key as 64 hex digits")
		}
		return "", fmt.Errorf("-key -: reading standard input: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// key

var keyCommand = &command{
	name:     "key",
	viaServe: true,
	args:     "[-db DIR]",
	summary:  "print the shared key to hand to a peer",
	help: `
Key prints the database's shared key in hex. A peer joins the database with
"kappa init -key HEX"; only databases with the same key replicate. Keep it
secret: whoever has it can read and add feeds.`,
	run: func(e *env, c *command, args []string) error {
		if err := e.parseNoArgs(c, e.flags(c, true), args); err != nil {
			return err
		}
		core, err := e.openDBReadOnly(true)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%x\n", core.SharedKey())
		return e.closeDB(core)
	},
}

// append

var appendCommand = &command{
	name:     "append",
	viaServe: true,
	args:     "[-db DIR] [-writer NAME] [VALUE...]",
	summary:  "append values (arguments, or lines of standard input)",
	help: `
Append appends each VALUE as one entry of the local writer NAME, creating
the writer the first time. Without VALUEs it appends each line of standard
input (without its line ending), in batches of the lines that have arrived:
a batch with a value that fails is not appended, and append stops there,
the lines before it appended (the line append prints counts them).
Interrupted (Ctrl-C), it appends no more lines, says so and exits with
status 1; the lines appended before stay, counted the same way.
Values must match the database's encoding; in a json database, for one:

  kappa append 1 '"two"' '{"n": 3}'

Flags go before the values. A value that starts with "-" needs a "--"
before it ("kappa append -- -1" or "kappa append 1 -- -2"); without one,
append refuses it and appends nothing, so that a flag put after the values
("kappa append v -writer w") is not appended as a value, for good.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		writer := fl.String("writer", "default", "the local writer's `NAME`")
		args, err := e.parse(c, fl, args)
		if err != nil {
			return err
		}
		name := *writer
		core, err := e.openDB(true)
		if err != nil {
			return err
		}
		defer e.closeDB(core)
		enc, err := storedEncoding(e.db)
		if err != nil {
			return err
		}
		var w *kappa.Feed
		first, n := uint64(0), 0
		add := func(values [][]byte) error {
			// Check first, so that a bad value creates no writer.
			for i, v := range values {
				if len(v) > kappa.MaxBlockSize {
					return &badValue{i: i, err: fmt.Errorf("%w: %d bytes, over %d", kappa.ErrBlockTooLarge, len(v), kappa.MaxBlockSize)}
				}
				if err := checkValue(enc, v); err != nil {
					return &badValue{i: i, err: err}
				}
			}
			if w == nil {
				if w, err = core.Writer(name); err != nil {
					return err
				}
			}
			seq, err := w.Append(values...)
			if err != nil {
				return err
			}
			if n == 0 {
				first = seq
			}
			n += len(values)
			return nil
		}
		if len(args) > 0 {
			values := make([][]byte, len(args))
			for i, a := range args {
				values[i] = []byte(a)
			}
			err = add(values)
		} else {
			err = e.appendInput(add)
		}
		if n > 0 {
			// Also when a later batch of lines failed: those before it
			// stay appended.
			fmt.Fprintf(e.stdout, "appended %d %s to writer %q (feed %s, seq %d to %d)\n",
				n, plural(n, "entry", "entries"), name, shortKey(w.Key()), first, first+uint64(n)-1)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintln(e.stdout, "nothing to append")
		}
		return e.closeDB(core)
	},
}

// appendInput appends the lines of standard input with add (see
// appendLines) until they end or the command is interrupted (SIGINT or
// SIGTERM, or its client's interrupt inside a serve): then it waits for
// the batch being appended, appends no more, and says so; the batches
// before it stay appended and are counted, as they are inside a serve.
func (e *env) appendInput(add func([][]byte) error) error {
	ctx, stop := e.untilInterrupted()
	defer stop()
	var mu sync.Mutex // held while a batch is appended
	interrupted := false
	done := make(chan error, 1)
	go func() {
		done <- appendLines(e.stdin, func(values [][]byte) error {
			mu.Lock()
			defer mu.Unlock()
			if interrupted {
				return errInterrupted
			}
			return add(values)
		})
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		mu.Lock()
		interrupted = true
		mu.Unlock()
		// Standard input may stay blocked: the process ends without it.
		return fmt.Errorf("standard input: %w", errInterrupted)
	}
}

// errInterrupted is how a command that reads its input ends when it is
// interrupted; a command run inside a serve says the same (control.go).
var errInterrupted = errors.New("the command was interrupted")

// checkValue checks v against the database's encoding as Append does, so
// that a bad value is found before anything is written.
func checkValue(enc kappa.Encoding, v []byte) error {
	switch {
	case enc == kappa.JSON && !json.Valid(v):
		return fmt.Errorf("%w: not JSON", kappa.ErrInvalidValue)
	case enc == kappa.UTF8 && !utf8.Valid(v):
		return fmt.Errorf("%w: not UTF-8", kappa.ErrInvalidValue)
	}
	return nil
}

// badValue is the error of the i-th value of a batch, which fails the
// database's encoding.
type badValue struct {
	i   int
	err error
}

func (e *badValue) Error() string { return fmt.Sprintf("value %d: %v", e.i+1, e.err) }
func (e *badValue) Unwrap() error { return e.err }

// appendLines passes the lines of r to add in batches: whatever has
// arrived, up to a bound, so that a pipe costs few signatures and a person
// typing sees each line appended as it is entered.
func appendLines(r io.Reader, add func([][]byte) error) error {
	const maxBatch, maxBatchBytes = 4096, 4 << 20
	br := bufio.NewReaderSize(r, 64<<10)
	var batch [][]byte
	size, line := 0, 0
	for {
		b, err := readLine(br, kappa.MaxBlockSize+len("\r\n"))
		if errors.Is(err, errLineTooLong) {
			// Refused before the rest of it is read: a line is held
			// whole, and standard input may not end (/dev/zero).
			if len(batch) > 0 {
				if aerr := add(batch); aerr != nil {
					return linesErr(aerr, line-len(batch)+1, line)
				}
			}
			return fmt.Errorf("standard input, line %d: %w: over %d bytes", line+1, kappa.ErrBlockTooLarge, kappa.MaxBlockSize)
		}
		if len(b) > 0 {
			line++
			b = bytes.TrimSuffix(b, []byte("\n"))
			b = bytes.TrimSuffix(b, []byte("\r"))
			batch = append(batch, b)
			size += len(b)
		}
		end := err != nil
		if len(batch) > 0 && (end || br.Buffered() == 0 || len(batch) >= maxBatch || size >= maxBatchBytes) {
			if aerr := add(batch); aerr != nil {
				return linesErr(aerr, line-len(batch)+1, line)
			}
			batch, size = batch[:0], 0
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("standard input: %w", err)
		}
	}
}

// linesErr is the error of a batch of lines first to last that add
// refused.
func linesErr(err error, first, last int) error {
	var bad *badValue
	if errors.As(err, &bad) {
		return fmt.Errorf("standard input, line %d (lines %d to %d not appended): %w", first+bad.i, first, last, bad.err)
	}
	return fmt.Errorf("standard input, lines %d to %d, not appended: %w", first, last, err)
}

// errLineTooLong is readLine's error for a line longer than its bound.
var errLineTooLong = errors.New("line too long")

// readLine reads a line of br, its newline included, as ReadBytes('\n')
// does, but returns errLineTooLong, having read no more than a buffer
// past max, once the line passes max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// feeds

var feedsCommand = &command{
	name:     "feeds",
	viaServe: true,
	args:     "[-db DIR]",
	summary:  "list the feeds",
	help: `
Feeds lists every feed: its public key, the local writer's name (or "-"
for a feed replicated from a peer; a name that is "-", holds a space or
starts with a quote is Go-quoted), its length, the entries held here (a
replica may lack some), the bytes of its blocks (values and causal
contexts), and whether it is writable here; a forked feed (its writer's
key signed two histories) is marked "forked".`,
	run: func(e *env, c *command, args []string) error {
		if err := e.parseNoArgs(c, e.flags(c, true), args); err != nil {
			return err
		}
		core, err := e.openDBReadOnly(true)
		if err != nil {
			return err
		}
		defer e.closeDB(core)
		tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tWRITER\tLENGTH\tHELD\tBYTES\tWRITABLE")
		for _, f := range core.Feeds() {
			name, ok := core.WriterName(f.Key())
			if name = showName(name); !ok {
				name = "-"
			}
			writable := "no"
			if f.Writable() {
				writable = "yes"
			}
			if f.Forked() {
				writable += "\tforked (see kappa verify)"
			}
			fmt.Fprintf(tw, "%x\t%s\t%d\t%d\t%d\t%s\n", f.Key(), name, f.Len(), f.Downloaded(), f.ByteLen(), writable)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return e.closeDB(core)
	},
}

// stat

var statCommand = &command{
	name:     "stat",
	viaServe: true,
	args:     "[-db DIR]",
	summary:  "count feeds, entries and bytes on disk",
	help: `
Stat prints the database's encoding, its feeds (local writers and
replicas), their entries and the bytes of their blocks (values and causal
contexts), and the bytes its files take on disk.`,
	run: func(e *env, c *command, args []string) error {
		if err := e.parseNoArgs(c, e.flags(c, true), args); err != nil {
			return err
		}
		core, err := e.openDBReadOnly(true)
		if err != nil {
			return err
		}
		defer e.closeDB(core)
		enc, err := storedEncoding(e.db)
		if err != nil {
			return err
		}
		var writers, replicas int
		var length, held, blocks uint64
		for _, f := range core.Feeds() {
			if f.Writable() {
				writers++
			} else {
				replicas++
			}
			length += f.Len()
			held += f.Downloaded()
			blocks += f.ByteLen()
		}
		files, disk, err := diskUsage(e.db)
		if err != nil {
			return err
		}
		abs, _ := filepath.Abs(e.db)
		tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintf(tw, "database\t%s\n", abs)
		fmt.Fprintf(tw, "encoding\t%s\n", enc)
		fmt.Fprintf(tw, "feeds\t%d (%d local %s, %d %s)\n", writers+replicas,
			writers, plural(writers, "writer", "writers"), replicas, plural(replicas, "replica", "replicas"))
		fmt.Fprintf(tw, "entries\t%d (%d held here)\n", length, held)
		fmt.Fprintf(tw, "blocks\t%d bytes (values and causal contexts)\n", blocks)
		fmt.Fprintf(tw, "on disk\t%d bytes in %d files\n", disk, files)
		if unloaded, hurt := damagedFeeds(core, core.Damaged()); unloaded+hurt > 0 {
			fmt.Fprintf(tw, "damaged\t%d %s not loaded, %d loaded with damage (see kappa verify)\n", unloaded, plural(unloaded, "feed", "feeds"), hurt)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return e.closeDB(core)
	},
}

// diskUsage walks dir and adds up its regular files.
func diskUsage(dir string) (files int, size int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files++
		size += fi.Size()
		return nil
	})
	return files, size, err
}

// readEntries calls fn with every entry of f in [start, end) that is held
// here, in order, reading them in chunks with GetBatch (which checks each
// entry against its leaf hash). It never waits for an entry a replica lacks.
//
// An entry found damaged (ErrCorrupt) is passed to damaged, if it is set,
// and skipped, as a view skips it; without damaged it ends the read.
func readEntries(ctx context.Context, f *kappa.Feed, start, end uint64, fn func(seq uint64, value []byte) error, damaged func(seq uint64, err error)) error {
	chunk := chunkEntries(f)
	for s := f.NextPresent(start); s < end; {
		stop := min(f.NextMissing(s), end)
		for c := s; c < stop; {
			n := min(stop-c, chunk)
			values, err := f.GetBatch(ctx, c, c+n)
			if err != nil {
				if damaged == nil || !errors.Is(err, kappa.ErrCorrupt) {
					return err
				}
				// Entry by entry, to skip the damaged ones: a damaged
				// entry's Get fails at once, it does not wait.
				for k := c; k < c+n; k++ {
					v, err := f.Get(ctx, k)
					if errors.Is(err, kappa.ErrCorrupt) {
						damaged(k, err)
						continue
					}
					if err != nil {
						return err
					}
					if err := fn(k, v); err != nil {
						return err
					}
				}
				c += n
				continue
			}
			for i, v := range values {
				if err := fn(c+uint64(i), v); err != nil {
					return err
				}
			}
			c += n
		}
		if stop >= end {
			break
		}
		s = f.NextPresent(stop)
	}
	return nil
}

// chunkEntries is how many entries of f to read at once: about 4 MiB of
// them, going by their mean size.
func chunkEntries(f *kappa.Feed) uint64 {
	const target, most = 4 << 20, 4096
	n := f.Len()
	if n == 0 {
		return most
	}
	mean := max(f.ByteLen()/n, 1)
	return min(max(target/mean, 1), most)
}
