package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// Sessions between the tool's peers run over TCP. Serve runs every
// session live; a non-live peer (sync) ends its session once both sides
// hold what the other had, which a live side accepts.

// dialReplicate runs one session with the serve at addr.
func dialReplicate(ctx context.Context, core *kappa.Core, addr string, live bool, progress func(kappa.ReplicateProgress)) error {
	return dialReplicateWith(ctx, core, addr, &kappa.ReplicateOptions{Live: live, Progress: progress})
}

// dialReplicateWith runs one session with the serve at addr, with opts.
// A non-zero opts.Timeout bounds the dial too.
func dialReplicateWith(ctx context.Context, core *kappa.Core, addr string, opts *kappa.ReplicateOptions) error {
	d := net.Dialer{Timeout: opts.Timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return core.Replicate(ctx, conn, true, opts)
}

// maxNewFeedsFlag adds -max-new-feeds to fl.
func maxNewFeedsFlag(fl *flag.FlagSet) *int {
	return fl.Int("max-new-feeds", kappa.DefaultMaxNewFeeds,
		"add at most `N` feeds this database lacks per session; a peer's other new feeds wait for a later session (-1: no bound)")
}

// newFeedsLimit is the ReplicateOptions.MaxNewFeeds for the flag's n: 0
// adds none.
func newFeedsLimit(n int) (int, error) {
	switch {
	case n < -1:
		return 0, usagef("-max-new-feeds wants a count, or -1 for no bound")
	case n == 0:
		return 0, usagef("-max-new-feeds 0 would add no feed at all; want at least 1, or -1 for no bound")
	}
	return n, nil
}

// serve

var serveCommand = &command{
	name:    "serve",
	args:    "[-db DIR] [-listen ADDR] [-peer ADDR]... [-lan=false] [-max-new-feeds N]",
	summary: "run the database as a swarm node until interrupted",
	help: `
Serve runs the database as a node of its swarm until interrupted: it
listens on -listen (host:port; port 0 picks a free one), dials each -peer
ADDR (the flag repeats) and, with -lan, finds the peers of this database on
the local network and makes itself found. It keeps one live session with
each peer, passing new entries both ways as they arrive, and dials a peer
whose session ended again, with backoff. A "kappa sync" gets a session that
ends when both sides hold what the other had; a "kappa log -follow -peer"
(or a program calling Core.Replicate) one that goes on. Only peers that
know the database's shared key get in.

The first line printed is "listening on ADDR" (with -listen "", "not
listening (-listen ""): dialling only"), then one line as each peer
connects and one as its session ends, saying why: "the peer said goodbye"
when it left in order (a sync that is done, a follower interrupted), or
the error (a peer that vanished without a goodbye: "connection closed
before the session ended"; a session that a newer one with the same peer
node replaced: "replaced: ..."). A connection that fails the handshake
(no shared key, not TLS 1.3), or whose session loses to one already
running with the same peer node, prints nothing. If LAN discovery cannot
work here, one line says so ("LAN discovery off: ...") and serve goes on
with its -peer addresses. A session adds at most -max-new-feeds feeds the
database lacks.
Serve stops on SIGINT or SIGTERM, saying goodbye to its peers.

The database stays locked while serve runs, but append, log (-json,
-follow), feeds, stat, key and status still work on it: they run inside
the serve, through the unix socket DIR/control (mode 0600, removed when
serve stops), and print what they would print on their own. verify, sync
and a second serve fail: stop the serve first. A socket address holds a
path of at most 103 bytes: a longer DIR/control is bound and dialled
through /proc/self/fd on Linux; elsewhere, if DIR/control (as given, then
made absolute), or DIR/.control-N/s where it is first created, is longer,
serve fails, saying so.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		listen := fl.String("listen", ":7654", "listen on `ADDR` (host:port; :7654 is every interface; \"\" listens nowhere, only dials)")
		var peers peerList
		fl.Var(&peers, "peer", "dial the peer at `ADDR` (host:port), and again whenever its session ends; repeat for more")
		lan := fl.Bool("lan", true, "find peers on the local network, and be found (-lan=false: only -peer)")
		maxNew := maxNewFeedsFlag(fl)
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		if *listen != "" {
			if _, _, err := net.SplitHostPort(*listen); err != nil {
				return usagef("-listen %q: want host:port (:7654 for every interface), or \"\"", *listen)
			}
		}
		limit, err := newFeedsLimit(*maxNew)
		if err != nil {
			return err
		}
		ctx, stop := e.untilInterrupted()
		defer stop()
		out := &lineWriter{w: e.stdout, held: true}
		lanState := "on"
		if !*lan {
			lanState = "off (-lan=false)"
		}
		var lanMu sync.Mutex
		onError := func(err error) {
			msg := cleanMsg(err)
			if i := strings.Index(msg, "LAN discovery: "); i >= 0 {
				why := msg[i+len("LAN discovery: "):]
				lanMu.Lock()
				lanState = "off: " + why
				lanMu.Unlock()
				out.printf("LAN discovery off: %s", why)
				return
			}
			out.printf("warning: %s", msg)
		}
		core, err := e.openDBWith(true, &kappa.Options{OnError: onError})
		if err != nil {
			return err
		}
		defer core.Close()
		sw, err := core.Swarm(&kappa.SwarmOptions{
			Listen:    *listen,
			Peers:     peers,
			LAN:       *lan,
			Replicate: &kappa.ReplicateOptions{MaxNewFeeds: limit},
			OnPeer:    func(p kappa.PeerStatus) { peerLine(ctx, out, p) },
		})
		if err != nil {
			return err
		}
		defer sw.Close()
		addr := "" // with -listen ""
		if a := sw.Addr(); a != nil {
			addr = a.String()
		}
		cs, err := startControl(ctx, core, sw, e.db, func() serveStatus {
			lanMu.Lock()
			defer lanMu.Unlock()
			return serveStatus{listen: addr, lan: lanState}
		})
		if err != nil {
			return err
		}
		if addr == "" {
			out.first(`not listening (-listen ""): dialling only`)
		} else {
			out.first("listening on %s", addr)
		}
		<-ctx.Done()
		cs.close()
		err = sw.Close()
		out.printf("stopped")
		if cerr := core.Close(); err == nil {
			err = cerr
		}
		return err
	},
}

// peerList is the repeatable -peer flag.
type peerList []string

func (l *peerList) String() string { return strings.Join(*l, ",") }

func (l *peerList) Set(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("want host:port, got %q", addr)
	}
	*l = append(*l, addr)
	return nil
}

// lineWriter writes whole lines from many goroutines. While held, lines
// wait until first prints the line that must come first.
type lineWriter struct {
	mu   sync.Mutex
	w    io.Writer
	held bool
	wait []string
}

func (lw *lineWriter) printf(format string, args ...any) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	line := fmt.Sprintf(format+"\n", args...)
	if lw.held {
		lw.wait = append(lw.wait, line)
		return
	}
	io.WriteString(lw.w, line)
}

// first prints a line, then the lines held until now.
func (lw *lineWriter) first(format string, args ...any) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	fmt.Fprintf(lw.w, format+"\n", args...)
	for _, line := range lw.wait {
		io.WriteString(lw.w, line)
	}
	lw.held, lw.wait = false, nil
}

// peerLine prints what serve says when a session with a peer starts or
// ends (SwarmOptions.OnPeer); ctx ends when serve stops.
func peerLine(ctx context.Context, out *lineWriter, p kappa.PeerStatus) {
	if p.State == kappa.PeerSyncing {
		out.printf("peer %s connected", p.Addr)
		return
	}
	counts := fmt.Sprintf("received %d %s, sent %d", p.EntriesIn, plural(int(p.EntriesIn), "block", "blocks"), p.EntriesOut)
	if p.FeedsNotAdded > 0 {
		counts += fmt.Sprintf("; %d new %s offered not added, past -max-new-feeds", p.FeedsNotAdded, plural(p.FeedsNotAdded, "feed", "feeds"))
	}
	switch {
	case ctx.Err() != nil:
		out.printf("peer %s ended: serve is stopping (%s)", p.Addr, counts)
	case p.Err == nil:
		out.printf("peer %s ended: the peer said goodbye (%s)", p.Addr, counts)
	default:
		out.printf("peer %s ended: %s (%s)", p.Addr, cleanMsg(p.Err), counts)
	}
}

// sync

var syncCommand = &command{
	name:    "sync",
	args:    "[-db DIR] [-max-new-feeds N] [-timeout DURATION] ADDR",
	summary: "replicate once with a peer",
	help: `
Sync connects to "kappa serve" at ADDR (host:port) and replicates once: both
databases end holding every entry the other held when they met, each entry
verified against its feed's signature before it is stored. The peer must
have the same shared key (see kappa key and kappa init -key).

Progress goes to standard error: a bar on a terminal, otherwise a line now
and then once the peers have met. A summary goes to standard output. Sync
adds at most -max-new-feeds feeds the database lacks; the summary says
how many more the peer offered (a later sync adds them). A feed the sync
found forked (the peer holds a history its writer's key signed that
contradicts this one) is named in a warning on standard error: it is kept
as held and no longer exchanged (see kappa verify).

Sync gives up when connecting takes longer than -timeout, or when nothing
arrives from the peer for that long, the handshake included ("peer timed
out"). A serve pings every 5 s while it has nothing to send,
so a -timeout under 5 s can end a session with a busy but live peer.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		maxNew := maxNewFeedsFlag(fl)
		timeout := fl.Duration("timeout", 30*time.Second,
			"give up when connecting takes longer than `DURATION`, or nothing arrives from the peer for that long (e.g. 5s, 2m)")
		args, err := e.parse(c, fl, args)
		if err != nil {
			return err
		}
		limit, err := newFeedsLimit(*maxNew)
		if err != nil {
			return err
		}
		if *timeout <= 0 {
			return usagef("-timeout wants a positive duration, such as 10s")
		}
		if len(args) != 1 {
			return usagef("want one ADDR (host:port), got %d arguments", len(args))
		}
		addr := args[0]
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return usagef("ADDR %q: want host:port", addr)
		}
		ctx, stop := e.untilInterrupted()
		defer stop()
		core, err := e.openDB(true)
		if err != nil {
			return err
		}
		defer core.Close()
		forkedBefore := map[*kappa.Feed]bool{}
		for _, f := range core.Feeds() {
			forkedBefore[f] = f.Forked()
		}
		pr := newProgress(e.stderr, isTerminal(e.stderr))
		err = dialReplicateWith(ctx, core, addr, &kappa.ReplicateOptions{Progress: pr.update, MaxNewFeeds: limit, Timeout: *timeout})
		p := pr.stop()
		for _, f := range core.Feeds() {
			if f.Forked() && !forkedBefore[f] {
				fmt.Fprintf(e.stderr, "kappa: warning: feed %s is forked: the peer sent a signed history that contradicts this one (its writer's key signed both); "+
					"it is kept as held and no longer exchanged (kappa verify says more)\n", shortKey(f.Key()))
			}
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				// What was stored is kept.
				return fmt.Errorf("peer %s: interrupted: the sync ended before it was complete", addr)
			}
			return fmt.Errorf("peer %s: %w", addr, err)
		}
		var entries uint64
		feeds := core.Feeds()
		for _, f := range feeds {
			entries += f.Downloaded()
		}
		fmt.Fprintf(e.stdout, "synced with %s: received %d %s, sent %d; %s holds %d %s, %d %s\n",
			addr, p.BlocksReceived, plural(int(p.BlocksReceived), "block", "blocks"), p.BlocksSent,
			e.db, len(feeds), plural(len(feeds), "feed", "feeds"), entries, plural(int(entries), "entry", "entries"))
		if p.FeedsNotAdded > 0 {
			fmt.Fprintf(e.stdout, "the peer offered %d more new %s, not added (past -max-new-feeds %d): sync again to add them\n",
				p.FeedsNotAdded, plural(p.FeedsNotAdded, "feed", "feeds"), limit)
		}
		return core.Close()
	},
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress shows a session's progress: a bar redrawn in place on a
// terminal, or a plain line at most every second otherwise. Lines start
// only once the handshake is over, so a peer that is no kappa peer gets
// the error alone.
type progress struct {
	w    io.Writer
	term bool

	mu      sync.Mutex
	last    kappa.ReplicateProgress
	changed bool

	done    chan struct{}
	stopped chan struct{}
	drawn   bool // a bar is on the terminal's current line
}

