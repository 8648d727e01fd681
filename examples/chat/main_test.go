package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// These tests run the chat as built processes, two at a time, the way
// two people run it in two terminals.

var binDir string // the built chat goes here

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kappa-chat-test-")
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

// chatBin builds the chat (with the race detector if the tests run with
// it) the first time it is called and returns the binary's path.
func chatBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("no go command to build the chat with: %w", err)
			return
		}
		binPath = filepath.Join(binDir, "chat")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// hangAfter is how long a test waits for the chats before it calls them
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

// chatProc is a running chat: its stdin, and its stdout line by line.
type chatProc struct {
	name  string
	ctx   context.Context
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // stdout, closed at its end

	stderr bytes.Buffer // read only after Wait
	seen   []string     // stdout lines read so far
}

// startChat starts the chat with args, for a person called name.
func startChat(t *testing.T, ctx context.Context, name string, args ...string) *chatProc {
	t.Helper()
	p := &chatProc{name: name, ctx: ctx, lines: make(chan string, 100)}
	p.cmd = exec.CommandContext(ctx, chatBin(t), args...)
	// A race-enabled binary otherwise sleeps a second before it exits.
	p.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	p.cmd.WaitDelay = 10 * time.Second // after a kill, for the pipes
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil { // the test failed before it ended
			p.stdin.Close()
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

// next returns the next line of the chat's output; it fails the test if
// the output ends or the test's deadline passes first.
func (p *chatProc) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			t.Fatalf("%s's output ended; it printed:\n%s", p.name, p.transcript())
		}
		p.seen = append(p.seen, line)
		return line
	case <-p.ctx.Done():
		t.Fatalf("%s hung (%v); it printed:\n%s", p.name, p.ctx.Err(), p.transcript())
	}
	return ""
}

// waitFor reads the chat's output up to a line that matches re, and
// returns the line's submatches.
func (p *chatProc) waitFor(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	for {
		if m := rx.FindStringSubmatch(p.next(t)); m != nil {
			return m
		}
	}
}

// waitForAll reads the chat's output until each of res matched a line,
// in any order, and returns each one's submatches.
func (p *chatProc) waitForAll(t *testing.T, res ...string) [][]string {
	t.Helper()
	found := make([][]string, len(res))
	for left := len(res); left > 0; {
		line := p.next(t)
		for i, re := range res {
			if found[i] == nil {
				if m := regexp.MustCompile(re).FindStringSubmatch(line); m != nil {
					found[i] = m
					left--
					break
				}
			}
		}
	}
	return found
}

// say types a line into the chat.
func (p *chatProc) say(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		t.Fatalf("%s's stdin: %v", p.name, err)
	}
}

// quit ends the chat's stdin and waits for it to exit, which must be with
// status 0 and nothing on stderr. It returns the rest of its output.
func (p *chatProc) quit(t *testing.T) []string {
	t.Helper()
	p.stdin.Close()
	var rest []string
	for line := range p.lines {
		p.seen = append(p.seen, line)
		rest = append(rest, line)
	}
	err := p.cmd.Wait()
	if p.ctx.Err() != nil {
		t.Fatalf("%s hung after its stdin ended; it printed:\n%s", p.name, p.transcript())
	}
	if err != nil || p.stderr.Len() > 0 {
		t.Fatalf("%s exited with %v; stderr:\n%sstdout:\n%s", p.name, err, p.stderr.String(), p.transcript())
	}
	t.Logf("%s printed:\n%s", p.name, p.transcript())
	return rest
}

func (p *chatProc) transcript() string {
	return strings.Join(p.seen, "\n") + "\n"
}

// A message line: "[15:04:05] alice: text".
const stamp = `^\[\d\d:\d\d:\d\d\] `

