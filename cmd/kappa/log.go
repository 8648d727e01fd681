package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	kappa "github.com/kappa-db/kappa-go"
)

var logCommand = &command{
	name:    "log",
	args:    "[-db DIR] [-json] [-follow [-peer ADDR]]",
	summary: "print the entries of every feed (-json, -follow)",
	help: `
Log prints every entry held here, feed by feed in the order the feeds were
added: the feed (the first 8 hex digits of its key), the local writer's name
("-" for a feed that is not a local writer's: a replica; a name that is
"-", holds a space or starts with a quote is Go-quoted), the sequence
number and the value: in a json database a value that is valid JSON (and
UTF-8) compacted; other values that are not plain text Go-quoted.

-json prints one JSON object per line instead:
  {"feed": HEX KEY, "writer": NAME (local writers only), "seq": N, "value": V}
where V is, in a json database, a value that is valid JSON (and UTF-8),
compacted; else the value as a string if it is valid UTF-8; else
"value_base64" (standard base64) comes instead of "value".

-follow goes on printing entries as they arrive until interrupted. While
a "kappa serve" runs on the database, log runs inside it (see kappa serve
-h) and -follow prints what the serve's peers send and what "kappa append"
adds. Otherwise the database is locked while log runs, so new entries
come from replication: -peer ADDR keeps a live session with "kappa serve"
at ADDR meanwhile, dialling it again, with backoff, whenever the session
ends; a line on standard error says when the peer goes and comes back,
and why dials fail (such as the peer refusing this database's key, or not
being reachable): once a reason, until a session starts again.
-peer is refused when the database is being served: the serve replicates
it (serve -peer ADDR). A replica's entries are printed in order: an entry
waits for the ones before it.`,
	viaServe: true,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		asJSON := fl.Bool("json", false, "print one JSON object per line")
		follow := fl.Bool("follow", false, "keep printing new entries until interrupted")
		peer := fl.String("peer", "", "with -follow, replicate live with the peer at `ADDR` (host:port)")
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		if *peer != "" && !*follow {
			return usagef("-peer goes with -follow")
		}
		if *peer != "" {
			if err := (&peerList{}).Set(*peer); err != nil {
				return usagef("-peer: %v", err)
			}
		}
		if *peer != "" && e.served != nil {
			return fmt.Errorf("-peer: the database is being served by process %d, which replicates it: "+
				"run log -follow without -peer, or give serve -peer %s", os.Getpid(), *peer)
		}
		open := e.openDBReadOnly
		if *peer != "" {
			open = e.openDB // replicating stores what arrives
		}
		core, err := open(true)
		if err != nil {
			return err
		}
		defer e.closeDB(core)
		enc, err := storedEncoding(e.db)
		if err != nil {
			return err
		}
		p := &logPrinter{w: bufio.NewWriter(e.stdout), json: *asJSON, enc: enc, core: core, stderr: e.stderr}
		if *follow {
			ctx, stop := e.untilInterrupted()
			err = p.follow(ctx, *peer)
			stop()
		} else {
			for _, f := range core.Feeds() {
				if err = readEntries(e.ctx, f, 0, f.Len(), p.printer(f), p.skip(f)); err != nil {
					err = readError(core, f, err)
					break
				}
				p.skipMarked(f)
			}
		}
		if ferr := p.w.Flush(); err == nil {
			err = ferr
		}
		if err == nil && p.damaged > 0 {
			first := "the first: "
			if p.damaged == 1 {
				first = ""
			}
			err = fmt.Errorf("%d damaged %s skipped, %s%s (kappa verify lists them)",
				p.damaged, plural(p.damaged, "entry", "entries"), first, p.firstDamage)
		}
		if err != nil {
			return err
		}
		return e.closeDB(core)
	},
}

// logPrinter prints entries for log.
type logPrinter struct {
	w           *bufio.Writer
	damaged     int             // damaged entries skipped
	firstDamage string          // the first of them
	skipped     map[string]bool // "key/seq" of each, once
	json        bool
	enc         kappa.Encoding
	core        *kappa.Core
	stderr      io.Writer // follow's lines about its peer
}

