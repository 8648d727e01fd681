package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// binDir holds the kappa binary the tests build once and run as a user
// would.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kappa-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
	binPath   string
)

// kappaBin builds the command (with the race detector if the tests run
// with it) the first time it is called and returns the binary's path.
func kappaBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(binDir, "kappa")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// hangAfter is how long a test waits for a process before it calls it
// hung: far beyond any honest wait, on any machine.
const hangAfter = 2 * time.Minute

// ctxT returns a context that ends when the test does, or as a hang
// detector after hangAfter or a little before the test binary's -timeout,
// whichever comes first. Processes started with it are killed when it ends.
func ctxT(t *testing.T) context.Context {
	deadline := time.Now().Add(hangAfter)
	if end, ok := t.Deadline(); ok {
		if early := end.Add(-time.Until(end) / 20); early.Before(deadline) {
			deadline = early
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// kappaCmd returns the command "kappa args..." run in dir.
func kappaCmd(t *testing.T, ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, kappaBin(t), args...)
	cmd.Dir = dir
	// A race-enabled binary otherwise sleeps a second before it exits.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.WaitDelay = 10 * time.Second // after a kill, for the pipes
	return cmd
}

// result is how a run of the command ended.
type result struct {
	stdout, stderr string
	code           int
}

// kappaRun runs "kappa args..." in dir with stdin and waits for it.
func kappaRun(t *testing.T, dir, stdin string, args ...string) result {
	t.Helper()
	ctx := ctxT(t)
	cmd := kappaCmd(t, ctx, dir, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kappa %s hung: %v", strings.Join(args, " "), ctx.Err())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("kappa %s: %v", strings.Join(args, " "), err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// mustRun runs "kappa args..." and fails the test unless it succeeds.
func mustRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	r := kappaRun(t, dir, "", args...)
	if r.code != 0 {
		t.Fatalf("kappa %s: exit %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// mustFail runs "kappa args..." and checks that it fails with one line on
// standard error, which it returns.
func mustFail(t *testing.T, dir, stdin string, args ...string) string {
	t.Helper()
	r := kappaRun(t, dir, stdin, args...)
	if r.code == 0 {
		t.Fatalf("kappa %s succeeded; stdout:\n%s", strings.Join(args, " "), r.stdout)
	}
	checkOneErrorLine(t, strings.Join(args, " "), r.stderr)
	return r.stderr
}

func checkOneErrorLine(t *testing.T, what, stderr string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Fatalf("kappa %s: want one line on stderr, got:\n%s", what, stderr)
	}
	if !strings.HasPrefix(stderr, "kappa: ") || strings.Contains(stderr, "kappa: kappa:") ||
		strings.Count(stderr, "kappa: ") != 1 {
		t.Errorf("kappa %s: want one \"kappa: \" prefix, got %q", what, stderr)
	}
}

// newDB creates a database in dir/name with the given init flags and
// returns its path.
func newDB(t *testing.T, dir, name string, flags ...string) string {
	t.Helper()
	db := filepath.Join(dir, name)
	mustRun(t, dir, append([]string{"init", "-db", db}, flags...)...)
	return db
}

// sharedDBs makes a database dir/NAME for each name, the first with a new
// shared key and the others joined to it, and returns their paths.
func sharedDBs(t *testing.T, dir string, names ...string) []string {
	t.Helper()
	dbs := []string{newDB(t, dir, names[0])}
	key := strings.TrimSpace(mustRun(t, dir, "key", "-db", dbs[0]))
	for _, name := range names[1:] {
		dbs = append(dbs, newDB(t, dir, name, "-key", key))
	}
	return dbs
}

// process is a command running in the background, its standard output
// read line by line.
type process struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	ctx    context.Context
	stderr *bytes.Buffer // read it once the process ended
}

func start(t *testing.T, dir string, args ...string) *process {
	t.Helper()
	ctx := ctxT(t)
	cmd := kappaCmd(t, ctx, dir, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, lines: make(chan string, 1000), ctx: ctx, stderr: stderr}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("kappa %s stderr:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	return p
}

// waitLine returns the first line of output that contains want, failing
// the test if the process ends first or hangs.
func (p *process) waitLine(want string) string {
	p.t.Helper()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("%s ended before printing %q", p.cmd.Args, want)
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-p.ctx.Done():
			p.t.Fatalf("%s: still waiting for %q: %v", p.cmd.Args, want, p.ctx.Err())
		}
	}
}

// interrupt sends SIGINT, waits for the process to end and returns the
// rest of its output; it fails the test unless the process exits with 0.
func (p *process) interrupt() []string {
	p.t.Helper()
	if runtime.GOOS == "windows" {
		p.t.Skip("no SIGINT to send on Windows")
	}
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		p.t.Fatal(err)
	}
	var rest []string
	for line := range p.lines {
		rest = append(rest, line)
	}
	if err := p.cmd.Wait(); err != nil {
		p.t.Fatalf("%s after SIGINT: %v; output:\n%s", p.cmd.Args, err, strings.Join(rest, "\n"))
	}
	return rest
}

// serve starts "kappa serve" on db at a free port and returns it and the
// address it listens on.
func serve(t *testing.T, dir, db string) (*process, string) {
	t.Helper()
	p := start(t, dir, "serve", "-db", db, "-listen", "127.0.0.1:0")
	line := p.waitLine("listening on ")
	return p, strings.TrimPrefix(line, "listening on ")
}

// logEntry is a line of "kappa log -json", less the writer's name, which
// is local.
type logEntry struct {
	Feed        string          `json:"feed"`
	Seq         uint64          `json:"seq"`
	Value       json.RawMessage `json:"value"`
	ValueBase64 []byte          `json:"value_base64"`
}

func (e logEntry) String() string {
	return fmt.Sprintf("%s/%d=%s%x", e.Feed[:8], e.Seq, e.Value, e.ValueBase64)
}

// entries returns what "kappa log -json" prints for db, sorted.
func entries(t *testing.T, dir, db string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, dir, "log", "-json", "-db", db)), "\n") {
		if line == "" {
			continue
		}
		var e logEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log -json line %q: %v", line, err)
		}
		out = append(out, e.String())
	}
	slices.Sort(out)
	return out
}