func TestTwoProcessesChatWithStaticPeers(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	aliceDB, bobDB := filepath.Join(dir, "alice"), filepath.Join(dir, "bob")

	alice := startChat(t, ctx, "alice", "-db", aliceDB, "-name", "alice", "-listen", "127.0.0.1:0", "-lan=false")
	addr := alice.waitFor(t, `^\* listening on (127\.0\.0\.1:\d+)$`)[1]
	key := alice.waitFor(t, `^\* shared key: ([0-9a-f]{64})$`)[1]

	bob := startChat(t, ctx, "bob", "-db", bobDB, "-name", "bob", "-key", key, "-peer", addr, "-listen", "127.0.0.1:0", "-lan=false")
	bob.waitFor(t, `^\* .*: joined the chat as bob$`)
	// The swarm may connect before the chat says where it listens.
	bobAddr := bob.waitForAll(t, `^\* listening on (127\.0\.0\.1:\d+)$`,
		`^\* peer [0-9a-f]{8} connected to `+regexp.QuoteMeta(addr)+`$`)[0][1]
	alice.waitFor(t, `^\* peer [0-9a-f]{8} connected from 127\.0\.0\.1:\d+$`)

	// Alice dials Bob too: the swarm keeps one session between them.
	alice.say(t, "/peer "+bobAddr)
	alice.say(t, "/peers")
	alice.waitFor(t, `^\* `+regexp.QuoteMeta(bobAddr)+` \S+ \(static`)

	alice.say(t, "hi Bob")
	alice.waitFor(t, stamp+`alice: hi Bob$`)
	bob.waitFor(t, stamp+`alice: hi Bob$`)
	bob.say(t, "hi Alice")
	bob.waitFor(t, stamp+`bob: hi Alice$`)
	alice.waitFor(t, stamp+`bob: hi Alice$`)

	// Alice leaves, saying goodbye; Bob sees her go.
	alice.quit(t)
	bob.waitFor(t, `^\* peer [0-9a-f]{8} left$`)
	bob.quit(t)

	// Alice comes back: her copy shows the conversation so far, in order.
	back := startChat(t, ctx, "alice again", "-db", aliceDB, "-listen", "127.0.0.1:0", "-lan=false")
	back.waitFor(t, `^\* .*: back in the chat as alice$`)
	back.waitFor(t, stamp+`alice: hi Bob$`)
	if line := back.next(t); !regexp.MustCompile(stamp + `bob: hi Alice$`).MatchString(line) {
		t.Fatalf("after alice's first message, the history shows %q", line)
	}
	back.quit(t)
}

// On the LAN, the two find each other with no -peer; the test skips where
// LAN discovery cannot work.
func TestTwoProcessesChatOnTheLAN(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	lanFails := regexp.MustCompile(`^\* LAN discovery does not work`)

	alice := startChat(t, ctx, "alice", "-db", filepath.Join(dir, "alice"), "-name", "alice")
	var key string
	for key == "" {
		line := alice.next(t)
		if lanFails.MatchString(line) {
			alice.quit(t)
			t.Skip(line)
		}
		if m := regexp.MustCompile(`^\* shared key: ([0-9a-f]{64})$`).FindStringSubmatch(line); m != nil {
			key = m[1]
		}
	}
	bob := startChat(t, ctx, "bob", "-db", filepath.Join(dir, "bob"), "-name", "bob", "-key", key)
	for _, p := range []*chatProc{alice, bob} {
		for {
			line := p.next(t)
			if lanFails.MatchString(line) {
				alice.quit(t)
				bob.quit(t)
				t.Skip(line)
			}
			if strings.HasPrefix(line, "* peer ") && strings.Contains(line, " connected ") {
				break
			}
		}
	}
	alice.say(t, "hi Bob")
	bob.waitFor(t, stamp+`alice: hi Bob$`)
	bob.say(t, "hi Alice")
	alice.waitFor(t, stamp+`bob: hi Alice$`)
	alice.quit(t)
	bob.quit(t)
}

// A new chat needs a name, and a key given must be one: the chat says so
// and creates nothing.
func TestBadFlagsCreateNothing(t *testing.T) {
	for _, args := range [][]string{
		{"-name", "alice", "-key", "abc"},
		{"-key", strings.Repeat("ab", 32)},
		{},
	} {
		dir := filepath.Join(t.TempDir(), "db")
		var stderr bytes.Buffer
		err := run(context.Background(), append([]string{"-db", dir}, args...), strings.NewReader(""), io.Discard, &stderr)
		if err == nil {
			t.Errorf("%q: no error", args)
		}
		if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
			t.Errorf("%q: %v; the database directory was created (%v)", args, err, serr)
		}
	}
}

// A peer node is said connected once, even when a second session replaces
// the first (both sides dialled: the swarm tells the new one's start, then
// the old one's end), and said gone when its last session ends; nothing is
// said once the chat is closing.
func TestAPeerIsSaidConnectedOnceAndGoneOnce(t *testing.T) {
	var out bytes.Buffer
	var closing atomic.Bool
	event := peerEvents(&console{stdout: &out, stderr: &out}, &closing)
	node := strings.Repeat("ab", 16)
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:7000", State: kappa.PeerSyncing})
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:41000", Inbound: true, State: kappa.PeerSyncing})                                  // replaces it
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:7000", State: kappa.PeerBackingOff, Err: errors.New("replaced: another session")}) // the replaced one
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:41000", Inbound: true, State: kappa.PeerBackingOff})
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:7000", State: kappa.PeerSyncing})
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:7000", State: kappa.PeerBackingOff, Err: errors.New("timed out")})
	closing.Store(true)
	event(kappa.PeerStatus{Node: node, Addr: "10.0.0.2:7000", State: kappa.PeerSyncing})
	want := `* peer abababab connected to 10.0.0.2:7000
* peer abababab left
* peer abababab connected to 10.0.0.2:7000
* peer abababab lost: timed out
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%swant:\n%s", got, want)
	}
}
