// Chat is a chat over kappa, one process per person. Each keeps a database
// of their own with one writer in it; the databases find each other on the
// LAN (or dial the addresses given with -peer) and stay in sync, so each
// shows the other's messages as they arrive.
//
// Start the first one; it creates the database and prints its shared key:
//
//	go run ./examples/chat -db alice.db -name alice
//
// Start the second in another terminal, with that key:
//
//	go run ./examples/chat -db bob.db -name bob -key KEY
//
// Each line typed is a message; "/peers" lists the peers, "/peer HOST:PORT"
// dials one more. End with EOF
// (Ctrl-D) or Ctrl-C. Run again with the same -db to go on (no -key or
// -name needed): the chat shows what was said so far, then goes on.
//
// Flags:
//
//	-db DIR       the database directory (created if missing)
//	-name NAME    your name: the writer's, and the author of your messages
//	-key KEY      the shared key (hex) of the chat to join, for a new DIR
//	-listen ADDR  the TCP address to accept peers on (default ":0", any free port)
//	-peer ADDR    a peer's address, host:port, to dial; repeatable
//	-lan=false    do not look for peers on the LAN
//
// Output: messages as "[15:04:05] bob: hi" (history first, then live ones
// in the order they arrive), and lines starting with "* " about the chat
// and its peers. Errors go to stderr. Messages are in causal order: an
// answer never comes before its question, whatever the clocks say and in
// whatever order the feeds arrived. The history orders messages that are
// not causally related by time stamp (then writer), so every copy shows
// the same history.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	db, name, listen string
	key              []byte
	peers            []string
	lan              bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var key string
	fs.StringVar(&c.db, "db", "", "the database `directory` (created if missing)")
	fs.StringVar(&c.name, "name", "", "your `name`: required for a new database")
	fs.StringVar(&key, "key", "", "the shared `key` (hex) of the chat to join; none: a new chat")
	fs.StringVar(&c.listen, "listen", ":0", "the TCP `address` to accept peers on; empty: do not listen")
	fs.Func("peer", "a peer's `address` (host:port) to dial; repeatable", func(s string) error {
		c.peers = append(c.peers, s)
		return nil
	})
	fs.BoolVar(&c.lan, "lan", true, "look for peers on the LAN")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.db == "" {
		return nil, errors.New("-db DIR is required")
	}
	if key != "" {
		k, err := hex.DecodeString(key)
		if err != nil || len(k) != 32 {
			return nil, fmt.Errorf("-key: want 64 hex digits, the key the chat's first instance printed")
		}
		c.key = k
	}
	return &c, nil
}

// console writes the chat's output, one whole line at a time, from
// whichever goroutine has something to say.
type console struct {
	mu             sync.Mutex
	stdout, stderr io.Writer
}

// say writes a line to stdout.
func (c *console) say(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.stdout, format+"\n", args...)
}

// complain writes an error to stderr.
func (c *console) complain(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintln(c.stderr, "chat:", err)
}

// run is the chat: it returns when stdin ends or ctx does (nil), or on an
// error.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	con := &console{stdout: stdout, stderr: stderr}
	fresh, err := isEmpty(cfg.db)
	if err != nil {
		return err
	}
	if fresh && cfg.name == "" {
		return errors.New("-name NAME is required for a new chat")
	}
	core, err := kappa.Open(cfg.db, &kappa.Options{
		ValueEncoding: kappa.JSON,
		SharedKey:     cfg.key,
		OnError: func(err error) {
			if why, ok := lanFailure(err); ok {
				con.say("* LAN discovery does not work here (%v): peers must be given with -peer", why)
				return
			}
			con.complain(err)
		},
	})
	if err != nil {
		return err
	}
	defer core.Close()
	name := cfg.name
	if name == "" {
		if name, err = ownName(core); err != nil {
			return err
		}
	}
	w, err := core.Writer(name)
	if err != nil {
		return err
	}
	switch {
	case !fresh:
		con.say("* %s: back in the chat as %s", cfg.db, name)
	case cfg.key == nil:
		con.say("* %s: a new chat, as %s", cfg.db, name)
	default:
		con.say("* %s: joined the chat as %s", cfg.db, name)
	}

	// The history, then live messages.
	view := &chatView{}
	if _, err := core.Use("chat", 1, view); err != nil {
		return err
	}
	if err := core.Ready(ctx, "chat"); err != nil {
		if ctx.Err() != nil {
			return core.Close()
		}
		return err
	}
	view.goLive(func(p post) { con.say("%s", p.format()) })

	// The swarm.
	var closing atomic.Bool
	sw, err := core.Swarm(&kappa.SwarmOptions{
		Listen: cfg.listen,
		Peers:  cfg.peers,
		LAN:    cfg.lan,
		OnPeer: peerEvents(con, &closing),
	})
	if err != nil {
		return err
	}
	if a := sw.Addr(); a != nil {
		con.say("* listening on %s", a)
	}
	if fresh && cfg.key == nil {
		con.say("* shared key: %x", core.SharedKey())
		con.say("* to join: go run ./examples/chat -db OTHER_DIR -name OTHER_NAME -key %x%s",
			core.SharedKey(), peerHint(sw.Addr(), cfg.lan))
	}

	lines := readLines(stdin, con)
	for done := false; !done; {
		select {
		case line, ok := <-lines:
			if !ok {
				done = true
				break
			}
			if err := handle(line, w, name, sw, con); err != nil {
				closing.Store(true)
				sw.Close()
				return err
			}
		case <-ctx.Done():
			done = true
		}
	}
	closing.Store(true)
	if err := sw.Close(); err != nil {
		return err
	}
	return core.Close()
}

