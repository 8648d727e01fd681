package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// serveSwarm starts "kappa serve" on db with LAN discovery off and extra
// flags, and returns it and the address it listens on.
func serveSwarm(t *testing.T, dir, db string, flags ...string) (*process, string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the control socket is a unix socket")
	}
	args := append([]string{"serve", "-db", db, "-lan=false"}, flags...)
	if !slices.Contains(flags, "-listen") {
		args = append(args, "-listen", "127.0.0.1:0")
	}
	p := start(t, dir, args...)
	line := p.waitLine("listening on ")
	return p, strings.TrimPrefix(line, "listening on ")
}

// stop sends sig, waits for the process to end and returns the rest of
// its output; it fails the test unless the process exits with 0.
func (p *process) stop(sig os.Signal) []string {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	var rest []string
	for line := range p.lines {
		rest = append(rest, line)
	}
	if err := p.cmd.Wait(); err != nil {
		p.t.Fatalf("%s after %v: %v; output:\n%s", p.cmd.Args, sig, err, strings.Join(rest, "\n"))
	}
	return rest
}

// kill kills the process (SIGKILL) and waits for it.
func (p *process) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	for range p.lines {
	}
	p.cmd.Wait()
}

// waitStatus runs "kappa status" until a line of it holds every one of
// want, and returns that output.
func waitStatus(t *testing.T, dir, db string, want ...string) string {
	t.Helper()
	ctx := ctxT(t)
	for {
		out := mustRun(t, dir, "status", "-db", db)
		for _, line := range strings.Split(out, "\n") {
			all := true
			for _, w := range want {
				all = all && strings.Contains(line, w)
			}
			if all {
				return out
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("status never showed a line with %q; the last:\n%s", want, out)
		}
	}
}

// The commands that work beside a serve print, through its control
// socket, exactly what they print when they open the database themselves:
// output, errors and exit status.
func TestCommandsThroughServePrintWhatTheyPrintAlone(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db", "-encoding", "json")
	mustRun(t, dir, "append", "-db", db, "-writer", "alice", "1", `"two"`, `{"n": 3}`)
	cmds := [][]string{{"log"}, {"log", "-json"}, {"feeds"}, {"stat"}, {"key"}}
	alone := map[string]string{}
	for _, args := range cmds {
		alone[strings.Join(args, " ")] = mustRun(t, dir, append([]string{"-db", db}, args...)...)
	}
	if out := mustRun(t, dir, "status", "-db", db); out != "not serving\n" {
		t.Errorf("status without a serve: %q", out)
	}
	bad := kappaRun(t, dir, "", "append", "-db", db, "not json")

	srv, addr := serveSwarm(t, dir, db)
	for _, args := range cmds {
		// -db before the command, or after it: the serve's own database.
		got := mustRun(t, dir, append(args[:1:1], append([]string{"-db", db}, args[1:]...)...)...)
		if want := alone[strings.Join(args, " ")]; got != want {
			t.Errorf("%v through serve:\n%s\nalone:\n%s", args, got, want)
		}
	}
	out := mustRun(t, dir, "status", "-db", db)
	for _, want := range []string{"serving: process ", "listening on " + addr, "LAN discovery: off (-lan=false)", "no peers"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if r := kappaRun(t, dir, "", "append", "-db", db, "not json"); r != bad {
		t.Errorf("a bad append through serve: %+v; alone: %+v", r, bad)
	}
	out = mustRun(t, dir, "append", "-db", db, "-writer", "bob", "4", "5")
	if !strings.Contains(out, `appended 2 entries to writer "bob"`) {
		t.Errorf("append through serve: %q", out)
	}
	r := kappaRun(t, dir, "6\n7\n8\n", "append", "-db", db, "-writer", "bob")
	if r.code != 0 || !strings.Contains(r.stdout, `appended 3 entries to writer "bob"`) || !strings.Contains(r.stdout, "seq 2 to 4") {
		t.Errorf("append of standard input through serve: %+v", r)
	}
	if msg := mustFail(t, dir, "", "log", "-follow", "-peer", addr, "-db", db); !strings.Contains(msg, "-peer: the database is being served by process") {
		t.Errorf("log -follow -peer through serve: %q", msg)
	}
	srv.interrupt()
	if got := entries(t, dir, db); len(got) != 8 {
		t.Errorf("after the serve: %v", got)
	}
}

// log -follow through the serve prints what another process appends.
func TestFollowThroughServeShowsAnotherProcessAppend(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "first")
	srv, _ := serveSwarm(t, dir, db)
	follow := start(t, dir, "log", "-follow", "-json", "-db", db)
	follow.waitLine(`"value":"first"`)
	mustRun(t, dir, "append", "-db", db, "later")
	follow.waitLine(`"value":"later"`)
	if rest := follow.interrupt(); len(rest) != 0 {
		t.Errorf("follow printed more: %q", rest)
	}

	// A serve that stops ends the follows it runs, with status 0 (see
	// TestFollowSaysTheServeStopped for what it says).
	stays := start(t, dir, "log", "-follow", "-db", db)
	stays.waitLine("later")
	srv.interrupt()
	for range stays.lines {
	}
	if err := stays.cmd.Wait(); err != nil {
		t.Errorf("a follow through a serve that stopped: %v", err)
	}
}

// The control socket is the user's alone from the moment it exists, and
// serve removes it when it stops on SIGTERM.
func TestControlSocketIsPrivateAndRemovedOnExit(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	srv, _ := serveSwarm(t, dir, db)
	sock := filepath.Join(db, controlName)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: mode %v, want a socket with 0600", fi.Mode())
	}
	entries, _ := os.ReadDir(db)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".control-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	rest := srv.stop(syscall.SIGTERM)
	if len(rest) == 0 || rest[len(rest)-1] != "stopped" {
		t.Errorf("serve after SIGTERM: %q", rest)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the control socket is still there after serve stopped: %v", err)
	}
}

