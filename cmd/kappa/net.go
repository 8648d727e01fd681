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
	args:    "[-db DIR] [-listen ADDR]",
	summary: "accept peers and replicate with them until interrupted",
	help: `
Serve listens on ADDR (host:port; port 0 picks a free one) and replicates
with every peer that connects: a "kappa sync" gets one session that ends
when both sides hold what the other had, a "kappa log -follow -peer" (or a
program calling Core.Replicate) a live session that goes on, passing new
entries both ways as they arrive. Only peers that know the database's
shared key get in.

The first line printed is "listening on ADDR", then one line as each peer
connects and one as its session ends, saying why: "synced" when a sync
is done, "the peer said goodbye" when a live peer left, or the error (a
peer that vanished without a goodbye: "connection closed before the
session ended"). A session adds at most -max-new-feeds feeds the database
lacks; the line says how many more the peer offered. Serve stops on SIGINT
or SIGTERM, saying goodbye to its peers. The database is locked meanwhile:
other commands on it fail.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, true)
		listen := fl.String("listen", "127.0.0.1:7654", "listen on `ADDR` (host:port)")
		maxNew := maxNewFeedsFlag(fl)
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		limit, err := newFeedsLimit(*maxNew)
		if err != nil {
			return err
		}
		ctx, stop := e.untilInterrupted()
		defer stop()
		core, err := e.openDB(true)
		if err != nil {
			return err
		}
		defer core.Close()
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", *listen)
		if err != nil {
			return err
		}
		stopListening := context.AfterFunc(ctx, func() { l.Close() })
		defer stopListening()
		out := &lineWriter{w: e.stdout}
		out.printf("listening on %s", l.Addr())

		var wg sync.WaitGroup
		for delay := time.Duration(0); ; {
			conn, err := l.Accept()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					break
				}
				// Out of file descriptors or the like: pause and retry,
				// as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-ctx.Done():
				case <-time.After(delay):
				}
				continue
			}
			delay = 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				servePeer(ctx, core, conn, out, limit)
			}()
		}
		wg.Wait()
		out.printf("stopped")
		return core.Close()
	},
}

// lineWriter writes whole lines from many goroutines.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lineWriter) printf(format string, args ...any) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	fmt.Fprintf(lw.w, format+"\n", args...)
}

// servePeer runs a session with a peer that connected to serve and prints
// a line when it starts and one when it ends, saying why it ended.
func servePeer(ctx context.Context, core *kappa.Core, conn net.Conn, out *lineWriter, maxNewFeeds int) {
	who := conn.RemoteAddr().String()
	out.printf("peer %s connected", who)
	var mu sync.Mutex
	var last kappa.ReplicateProgress
	wasLive := false // the first exchange was over: both sides said done
	opts := &kappa.ReplicateOptions{Live: true, MaxNewFeeds: maxNewFeeds, Progress: func(p kappa.ReplicateProgress) {
		mu.Lock()
		last = p
		wasLive = wasLive || p.Phase == "live"
		mu.Unlock()
	}}
	err := core.Replicate(ctx, conn, false, opts)
	// A session reports its progress once more as it ends: the counts
	// are final.
	mu.Lock()
	p, live := last, wasLive
	mu.Unlock()
	counts := fmt.Sprintf("received %d %s, sent %d", p.BlocksReceived, plural(int(p.BlocksReceived), "block", "blocks"), p.BlocksSent)
	if p.FeedsNotAdded > 0 {
		counts += fmt.Sprintf("; %d new %s not added, past -max-new-feeds", p.FeedsNotAdded, plural(p.FeedsNotAdded, "feed", "feeds"))
	}
	switch {
	case err == nil && live:
		// The peer said goodbye after the first exchange: a sync that
		// is done, or a live peer that left after it.
		out.printf("peer %s ended: synced, the peer said goodbye (%s)", who, counts)
	case err == nil:
		out.printf("peer %s ended: the peer said goodbye before the first exchange was over (%s)", who, counts)
	case ctx.Err() != nil:
		out.printf("peer %s ended: serve is stopping (%s)", who, counts)
	default:
		out.printf("peer %s ended: %s (%s)", who, cleanMsg(err), counts)
	}
}

// sync

var syncCommand = &command{
	name:    "sync",
	args:    "[-db DIR] ADDR",
	summary: "replicate once with a peer",
	help: `
Sync connects to "kappa serve" at ADDR (host:port) and replicates once: both
databases end holding every entry the other held when they met, each entry
verified against its feed's signature before it is stored. The peer must
have the same shared key (see kappa key and kappa init -key).

Progress goes to standard error: a bar on a terminal, otherwise a line now
and then once the peers have met. A summary goes to standard output. Sync
adds at most -max-new-feeds feeds the database lacks; the summary says
how many more the peer offered (a later sync adds them).

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
		pr := newProgress(e.stderr, isTerminal(e.stderr))
		err = dialReplicateWith(ctx, core, addr, &kappa.ReplicateOptions{Progress: pr.update, MaxNewFeeds: limit, Timeout: *timeout})
		p := pr.stop()
		if err != nil {
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