func TestDemoReplicatesSumsAndVerifies(t *testing.T) {
	dir := t.TempDir()
	out := mustRun(t, dir, "demo", "-dir", filepath.Join(dir, "demo", "in", "here"))
	for _, want := range []string{
		"sums before replication: alice 15 (1 feed), bob 60 (1 feed)",
		"replicating over TCP: bob listens on 127.0.0.1:",
		"sums after replication: alice 75 (2 feeds), bob 75 (2 feeds)",
		"alice: verified 2 feeds: 8 entries (19 bytes) re-hashed, 6 signatures checked",
		"bob: verified 2 feeds: 8 entries (19 bytes) re-hashed, 4 signatures checked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// It created demo/in/here, and removes all three.
	if _, err := os.Stat(filepath.Join(dir, "demo")); !os.IsNotExist(err) {
		t.Errorf("demo left %s behind (stat: %v)", filepath.Join(dir, "demo"), err)
	}

	// With -keep, both databases stay, each with both writers' entries.
	mustRun(t, dir, "demo", "-dir", "kept", "-keep")
	alice, bob := entries(t, dir, "kept/alice"), entries(t, dir, "kept/bob")
	if len(alice) != 8 || !slices.Equal(alice, bob) {
		t.Errorf("kept databases differ or lack entries:\nalice %v\nbob   %v", alice, bob)
	}
	// And a second demo does not overwrite them.
	if msg := mustFail(t, dir, "", "demo", "-dir", "kept"); !strings.Contains(msg, "already exists") {
		t.Errorf("demo over kept databases: %q", msg)
	}
}

func TestServeAndSyncEndWithTheSameEntries(t *testing.T) {
	dir := t.TempDir()
	a := newDB(t, dir, "a", "-encoding", "json")
	key := strings.TrimSpace(mustRun(t, dir, "key", "-db", a))
	b := newDB(t, dir, "b", "-encoding", "json", "-key", key)
	mustRun(t, dir, "append", "-db", a, "-writer", "alice", "1", `"two"`, `{"n":3}`)
	r := kappaRun(t, dir, "4\n5\n", "append", "-db", b, "-writer", "bob")
	if r.code != 0 || !strings.Contains(r.stdout, "appended 2 entries") {
		t.Fatalf("append from stdin: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	srv, addr := serve(t, dir, a)
	r = kappaRun(t, dir, "", "sync", "-db", b, addr)
	if r.code != 0 {
		t.Fatalf("sync: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "received 3 blocks, sent 2") {
		t.Errorf("sync's summary: %q", r.stdout)
	}
	// Standard error is no terminal here: progress comes as plain lines.
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if line != "" && !strings.HasPrefix(line, "sync: ") {
			t.Errorf("sync's stderr has %q", line)
		}
	}
	// The serve tells of the session's end once it read the goodbye,
	// which may come after sync exited: wait for it before stopping it.
	srv.waitLine(" connected")
	if line := srv.waitLine(" ended: "); !strings.Contains(line, "ended: the peer said goodbye (received 2 blocks, sent 3)") {
		t.Errorf("serve's line for the session's end: %q", line)
	}
	if rest := srv.interrupt(); !slices.Contains(rest, "stopped") {
		t.Errorf("serve's output after the interrupt lacks \"stopped\": %q", rest)
	}

	ea, eb := entries(t, dir, a), entries(t, dir, b)
	if len(ea) != 5 || !slices.Equal(ea, eb) {
		t.Errorf("after sync:\na: %v\nb: %v", ea, eb)
	}
	for _, db := range []string{a, b} {
		out := mustRun(t, dir, "feeds", "-db", db)
		if n := strings.Count(out, "\n"); n != 3 {
			t.Errorf("feeds of %s: want a header and 2 feeds:\n%s", db, out)
		}
	}
}

func TestFollowPrintsEntriesThatReachTheServerLater(t *testing.T) {
	dir := t.TempDir()
	dbs := sharedDBs(t, dir, "a", "b", "c")
	a, b, c := dbs[0], dbs[1], dbs[2]
	mustRun(t, dir, "append", "-db", a, "first")

	srv, addr := serve(t, dir, a)
	follow := start(t, dir, "log", "-follow", "-json", "-peer", addr, "-db", b)
	follow.waitLine(`"value":"first"`)

	// c syncs with a; the live session passes c's entry on to b.
	mustRun(t, dir, "append", "-db", c, "-writer", "carol", "from carol")
	mustRun(t, dir, "sync", "-db", c, addr)
	follow.waitLine(`"value":"from carol"`)
	follow.interrupt()
	srv.interrupt()
}

func TestVerifyNamesTheDamagedEntry(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "aaaa", "bbbb", "cccc")
	out := mustRun(t, dir, "verify", "-db", db)
	// Format 4: each block is 0x00 (no context) ‖ the value: 5 bytes.
	if !strings.Contains(out, "verified 1 feed: 3 entries (15 bytes) re-hashed, 1 signature checked") {
		t.Errorf("verify of a healthy database:\n%s", out)
	}
	if out := mustRun(t, dir, "stat", "-db", db); !strings.Contains(out, "entries   3 (3 held here)") {
		t.Errorf("stat:\n%s", out)
	}
	feed := entries(t, dir, db)[0][:8]

	// Entry 1's record starts after the data file's 16-byte header and
	// entry 0's record (its length, its 5-byte block 0x00 ‖ 4 bytes, its
	// CRC); its block follows its own 4-byte length.
	data := filepath.Join(db, "feeds", "0", "data")
	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	b[16+(4+5+4)+4+2] ^= 0x20
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r := kappaRun(t, dir, "", "verify", "-db", db)
	if r.code == 0 {
		t.Fatalf("verify passed a flipped byte:\n%s", r.stdout)
	}
	checkOneErrorLine(t, "verify", r.stderr)
	want := fmt.Sprintf("damaged: feed %s (writer \"default\") seq 1: %s at offset 29", feed, data)
	if !strings.Contains(r.stdout, want) || strings.Count(r.stdout, "damaged:") != 1 {
		t.Errorf("verify's report lacks %q, or names more:\n%s", want, r.stdout)
	}
	if !strings.Contains(r.stdout, "2 entries (10 bytes) re-hashed, 1 signature checked; 1 problem") {
		t.Errorf("verify's summary:\n%s", r.stdout)
	}
	// log prints the other entries, and exits non-zero with one line
	// naming the damaged one.
	if msg := mustFail(t, dir, "", "log", "-db", db); !strings.Contains(msg, data) {
		t.Errorf("log of a damaged feed: %q", msg)
	}
}

func TestVerifyListsFeedsThatDidNotLoad(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "-writer", "one", "a")
	mustRun(t, dir, "append", "-db", db, "-writer", "two", "b")
	// The second feed's tree file loses its magic.
	tree := filepath.Join(db, "feeds", "1", "tree")
	f, err := os.OpenFile(tree, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r := kappaRun(t, dir, "", "verify", "-db", db)
	if r.code == 0 {
		t.Fatalf("verify passed a feed that did not load:\n%s", r.stdout)
	}
	checkOneErrorLine(t, "verify", r.stderr)
	if !strings.Contains(r.stdout, "damaged: feed in slot 1 not loaded: feed ") || !strings.Contains(r.stdout, `(writer "two") `+tree+" at offset 0") {
		t.Errorf("verify's report:\n%s", r.stdout)
	}
	// Other commands go on with the feeds that loaded, and warn once.
	r = kappaRun(t, dir, "", "log", "-db", db)
	if r.code != 0 || !strings.Contains(r.stdout, "one") || strings.Count(r.stderr, "\n") != 1 ||
		!strings.Contains(r.stderr, "warning: 1 damaged feed") {
		t.Errorf("log with a damaged feed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestErrorsAreOneLineAndExitNonZero(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db", "-encoding", "json")
	missing := filepath.Join(dir, "missing")
	full := filepath.Join(dir, "full")
	if err := os.MkdirAll(full, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, "notes"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory with a file called kappa that is no database file.
	notDB := filepath.Join(dir, "bin")
	if err := os.MkdirAll(notDB, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(notDB, "kappa"), bytes.Repeat([]byte("#!/bin/sh\n"), 10), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		args  []string
		stdin string
		want  string // in the error line
	}{
		{"no command", nil, "", "no command"},
		{"unknown command", []string{"frobnicate"}, "", `unknown command "frobnicate"`},
		{"bad top flag", []string{"-nope", "log"}, "", "-nope"},
		{"bad flag", []string{"append", "-nope"}, "", "append: flag provided but not defined: -nope"},
		{"bad encoding", []string{"init", "-db", missing, "-encoding", "xml"}, "", `unknown encoding "xml"`},
		{"bad key", []string{"init", "-db", missing, "-key", "zz"}, "", "64 hex digits"},
		{"short key", []string{"init", "-db", missing, "-key", "abcd"}, "", "64 hex digits"},
		{"init over a database", []string{"init", "-db", db}, "", "already holds a database"},
		{"init in a full directory", []string{"init", "-db", full}, "", "not empty"},
		{"extra argument", []string{"feeds", "-db", db, "extra"}, "", `unexpected argument "extra"`},
		{"sync without address", []string{"sync", "-db", db}, "", "want one ADDR"},
		{"sync to a bad address", []string{"sync", "-db", db, "no-port"}, "", "want host:port"},
		{"peer without follow", []string{"log", "-db", db, "-peer", "127.0.0.1:1"}, "", "-peer goes with -follow"},
		{"bad writer name", []string{"append", "-db", db, "-writer", "a/b", "1"}, "", "slashes"},
		{"value that is not JSON", []string{"append", "-db", db, "not json"}, "", "not JSON"},
		{"stdin line that is not JSON", []string{"append", "-db", db}, "1\nnope\n", "not JSON"},
		{"serve on a bad address", []string{"serve", "-db", db, "-listen", "256.0.0.1:0"}, "", "256.0.0.1"},
		{"empty -db", []string{"-db", "", "log"}, "", "-db is empty"},
		{"empty -db for init", []string{"init", "-db", ""}, "", "-db is empty"},
		{"a kappa file that is no database", []string{"log", "-db", notDB}, "", "no database in " + notDB},
	}
	for _, cmd := range []string{"key", "append", "log", "feeds", "serve", "sync", "verify", "stat"} {
		args := []string{cmd, "-db", missing}
		switch cmd {
		case "append":
			args = append(args, "1")
		case "sync":
			args = append(args, "127.0.0.1:1")
		}
		cases = append(cases, struct {
			name  string
			args  []string
			stdin string
			want  string
		}{cmd + " on a missing directory", args, "", "no database in " + missing})
	}
	// One at a time: commands on the same database would find it locked.
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := mustFail(t, dir, c.stdin, c.args...)
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q lacks %q", msg, c.want)
			}
		})
	}
	// None created a database, or a writer for values it refused.
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("a command created %s", missing)
	}
	if out := mustRun(t, dir, "feeds", "-db", db); strings.Count(out, "\n") != 1 {
		t.Errorf("refused values left a writer:\n%s", out)
	}
	if ents, _ := os.ReadDir(notDB); len(ents) != 1 {
		t.Errorf("a command wrote to %s: %v", notDB, ents)
	}
}