// A socket left by a serve killed with SIGKILL confuses nobody: the
// commands open the database themselves, the next serve replaces it, and
// with the database locked by another process it means "locked".
func TestStaleSocketAfterKillConfusesNobody(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "one")
	srv, _ := serveSwarm(t, dir, db)
	srv.kill()
	sock := filepath.Join(db, controlName)
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("after kill -9 the socket should still be there: %v", err)
	}
	mustRun(t, dir, "append", "-db", db, "two")
	if out := mustRun(t, dir, "status", "-db", db); out != "not serving\n" {
		t.Errorf("status with a stale socket: %q", out)
	}

	// Locked by another process, the socket answering nobody.
	core, err := kappa.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"append", "x"}, {"log"}} {
		msg := mustFail(t, dir, "", append([]string{"-db", db}, args...)...)
		if !strings.Contains(msg, "database is locked") {
			t.Errorf("%v locked, with a stale socket: %q", args, msg)
		}
	}
	core.Close()

	srv, _ = serveSwarm(t, dir, db)
	mustRun(t, dir, "append", "-db", db, "three")
	if out := mustRun(t, dir, "status", "-db", db); !strings.HasPrefix(out, "serving: ") {
		t.Errorf("status after a new serve: %q", out)
	}
	srv.interrupt()
	if got := entries(t, dir, db); len(got) != 3 {
		t.Errorf("entries: %v", got)
	}
}

// One serve per database; and the commands that must not run inside one
// say so.
func TestSecondServeAndOtherCommandsAreRefused(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	srv, _ := serveSwarm(t, dir, db)
	for _, args := range [][]string{{"serve", "-listen", "127.0.0.1:0", "-lan=false"}, {"verify"}, {"sync", "127.0.0.1:1"}} {
		msg := mustFail(t, dir, "", append([]string{"-db", db}, args...)...)
		if !strings.Contains(msg, "is being served by process ") || !strings.Contains(msg, "stop it first") {
			t.Errorf("%v beside a serve: %q", args, msg)
		}
	}
	srv.interrupt()
}

// Two serves of one database, the second dialling the first: an append on
// either appears in "log -follow" on the other, and status says synced.
func TestTwoServesReplicateLive(t *testing.T) {
	dir := t.TempDir()
	dbs := sharedDBs(t, dir, "a", "b")
	a, b := dbs[0], dbs[1]
	srvA, addrA := serveSwarm(t, dir, a)
	srvB, _ := serveSwarm(t, dir, b, "-peer", addrA)
	srvB.waitLine("peer " + addrA + " connected")
	srvA.waitLine(" connected")

	followA := start(t, dir, "log", "-follow", "-json", "-db", a)
	followB := start(t, dir, "log", "-follow", "-json", "-db", b)
	mustRun(t, dir, "append", "-db", a, "-writer", "alice", "from a")
	followB.waitLine(`"value":"from a"`)
	mustRun(t, dir, "append", "-db", b, "-writer", "bob", "from b")
	followA.waitLine(`"value":"from b"`)
	waitStatus(t, dir, b, addrA, "synced", "static")
	waitStatus(t, dir, a, "synced", "inbound")
	followA.interrupt()
	followB.interrupt()
	srvB.interrupt()
	srvA.interrupt()
}