// skip returns what log does with a damaged entry of f: it counts it and
// goes on with the next entry, as a view does; the command then exits
// non-zero, naming the first.
func (p *logPrinter) skip(f *kappa.Feed) func(seq uint64, err error) {
	return func(seq uint64, err error) {
		if p.skipped == nil {
			p.skipped = map[string]bool{}
		}
		p.skipped[fmt.Sprintf("%x/%d", f.Key(), seq)] = true
		if p.damaged++; p.damaged == 1 {
			p.firstDamage = fmt.Sprintf("%s seq %d: %s", feedName(p.core, f), seq, where(p.core, err))
		}
	}
}

// skipMarked counts, as skip does, the entries of f that a read before
// log's own found damaged (the database's causal index reads every held
// entry after open): reads pass over them as not held, so readEntries
// did not meet them.
func (p *logPrinter) skipMarked(f *kappa.Feed) {
	for _, d := range p.core.Damaged() {
		if d.Entry && bytes.Equal(d.Key, f.Key()) && !p.skipped[fmt.Sprintf("%x/%d", f.Key(), d.Seq)] {
			p.skip(f)(d.Seq, d.Err)
		}
	}
}

// pastDamaged returns the first entry of f at or after seq that is not
// marked damaged, counting those it passes as skipped (as skipMarked does).
// A marked entry reads as not held, and the entries of a feed are followed
// in order, up to the first not held: without this, follow would stop at
// a damaged entry for good, printing none of the feed's later entries.
func (p *logPrinter) pastDamaged(f *kappa.Feed, seq uint64) uint64 {
	marked := map[uint64]error{}
	for _, d := range p.core.Damaged() {
		if d.Entry && bytes.Equal(d.Key, f.Key()) {
			marked[d.Seq] = d.Err
		}
	}
	for {
		err, ok := marked[seq]
		if !ok || f.Has(seq) {
			return seq
		}
		if !p.skipped[fmt.Sprintf("%x/%d", f.Key(), seq)] {
			p.skip(f)(seq, err)
		}
		seq++
	}
}

// jsonEntry is a line of "log -json".
type jsonEntry struct {
	Feed        string          `json:"feed"`
	Writer      string          `json:"writer,omitempty"`
	Seq         uint64          `json:"seq"`
	Value       json.RawMessage `json:"value,omitempty"`
	ValueBase64 []byte          `json:"value_base64,omitempty"`
}

// showName is a local writer's name as log and feeds print it: as it is,
// or Go-quoted if it could be read as something else: "-" (which stands
// for a replica there), a name with a space (columns are split at
// spaces), or one that starts with a quote.
func showName(name string) string {
	if name == "-" || strings.IndexFunc(name, unicode.IsSpace) >= 0 || strings.HasPrefix(name, `"`) {
		return strconv.Quote(name)
	}
	return name
}

// printer returns a function that prints entries of f.
func (p *logPrinter) printer(f *kappa.Feed) func(seq uint64, value []byte) error {
	name, local := p.core.WriterName(f.Key())
	short := shortKey(f.Key())
	full := hex.EncodeToString(f.Key())
	return func(seq uint64, value []byte) error {
		if !p.json {
			who := "-"
			if local {
				who = showName(name)
			}
			_, err := fmt.Fprintf(p.w, "%s  %-10s %5d  %s\n", short, who, seq, p.text(value))
			return err
		}
		line := jsonEntry{Feed: full, Writer: name, Seq: seq}
		switch {
		case p.enc == kappa.JSON && json.Valid(value) && utf8.Valid(value):
			// (JSON validity allows bytes of invalid UTF-8 inside
			// strings; copied, they would make the line invalid.)
			var b bytes.Buffer
			json.Compact(&b, value)
			line.Value = b.Bytes()
		case utf8.Valid(value):
			line.Value, _ = json.Marshal(string(value))
		default:
			line.ValueBase64 = value
		}
		b, err := json.Marshal(line)
		if err != nil {
			return err
		}
		_, err = p.w.Write(append(b, '\n'))
		return err
	}
}