func TestLockedDatabaseIsAnError(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	core, err := kappa.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	for _, args := range [][]string{
		{"key"}, {"append", "x"}, {"log"}, {"log", "-follow"}, {"feeds"}, {"serve", "-listen", "127.0.0.1:0"},
		{"sync", "127.0.0.1:1"}, {"verify"}, {"stat"},
	} {
		msg := mustFail(t, dir, "", append([]string{"-db", db}, args...)...)
		if !strings.Contains(msg, "database is locked") {
			t.Errorf("%v on a locked database: %q", args, msg)
		}
	}
}

// garbagePeer listens on 127.0.0.1 and answers every connection with
// bytes that are no kappa session, then closes it.
func garbagePeer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Write(bytes.Repeat([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"), 100))
			conn.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String()
}

func TestSyncWithAPeerThatIsNotKappa(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "x")
	msg := mustFail(t, dir, "", "sync", "-db", db, garbagePeer(t))
	if !strings.Contains(msg, "sync: peer 127.0.0.1:") {
		t.Errorf("sync with garbage: %q", msg)
	}

	// A kappa peer with another shared key is turned away as well, and
	// serve goes on.
	other := newDB(t, dir, "other")
	srv, addr := serve(t, dir, db)
	msg = mustFail(t, dir, "", "sync", "-db", other, addr)
	if !strings.Contains(msg, "shared key") {
		t.Errorf("sync with another key: %q", msg)
	}
	// A peer turned away in the handshake never was in session: the
	// swarm's serve prints no line for it.
	rest := strings.Join(srv.interrupt(), "\n")
	if strings.Contains(rest, "connected") || !strings.Contains(rest, "stopped") {
		t.Errorf("serve's output:\n%s", rest)
	}
	if got := entries(t, dir, other); len(got) != 0 {
		t.Errorf("other got entries: %v", got)
	}
}

func TestHelpForEveryCommand(t *testing.T) {
	dir := t.TempDir()
	out := mustRun(t, dir, "-h")
	for _, c := range commands {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("kappa -h lacks %s:\n%s", c.name, out)
		}
		r := kappaRun(t, dir, "", c.name, "-h")
		if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, "Usage: kappa "+c.name) {
			t.Errorf("kappa %s -h: exit %d\nstdout:\n%sstderr:\n%s", c.name, r.code, r.stdout, r.stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, defaultDB)); !os.IsNotExist(err) {
		t.Errorf("-h created %s", defaultDB)
	}
}