// A serve killed and restarted on the same address: a "log -follow -peer"
// goes on following it, a serve dialling it backs off meanwhile, and both
// get what it holds once it is back.
func TestFollowAndSwarmKeepGoingThroughARestart(t *testing.T) {
	dir := t.TempDir()
	dbs := sharedDBs(t, dir, "a", "b", "c")
	a, b, c := dbs[0], dbs[1], dbs[2]
	mustRun(t, dir, "append", "-db", a, "before")
	srvA, addrA := serveSwarm(t, dir, a)
	srvB, _ := serveSwarm(t, dir, b, "-peer", addrA)
	follow, stderr := startWithStderr(t, dir, "log", "-follow", "-json", "-peer", addrA, "-db", c)
	follow.waitLine(`"value":"before"`)
	waitStatus(t, dir, b, addrA, "synced")

	srvA.kill()
	waitStatus(t, dir, b, addrA, "backing off")
	stderr.waitLine("kappa: peer " + addrA + " gone: ")

	srvA, _ = serveSwarm(t, dir, a, "-listen", addrA)
	stderr.waitLine("kappa: peer " + addrA + " connected")
	mustRun(t, dir, "append", "-db", a, "after")
	follow.waitLine(`"value":"after"`)
	waitStatus(t, dir, b, addrA, "synced")
	follow.interrupt()
	srvB.interrupt()
	srvA.interrupt()
	if got := entries(t, dir, b); len(got) != 2 {
		t.Errorf("b after the restart: %v", got)
	}
}

// A "log -follow -peer" whose peer refuses it (another shared key) says
// so on standard error, rather than waiting in silence.
func TestFollowSaysItsPeerRefusedIt(t *testing.T) {
	dir := t.TempDir()
	a := newDB(t, dir, "a")
	b := newDB(t, dir, "b") // a key of its own
	srvA, addrA := serveSwarm(t, dir, a)
	follow, stderr := startWithStderr(t, dir, "log", "-follow", "-peer", addrA, "-db", b)
	line := stderr.waitLine("kappa: peer " + addrA + ": ")
	if !strings.Contains(line, "shared key") || !strings.Contains(line, "dialling it again") {
		t.Errorf("the line about the refusal: %q", line)
	}
	follow.interrupt()
	srvA.interrupt()
}

// serve -listen "" listens nowhere and only dials: its first line and its
// status say so, rather than "listening on" an address it does not have.
func TestServeThatOnlyDials(t *testing.T) {
	dir := t.TempDir()
	dbs := sharedDBs(t, dir, "a", "b")
	a, b := dbs[0], dbs[1]
	srvA, addrA := serveSwarm(t, dir, a)
	srvB := start(t, dir, "serve", "-db", b, "-lan=false", "-listen", "", "-peer", addrA)
	if line := srvB.waitLine(""); line != `not listening (-listen ""): dialling only` {
		t.Errorf("first line: %q", line)
	}
	srvB.waitLine("peer " + addrA + " connected")
	if out := mustRun(t, dir, "status", "-db", b); !strings.Contains(out, "serving: process ") || !strings.Contains(out, ", not listening\n") {
		t.Errorf("status of a serve that only dials:\n%s", out)
	}
	srvB.interrupt()
	srvA.interrupt()
}