// handle takes one line of input: a command, or a message to post.
func handle(line string, w *kappa.Feed, name string, sw *kappa.Swarm, con *console) error {
	line = strings.TrimRight(line, "\r")
	switch strings.TrimSpace(line) {
	case "":
		return nil
	case "/peer":
		con.say("* /peer HOST:PORT dials a peer")
		return nil
	case "/peers":
		peers := sw.Peers()
		if len(peers) == 0 {
			con.say("* no peers")
		}
		for _, p := range peers {
			con.say("* %s", p)
		}
		return nil
	}
	if addr, ok := strings.CutPrefix(line, "/peer "); ok {
		if err := sw.AddPeer(strings.TrimSpace(addr)); err != nil {
			con.say("* %v", err)
		}
		return nil
	}
	b, err := json.Marshal(message{Time: time.Now().UTC(), Author: name, Text: line})
	if err != nil {
		return err
	}
	_, err = w.Append(b)
	return err
}

// readLines reads stdin line by line into the channel it returns, closed
// at the end of stdin.
func readLines(stdin io.Reader, con *console) <-chan string {
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		if err := sc.Err(); err != nil {
			con.complain(fmt.Errorf("stdin: %w", err))
		}
	}()
	return lines
}

// peerEvents returns the swarm's OnPeer: it says when a peer node connects
// and when it leaves; nothing once the chat is closing. The swarm tells
// each session's start and end, and runs one session per peer node: when
// both sides dialled, a newer session may replace the first, which then
// ends while the node stays connected. So a node is said connected when
// its first session starts, and gone when its last one ends.
func peerEvents(con *console, closing *atomic.Bool) func(kappa.PeerStatus) {
	var mu sync.Mutex
	sessions := map[string]int{} // by node: started and not ended
	return func(p kappa.PeerStatus) {
		if closing.Load() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		node := p.Node
		if len(node) > 8 {
			node = node[:8]
		}
		switch p.State {
		case kappa.PeerSyncing:
			sessions[p.Node]++
			if sessions[p.Node] > 1 {
				return
			}
			how := "to"
			if p.Inbound {
				how = "from"
			}
			con.say("* peer %s connected %s %s", node, how, p.Addr)
		default:
			if sessions[p.Node] == 0 {
				return
			}
			sessions[p.Node]--
			if sessions[p.Node] > 0 {
				return // replaced: the node is still connected
			}
			delete(sessions, p.Node)
			if p.Err == nil {
				con.say("* peer %s left", node)
			} else {
				con.say("* peer %s lost: %v", node, p.Err)
			}
		}
	}
}

// lanFailure reports whether err is the swarm saying that LAN discovery
// cannot work here, and why.
func lanFailure(err error) (error, bool) {
	if !strings.Contains(err.Error(), "LAN discovery") {
		return nil, false
	}
	if why := errors.Unwrap(err); why != nil {
		return why, true
	}
	return err, true
}

// peerHint says how to reach this node with -peer, for a listening node:
// needed without LAN discovery, and where it does not work.
func peerHint(a net.Addr, lan bool) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	host := "HOST"
	if !ta.IP.IsUnspecified() {
		host = ta.IP.String()
	}
	peer := "-peer " + net.JoinHostPort(host, fmt.Sprint(ta.Port))
	if !lan {
		return " " + peer
	}
	return " (add " + peer + " if the LAN does not find this one)"
}

// ownName returns the name of the database's local writer, when it has
// exactly one.
func ownName(core *kappa.Core) (string, error) {
	var names []string
	for _, f := range core.Feeds() {
		if n, ok := core.WriterName(f.Key()); ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if len(names) != 1 {
		return "", fmt.Errorf("-name NAME is required: the database has writers %q", names)
	}
	return names[0], nil
}

// isEmpty reports whether dir is missing or empty: a new chat.
func isEmpty(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return len(ents) == 0, nil
}
