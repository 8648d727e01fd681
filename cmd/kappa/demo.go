package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	kappa "github.com/kappa-db/kappa-go"
)

var demoCommand = &command{
	name:    "demo",
	args:    "[-dir DIR] [-keep]",
	summary: "two databases, two writers, replication over TCP, verification",
	help: `
Demo shows the database at work in a few seconds. It creates two databases,
alice and bob, that share a key and store JSON values; each has a writer
that appends numbers and a view that sums every number in the database.
It prints both sums, replicates the two databases over a TCP connection on
127.0.0.1, and prints the sums again: both now count every writer's
numbers. Last it verifies each database: every signature against its
feed's tree and every entry against its hash.

The databases go in a new temporary directory, or under DIR (created if
missing), and are removed at the end, with the directories the demo
created, unless -keep is given.`,
	run: func(e *env, c *command, args []string) error {
		fl := e.flags(c, false)
		dir := fl.String("dir", "", "create the databases under `DIR` instead of a temporary directory")
		keep := fl.Bool("keep", false, "keep the databases")
		if err := e.parseNoArgs(c, fl, args); err != nil {
			return err
		}
		ctx, stop := e.untilInterrupted()
		defer stop()
		return runDemo(ctx, e.stdout, *dir, *keep)
	},
}

// sumView sums the numbers among the entries of a JSON database.
type sumView struct {
	mu  sync.Mutex
	sum int64
}

func (v *sumView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var n int64
		if e.Decode(&n) == nil {
			v.sum += n
		}
	}
	return nil
}

// get waits until the view has indexed every entry core holds, and
// returns the sum.
func (v *sumView) get(ctx context.Context, core *kappa.Core) (int64, error) {
	if err := core.Ready(ctx, "sum"); err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sum, nil
}

// demoPeer is one of the demo's two databases.
type demoPeer struct {
	name    string
	core    *kappa.Core
	sum     *sumView
	numbers []int
}

// runDemo runs the demo, in steps: make the directories (demoDirs), open
// and fill both databases (startPeer), print the sums, replicate
// (replicateDemo), print the sums again, verify both (verifyDemo).
func runDemo(ctx context.Context, out io.Writer, dir string, keep bool) (err error) {
	// Where the databases go, and what to remove at the end.
	dir, remove, err := demoDirs(dir)
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			fmt.Fprintf(out, "kept the databases in %s\n", dir)
			return
		}
		for _, p := range remove {
			if rerr := os.RemoveAll(p); err == nil {
				err = rerr
			}
		}
	}()
	fmt.Fprintf(out, "databases alice and bob in %s\n", dir)

	peers := []*demoPeer{
		{name: "alice", numbers: []int{1, 2, 3, 4, 5}},
		{name: "bob", numbers: []int{10, 20, 30}},
	}
	var key []byte // bob joins alice's database: the same shared key
	for _, p := range peers {
		err := startPeer(out, p, dir, key)
		if p.core != nil {
			defer p.core.Close()
		}
		if err != nil {
			return err
		}
		key = p.core.SharedKey()
	}
	if err := printSums(ctx, out, "before", peers); err != nil {
		return err
	}
	if err := replicateDemo(ctx, out, peers); err != nil {
		return err
	}
	if err := printSums(ctx, out, "after", peers); err != nil {
		return err
	}
	if err := verifyDemo(ctx, out, peers); err != nil {
		return err
	}
	for _, p := range peers {
		if err := p.core.Close(); err != nil {
			return err
		}
	}
	return nil
}

// demoDirs returns the directory the databases go in (a new temporary one
// if dir is ""), and what to remove at the end: what the demo creates. The
// databases must be new.
func demoDirs(dir string) (string, []string, error) {
	if dir == "" {
		dir, err := os.MkdirTemp("", "kappa-demo-")
		if err != nil {
			return "", nil, err
		}
		return dir, []string{dir}, nil
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return "", nil, fmt.Errorf("%s is not a directory: -dir wants the directory the demo's databases go in", dir)
	}
	for _, name := range []string{"alice", "bob"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			return "", nil, fmt.Errorf("%s already exists: demo makes new databases", filepath.Join(dir, name))
		}
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// The demo creates dir and its missing parents: the highest of
		// them goes at the end.
		top := filepath.Clean(dir)
		for {
			parent := filepath.Dir(top)
			if _, err := os.Stat(parent); parent == top || !errors.Is(err, fs.ErrNotExist) {
				break
			}
			top = parent
		}
		return dir, []string{top}, nil
	}
	return dir, []string{filepath.Join(dir, "alice"), filepath.Join(dir, "bob")}, nil
}