// status tells a control socket that does not take its command (as a
// serve run by another user does: it closes the connection unanswered)
// from no serve at all (no socket, or one a dead serve left behind).
func TestStatusTellsARefusingSocketFromNoServe(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the control socket is a unix socket")
	}
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	l, err := net.Listen("unix", filepath.Join(db, "control"))
	if err != nil {
		t.Skip("no unix socket here:", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	r := kappaRun(t, dir, "", "status", "-db", db)
	if r.code != 1 || !strings.Contains(r.stderr, "control socket is there but did not answer") || strings.Contains(r.stdout, "not serving") {
		t.Errorf("status against a socket that refuses it: %+v", r)
	}
	l.Close() // the socket file stays, as after a serve that died
	if out := mustRun(t, dir, "status", "-db", db); out != "not serving\n" {
		t.Errorf("status against a dead serve's socket: %q", out)
	}
}

// lineReader is a stream read line by line.
type lineReader struct {
	t     *testing.T
	lines chan string
	p     *process
}

func (r *lineReader) waitLine(want string) string {
	r.t.Helper()
	for {
		select {
		case line, ok := <-r.lines:
			if !ok {
				r.t.Fatalf("%s: standard error ended before %q", r.p.cmd.Args, want)
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-r.p.ctx.Done():
			r.t.Fatalf("%s: still waiting for %q on standard error", r.p.cmd.Args, want)
		}
	}
}

// startWithStderr is start, with standard error read line by line too.
func startWithStderr(t *testing.T, dir string, args ...string) (*process, *lineReader) {
	t.Helper()
	ctx := ctxT(t)
	cmd := kappaCmd(t, ctx, dir, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, lines: make(chan string, 1000), ctx: ctx}
	r := &lineReader{t: t, lines: make(chan string, 1000), p: p}
	scan := func(from io.Reader, to chan string) {
		defer close(to)
		sc := bufio.NewScanner(from)
		for sc.Scan() {
			to <- sc.Text()
		}
	}
	go scan(stdout, p.lines)
	go scan(stderr, r.lines)
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return p, r
}

// A database deeper than a socket address holds: on Linux, serve binds its
// control socket, and the commands reach it, through /proc/self/fd, so
// the path's length does not matter; elsewhere serve refuses, with a
// message that says why.
func TestServeADatabaseWithALongPath(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the control socket is a unix socket")
	}
	dir := t.TempDir()
	long, err := filepath.Abs(filepath.Join(dir, strings.Repeat("d", maxSocketPath)))
	if err != nil {
		t.Fatal(err)
	}
	db := newDB(t, dir, filepath.Base(long))
	if runtime.GOOS != "linux" {
		msg := mustFail(t, dir, "", "serve", "-db", db, "-lan=false", "-listen", "127.0.0.1:0")
		if !strings.Contains(msg, "the control socket's path ") || !strings.Contains(msg, "past the 103 a unix socket address holds") {
			t.Errorf("serve with a long path: %q", msg)
		}
		return
	}
	srv, _ := serveSwarm(t, dir, long)
	// From another directory, by the absolute path: the commands run
	// inside the serve.
	other := t.TempDir()
	if out := mustRun(t, other, "status", "-db", long); !strings.HasPrefix(out, "serving: process ") {
		t.Errorf("status through the serve: %q", out)
	}
	mustRun(t, other, "append", "-db", long, "-writer", "w", "x")
	if got := entries(t, other, long); len(got) != 1 {
		t.Errorf("entries through the serve: %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(long, controlName)); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v, %v", fi, err)
	}
	rest := srv.stop(syscall.SIGTERM)
	if len(rest) == 0 || rest[len(rest)-1] != "stopped" {
		t.Errorf("serve after SIGTERM: %q", rest)
	}
	if _, err := os.Lstat(filepath.Join(long, controlName)); !os.IsNotExist(err) {
		t.Errorf("the control socket is still there after serve stopped: %v", err)
	}
}

// The frame decoder takes any bytes without panicking, and a frame it
// accepts is one the writer writes.
func FuzzControlFrame(f *testing.F) {
	var b bytes.Buffer
	fw := &frameWriter{w: &b}
	fw.write(frameRequest, []byte(`["append","-writer","w","x"]`))
	f.Add(b.Bytes())
	f.Add([]byte{'x', 0, 0, 0, 1, 0})
	f.Add([]byte{'r', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, payload, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		var again bytes.Buffer
		(&frameWriter{w: &again}).write(typ, payload)
		if !bytes.Equal(again.Bytes(), data[:5+len(payload)]) {
			t.Fatalf("frame %q re-encodes as %q", data[:5+len(payload)], again.Bytes())
		}
		if typ == frameRequest {
			if args, err := decodeRequest(payload); err == nil && len(args) == 0 {
				t.Fatal("a request without a command was accepted")
			}
		}
	})
}

// The first line serve prints says where it listens, even when LAN
// discovery has something to say first.
func TestServeFirstLineIsTheAddress(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	p := start(t, dir, "serve", "-db", db, "-listen", "127.0.0.1:0")
	select {
	case line := <-p.lines:
		if !strings.HasPrefix(line, "listening on 127.0.0.1:") {
			t.Errorf("serve's first line: %q", line)
		}
	case <-p.ctx.Done():
		t.Fatal("serve printed nothing")
	}
	p.interrupt()
}