// text formats a value for a person: compact JSON in a json database (if
// it is valid UTF-8 too), the text itself if it is printable, else
// Go-quoted.
func (p *logPrinter) text(value []byte) string {
	if p.enc == kappa.JSON && utf8.Valid(value) {
		var b bytes.Buffer
		if json.Compact(&b, value) == nil {
			return b.String()
		}
	}
	if len(value) > 0 && utf8.Valid(value) && value[0] != '"' {
		printable := true
		for _, r := range string(value) {
			if !unicode.IsPrint(r) && r != ' ' {
				printable = false
				break
			}
		}
		if printable {
			return string(value)
		}
	}
	return strconv.Quote(string(value))
}

// followPeer starts follow's swarm of one peer. A line on standard error
// says when a session starts and ends, and why dials fail, once a reason
// until a session starts again: the swarm tells of sessions as they go,
// and its status, looked at every second, of dials that failed.
func (p *logPrinter) followPeer(ctx context.Context, peer string) (stop func(), err error) {
	// Ended by stop before the swarm closes: the sessions the close ends
	// are no news, and the status is looked at no more.
	ctx, cancel := context.WithCancel(ctx)
	lines := &lineWriter{w: p.stderr}
	var mu sync.Mutex
	sessions := 0 // started and not ended: a replaced one ends while the peer stays
	said := ""    // the last reason printed
	sw, err := p.core.Swarm(&kappa.SwarmOptions{Peers: []string{peer}, OnPeer: func(ps kappa.PeerStatus) {
		mu.Lock()
		defer mu.Unlock()
		if ps.State == kappa.PeerSyncing {
			if sessions++; sessions == 1 {
				lines.printf("kappa: peer %s connected", peer)
			}
			said = ""
			return
		}
		sessions--
		switch {
		case sessions > 0:
		case ctx.Err() != nil:
		case ps.Err == nil:
			lines.printf("kappa: peer %s said goodbye; dialling it again", peer)
		default:
			said = cleanMsg(ps.Err)
			lines.printf("kappa: peer %s gone: %s; dialling it again", peer, said)
		}
	}})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("peer %s: %w", peer, err)
	}
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for _, ps := range sw.Peers() {
				if ps.Source != "static" || ps.Err == nil || (ps.State != kappa.PeerBackingOff && ps.State != kappa.PeerFailed) {
					continue
				}
				msg := cleanMsg(ps.Err)
				mu.Lock()
				if sessions == 0 && msg != said && ctx.Err() == nil {
					said = msg
					again := "dialling it again"
					if wait := time.Until(ps.Retry).Round(time.Second); wait > 0 {
						again += " in " + wait.String()
					}
					lines.printf("kappa: peer %s: %s; %s", peer, msg, again)
				}
				mu.Unlock()
			}
		}
	}()
	return func() {
		cancel()
		<-polled
		sw.Close()
	}, nil
}

// follow prints the entries of every feed, then new ones as they arrive,
// until ctx ends. With peer set it also replicates live with peer, in a
// swarm of that one peer: a session that ends is dialled again, with
// backoff, and a line on standard error says so.
func (p *logPrinter) follow(ctx context.Context, peer string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if peer != "" {
		stop, err := p.followPeer(ctx, peer)
		if err != nil {
			return err
		}
		defer stop()
	}
	wake := make(chan struct{}, 1)
	next := map[*kappa.Feed]uint64{} // the first entry of each feed not printed
	var cancels []func()
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for {
		changed := p.core.FeedsChanged()
		for _, f := range p.core.Feeds() {
			if _, ok := next[f]; !ok {
				next[f] = 0
				cancels = append(cancels, f.Subscribe(wake))
			}
			// Up to the first entry not held; past the damaged ones.
			for start := next[f]; start < f.Len(); start = next[f] {
				end := f.NextMissing(start)
				if end == start {
					if end = p.pastDamaged(f, start); end == start {
						break // not held: followed once it is
					}
				} else if err := readEntries(ctx, f, start, end, p.printer(f), p.skip(f)); err != nil {
					return readError(p.core, f, err)
				}
				next[f] = end
			}
		}
		if err := p.w.Flush(); err != nil {
			return err
		}
		select {
		case <-wake:
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// readError describes an error reading f, naming the damaged file's path
// if that is what it is.
func readError(core *kappa.Core, f *kappa.Feed, err error) error {
	var ce *kappa.CorruptError
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %s (kappa verify lists the damaged entries)", feedName(core, f), where(core, err))
	}
	return fmt.Errorf("%s: %w", feedName(core, f), err)
}