// startPeer opens p's database under dir with the shared key (a new one if
// key is nil), installs its sum view and appends its numbers. p.core is
// set once the database is open, even if a later step fails.
func startPeer(out io.Writer, p *demoPeer, dir string, key []byte) error {
	core, err := kappa.Open(filepath.Join(dir, p.name), &kappa.Options{ValueEncoding: kappa.JSON, SharedKey: key})
	if err != nil {
		return err
	}
	p.core = core
	p.sum = &sumView{}
	if _, err := p.core.Use("sum", 1, p.sum); err != nil {
		return err
	}
	w, err := p.core.Writer(p.name)
	if err != nil {
		return err
	}
	for _, n := range p.numbers {
		// One Append per number: each is signed.
		if _, err := w.Append([]byte(strconv.Itoa(n))); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "%s's writer (feed %s) appended %v\n", p.name, shortKey(w.Key()), p.numbers)
	return nil
}

// demoResult is how one side's replication session ended.
type demoResult struct {
	err      error
	progress kappa.ReplicateProgress
}

// demoSession runs one non-live replication session of p over conn.
func demoSession(ctx context.Context, p *demoPeer, conn net.Conn, initiator bool) demoResult {
	var r demoResult
	var mu sync.Mutex
	opts := &kappa.ReplicateOptions{Progress: func(rp kappa.ReplicateProgress) {
		mu.Lock()
		r.progress = rp
		mu.Unlock()
	}}
	err := p.core.Replicate(ctx, conn, initiator, opts)
	mu.Lock()
	defer mu.Unlock()
	r.err = err
	return r
}

// replicateDemo replicates the two peers over TCP: the second listens on
// 127.0.0.1, the first dials; one non-live session each.
func replicateDemo(ctx context.Context, out io.Writer, peers []*demoPeer) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(out, "replicating over TCP: bob listens on %s, alice dials\n", l.Addr())
	bobDone := make(chan demoResult, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			bobDone <- demoResult{err: err}
			return
		}
		bobDone <- demoSession(ctx, peers[1], conn, false)
	}()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		l.Close()
		<-bobDone
		return err
	}
	results := []demoResult{demoSession(ctx, peers[0], conn, true)}
	if results[0].err != nil {
		l.Close() // in case bob never got the connection
	}
	results = append(results, <-bobDone)
	for i, r := range results {
		if r.err != nil {
			return fmt.Errorf("%s: %w", peers[i].name, r.err)
		}
		fmt.Fprintf(out, "%s received %d entries and sent %d, every one checked against its feed's signed tree\n",
			peers[i].name, r.progress.BlocksReceived, r.progress.BlocksSent)
	}
	return nil
}

// verifyDemo verifies each peer's database and prints the report.
func verifyDemo(ctx context.Context, out io.Writer, peers []*demoPeer) error {
	for _, p := range peers {
		rep, err := verifyCore(ctx, p.core, out, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: %s\n", p.name, rep)
		if rep.Problems > 0 {
			return fmt.Errorf("%s: verification found %d problems", p.name, rep.Problems)
		}
	}
	return nil
}

func printSums(ctx context.Context, out io.Writer, when string, peers []*demoPeer) error {
	fmt.Fprintf(out, "sums %s replication:", when)
	for i, p := range peers {
		sum, err := p.sum.get(ctx, p.core)
		if err != nil {
			return err
		}
		sep := ","
		if i == len(peers)-1 {
			sep = ""
		}
		n := len(p.core.Feeds())
		fmt.Fprintf(out, " %s %d (%d %s)%s", p.name, sum, n, plural(n, "feed", "feeds"), sep)
	}
	fmt.Fprintln(out)
	return nil
}