// In-process tests of the parts that need no process.

func TestErrorLineSaysKappaOnce(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{kappa.ErrLocked, "kappa: database is locked"},
		{fmt.Errorf("log: open x: %w", kappa.ErrLocked), "kappa: log: open x: database is locked"},
		{fmt.Errorf("a: %w", &kappa.CorruptError{File: "f", Offset: 3, Reason: "bad"}), "kappa: a: corrupt data in f at offset 3: bad"},
		{fmt.Errorf("x:\n%w ", kappa.ErrClosed), "kappa: x:; closed"},
	} {
		if got := errorLine(c.err); got != c.want {
			t.Errorf("errorLine(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestAppendLinesKeepsEveryLine(t *testing.T) {
	var got []string
	batches := 0
	in := "one\r\ntwo\n\nthree"
	err := appendLines(strings.NewReader(in), func(values [][]byte) error {
		batches++
		for _, v := range values {
			got = append(got, string(v))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"one", "two", "", "three"}; !slices.Equal(got, want) || batches != 1 {
		t.Errorf("got %q in %d batches, want %q in 1", got, batches, want)
	}
	err = appendLines(io.MultiReader(strings.NewReader("a\n"), strings.NewReader("b\n")), func([][]byte) error {
		return kappa.ErrInvalidValue
	})
	if err == nil || !strings.Contains(err.Error(), "lines 1 to 1") {
		t.Errorf("error for the first batch: %v", err)
	}
}

// An append of standard input whose later batch of lines fails says how
// many entries the batches before it appended, and which lines were not.
func TestAppendLinesSaysWhatWasAppendedBeforeAFailure(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db", "-encoding", "json")
	// More lines than one batch takes, so the bad line is in the second.
	in := strings.Repeat("1\n", 4096) + "{\n"
	r := kappaRun(t, dir, in, "append", "-db", db)
	if r.code != 1 || !strings.Contains(r.stdout, "appended 4096 entries") || !strings.Contains(r.stderr, "line 4097 (lines 4097 to 4097 not appended): invalid value") {
		t.Fatalf("append: %+v", r)
	}
	if got := entries(t, dir, db); len(got) != 4096 {
		t.Errorf("%d entries held, want 4096", len(got))
	}
}

func TestProgressLinesStartAfterTheHandshake(t *testing.T) {
	var out bytes.Buffer
	p := &progress{w: &out}
	p.update(kappa.ReplicateProgress{Phase: "handshake"})
	p.show()
	if out.Len() != 0 {
		t.Errorf("a line during the handshake: %q", out.String())
	}
	p.update(kappa.ReplicateProgress{Phase: "exchange", Feeds: 2, BlocksToGo: 5, BlocksReceived: 1})
	p.show()
	p.show() // nothing new: no line
	if want := "sync: exchange: 2 feeds, 5 blocks to fetch, 1 received, 0 sent\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestProgressBarOnATerminal(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out, true)
	p.update(kappa.ReplicateProgress{Phase: "exchange", Feeds: 1, BlocksToGo: 1, BlocksReceived: 3, BytesReceived: 3 << 10})
	last := p.stop()
	if last.BlocksReceived != 3 {
		t.Errorf("stop returned %+v", last)
	}
	got := out.String()
	if !strings.HasPrefix(got, "\rexchange  [======================        ]  75%  3/4 blocks  1 feed  3.0 KiB in  0 B out") ||
		!strings.HasSuffix(got, "\n") {
		t.Errorf("bar: %q", got)
	}
}

func TestLogJSONLinesForEachEncoding(t *testing.T) {
	for _, c := range []struct {
		enc   kappa.Encoding
		value string
		want  string // after "seq":0,
	}{
		{kappa.JSON, "{ \"n\" :\n 1 }", `"value":{"n":1}}`},
		// Valid JSON (which allows any byte in a string) but not UTF-8.
		{kappa.JSON, "{\"s\":\"\xff\"}", `"value_base64":"eyJzIjoi/yJ9"}`},
		{kappa.UTF8, "héllo\n", `"value":"héllo\n"}`},
		{kappa.Binary, "plain", `"value":"plain"}`},
		{kappa.Binary, "\xff\x00", `"value_base64":"/wA="}`},
	} {
		core, err := kappa.New(kappa.NewMemStorage(), &kappa.Options{ValueEncoding: c.enc})
		if err != nil {
			t.Fatal(err)
		}
		w, err := core.Writer("w")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append([]byte(c.value)); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		p := &logPrinter{w: bufio.NewWriter(&out), json: true, enc: c.enc, core: core}
		if err := readEntries(context.Background(), w, 0, w.Len(), p.printer(w), nil); err != nil {
			t.Fatal(err)
		}
		p.w.Flush()
		want := fmt.Sprintf(`{"feed":"%x","writer":"w","seq":0,%s`+"\n", w.Key(), c.want)
		if out.String() != want {
			t.Errorf("%s %q: got %s want %s", c.enc, c.value, out.String(), want)
		}
		core.Close()
	}
}

func TestLogTextQuotesWhatIsNotPlain(t *testing.T) {
	p := &logPrinter{enc: kappa.Binary}
	for in, want := range map[string]string{
		"hello world": "hello world",
		"":            `""`,
		"two\nlines":  `"two\nlines"`,
		"\xff\x00":    `"\xff\x00"`,
		`"quoted"`:    `"\"quoted\""`,
	} {
		if got := p.text([]byte(in)); got != want {
			t.Errorf("text(%q) = %s, want %s", in, got, want)
		}
	}
	p.enc = kappa.JSON
	if got := p.text([]byte("{ \"a\" :\n 1 }")); got != `{"a":1}` {
		t.Errorf("json text = %s", got)
	}
	if got, want := p.text([]byte("{\"s\":\"\xff\"}")), `"{\"s\":\"\xff\"}"`; got != want {
		t.Errorf("json text of invalid UTF-8 = %s, want %s", got, want)
	}
}

// A local writer's name that could be read as something else in log's
// and feeds' columns is quoted: "-" (a replica's mark there), a name with
// a space, one that starts with a quote.
func TestLogAndFeedsQuoteWriterNamesThatMislead(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	for _, name := range []string{"-", "a b", `"x`, "bob"} {
		mustRun(t, dir, "append", "-db", db, "-writer", name, "v")
	}
	logOut := mustRun(t, dir, "log", "-db", db)
	feedsOut := mustRun(t, dir, "feeds", "-db", db)
	for _, want := range []string{`  "-"  `, `  "a b"  `, `  "\"x"  `, "  bob  "} {
		if !strings.Contains(logOut, strings.TrimRight(want, " ")+" ") {
			t.Errorf("log lacks %q:\n%s", want, logOut)
		}
		if !strings.Contains(feedsOut, want) {
			t.Errorf("feeds lacks %q:\n%s", want, feedsOut)
		}
	}
}

// A replica whose newest signature record is damaged loads, at the length
// of the records before it (here none), and fetches the signature again
// from peers: the commands warn of a loaded feed with damage, not of a
// feed that did not load.
func TestCommandsWarnOfALoadedReplicaWithDamage(t *testing.T) {
	dir := t.TempDir()
	a, err := kappa.Open(filepath.Join(dir, "a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	w, err := a.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]byte("one"), []byte("two")); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "b")
	b, err := kappa.Open(db, &kappa.Options{SharedKey: a.SharedKey()})
	if err != nil {
		t.Fatal(err)
	}
	cp, cq := net.Pipe()
	errs := make(chan error, 1)
	go func() { errs <- b.Replicate(ctxT(t), cq, false, nil) }()
	if err := a.Replicate(ctxT(t), cp, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if f := b.Feed(w.Key()); f == nil || f.Len() != 2 {
		t.Fatalf("the replica: %v", f)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// A byte of the signature in its one signature record (after the
	// 16-byte header, and the record's length field).
	sigs := filepath.Join(db, "feeds", "0", "signatures")
	f, err := os.OpenFile(sigs, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var c [1]byte
	if _, err := f.ReadAt(c[:], 16+8+5); err != nil {
		t.Fatal(err)
	}
	c[0] ^= 1
	if _, err := f.WriteAt(c[:], 16+8+5); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r := kappaRun(t, dir, "", "feeds", "-db", db)
	if r.code != 0 || !strings.Contains(r.stderr, "warning: 1 loaded feed(s) have damage") || strings.Contains(r.stderr, "not loaded") {
		t.Errorf("feeds: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = kappaRun(t, dir, "", "stat", "-db", db)
	if r.code != 0 || !strings.Contains(r.stdout, "0 feeds not loaded, 1 loaded with damage") {
		t.Errorf("stat: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// The commands that open the database read-only leave a torn tail as it
// is, and say so: one warning line, and verify lists it.
func TestReadOnlyCommandsWarnOfATornTailNotCut(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "-writer", "w", "one", "two")
	data := filepath.Join(db, "feeds", "0", "data")
	f, err := os.OpenFile(data, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("torn tail"))
	f.Close()
	before, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"key"}, {"feeds"}, {"stat"}, {"log"}, {"log", "-json"}} {
		r := kappaRun(t, dir, "", append(args, "-db", db)...)
		if r.code != 0 {
			t.Fatalf("kappa %s: exit %d: %s", args, r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "kappa: warning: 1 repair(s) not made: opened read-only (kappa verify lists them)") {
			t.Errorf("kappa %s: standard error %q, want the warning", args, r.stderr)
		}
	}
	if out := mustRun(t, dir, "verify", "-db", db); !strings.Contains(out, "cut from") {
		t.Errorf("verify does not list the cut: %q", out)
	}
	if after, _ := os.ReadFile(data); !bytes.Equal(after, before) {
		t.Error("a read-only command changed the data file")
	}
}

// init -key - reads the shared key from standard input, so that it is not
// in the command line (which other users can read in /proc); an empty
// standard input or a bad key is a usage error, and nothing is created.
func TestInitReadsTheKeyFromStandardInput(t *testing.T) {
	dir := t.TempDir()
	a := newDB(t, dir, "a")
	key := strings.TrimSpace(mustRun(t, dir, "key", "-db", a))
	b := filepath.Join(dir, "b")
	if r := kappaRun(t, dir, "  "+key+"  \nmore\n", "init", "-db", b, "-key", "-"); r.code != 0 || !strings.Contains(r.stdout, "joined") {
		t.Fatalf("init -key -: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := strings.TrimSpace(mustRun(t, dir, "key", "-db", b)); got != key {
		t.Fatalf("b's key %s, want a's %s", got, key)
	}
	for name, stdin := range map[string]string{"empty": "", "bad": "zz\n", "short": key[:10] + "\n"} {
		c := filepath.Join(dir, "c-"+name)
		r := kappaRun(t, dir, stdin, "init", "-db", c, "-key", "-")
		if r.code != 2 || !strings.Contains(r.stderr, "64 hex digits") {
			t.Errorf("%s standard input: exit %d, stderr %q; want 2 and a word on the key", name, r.code, r.stderr)
		}
		if _, err := os.Stat(c); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s standard input: %s was created (%v)", name, c, err)
		}
	}
}

// A value over kappa.MaxBlockSize on standard input is named by its line,
// like a value the encoding refuses, and creates no writer.
func TestAppendOfAValueTooLargeNamesItsLine(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	in := "a\nb\n" + strings.Repeat("z", kappa.MaxBlockSize+1) + "\nc\n"
	r := kappaRun(t, dir, in, "append", "-db", db, "-writer", "big")
	if r.code != 1 || !strings.Contains(r.stderr, "line 3 (lines 1 to ") || !strings.Contains(r.stderr, "block too large") {
		t.Fatalf("append: code %d, stderr %q", r.code, r.stderr)
	}
	if out := mustRun(t, dir, "feeds", "-db", db); strings.Contains(out, "big") {
		t.Errorf("a writer was made for values never appended:\n%s", out)
	}
}

// A line past the limit is refused without reading the rest of it:
// standard input may be endless.
func TestAppendLinesStopsReadingALineTooLong(t *testing.T) {
	// (Endless but for a bound, so that a reader that takes lines whole
	// fails this test rather than running out of memory.)
	endless := &countingReader{r: io.LimitReader(zeroReader{}, 4*kappa.MaxBlockSize)}
	var got [][]byte
	err := appendLines(io.MultiReader(strings.NewReader("x\ny\n"), endless), func(values [][]byte) error {
		got = append(got, values...)
		return nil
	})
	if !errors.Is(err, kappa.ErrBlockTooLarge) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("error %v, want ErrBlockTooLarge naming line 3", err)
	}
	if len(got) != 2 {
		t.Errorf("%d lines appended, want the 2 before", len(got))
	}
	if endless.n > kappa.MaxBlockSize+1<<20 {
		t.Errorf("read %d bytes of the long line, want little more than %d", endless.n, kappa.MaxBlockSize)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Small command lines an audit found answered wrongly: "help help" is the
// usage, a -listen that is no host:port is a usage error (2), and a -dir
// that is a file is named as one.
func TestCommandLinesAnsweredRightly(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db := newDB(t, dir, "db")
	for _, c := range []struct {
		args []string
		code int
		out  string // in standard output or error
	}{
		{[]string{"help", "help"}, 0, "init"},
		{[]string{"serve", "-db", db, "-listen", "abc"}, 2, `-listen "abc": want host:port`},
		{[]string{"demo", "-dir", file}, 1, "is not a directory"},
	} {
		r := kappaRun(t, dir, "", c.args...)
		if r.code != c.code || !strings.Contains(r.stdout+r.stderr, c.out) {
			t.Errorf("kappa %s: code %d, output %q; want code %d and %q", strings.Join(c.args, " "), r.code, r.stdout+r.stderr, c.code, c.out)
		}
	}
}

// An append of standard input that is interrupted says so and counts what
// it appended, as it does inside a serve: it is not killed by the signal
// with nothing said.
func TestAppendOfStandardInputInterrupted(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no SIGINT to send on Windows")
	}
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	ctx := ctxT(t)
	cmd := kappaCmd(t, ctx, dir, "append", "-db", db)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if _, err := io.WriteString(stdin, "one\n"); err != nil {
		t.Fatal(err)
	}
	// The line is appended once the writer's signature record is there.
	sigs := filepath.Join(db, "feeds", "0", "signatures")
	for {
		if fi, err := os.Stat(sigs); err == nil && fi.Size() > 16 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the line was never appended; stderr %q", stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(stdout.String(), "appended 1 entry") || !strings.Contains(stderr.String(), "standard input: the command was interrupted") {
		t.Fatalf("after SIGINT: %v; stdout %q, stderr %q; want status 1, the entry counted, and why", err, stdout.String(), stderr.String())
	}
	if got := entries(t, dir, db); len(got) != 1 {
		t.Errorf("%d entries held, want 1", len(got))
	}
}