func newProgress(w io.Writer, term bool) *progress {
	p := &progress{w: w, term: term, done: make(chan struct{}), stopped: make(chan struct{})}
	go p.loop()
	return p
}

// update records the session's progress; it never blocks the session.
func (p *progress) update(rp kappa.ReplicateProgress) {
	p.mu.Lock()
	p.last, p.changed = rp, true
	p.mu.Unlock()
}

// loop shows the progress every second (every 100 ms on a terminal) until
// stop, and on a terminal once more at the end, ending the line.
func (p *progress) loop() {
	defer close(p.stopped)
	every := time.Second
	if p.term {
		every = 100 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.show()
		case <-p.done:
			if p.term {
				p.show()
				if p.drawn {
					fmt.Fprintln(p.w)
				}
			}
			return
		}
	}
}

// stop ends the display and returns the last progress reported.
func (p *progress) stop() kappa.ReplicateProgress {
	close(p.done)
	<-p.stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// show prints the last progress: on a terminal, a bar redrawn in place;
// otherwise a line, only when the progress changed past the handshake.
func (p *progress) show() {
	p.mu.Lock()
	rp, changed := p.last, p.changed
	p.changed = false
	p.mu.Unlock()
	if !p.term {
		if changed && rp.Phase != "" && rp.Phase != "handshake" {
			fmt.Fprintf(p.w, "sync: %s: %d %s, %d %s to fetch, %d received, %d sent\n",
				rp.Phase, rp.Feeds, plural(rp.Feeds, "feed", "feeds"), rp.BlocksToGo,
				plural(int(rp.BlocksToGo), "block", "blocks"), rp.BlocksReceived, rp.BlocksSent)
		}
		return
	}
	const width = 30
	total := rp.BlocksReceived + rp.BlocksToGo
	frac := 1.0
	if total > 0 {
		frac = float64(rp.BlocksReceived) / float64(total)
	}
	if rp.Phase == "" || rp.Phase == "handshake" {
		frac = 0
	}
	n := int(frac * width)
	fmt.Fprintf(p.w, "\r%-9s [%s%s] %3.0f%%  %d/%d blocks  %d %s  %s in  %s out\x1b[K",
		rp.Phase, strings.Repeat("=", n), strings.Repeat(" ", width-n), 100*frac,
		rp.BlocksReceived, total, rp.Feeds, plural(rp.Feeds, "feed", "feeds"),
		byteSize(rp.BytesReceived), byteSize(rp.BytesSent))
	p.drawn = true
}

// byteSize formats n bytes for a person.
func byteSize(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
