package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// values returns the values "kappa log -json" prints for db, sorted.
func values(t *testing.T, dir, db string) []string {
	t.Helper()
	var out []string
	for _, e := range entries(t, dir, db) {
		out = append(out, e[strings.Index(e, "=")+1:])
	}
	slices.Sort(out)
	return out
}

func TestAppendRefusesAFlagAfterAValue(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db", "-encoding", "utf-8")

	for _, args := range [][]string{
		{"v", "-writer", "w"},
		{"v", "--writer=w"},
		{"-writer", "w", "v", "-x"},
		{"-writer", "--", "v", "-x"}, // "--" is the writer's name here
	} {
		r := kappaRun(t, dir, "", append([]string{"append", "-db", db}, args...)...)
		if r.code != 2 {
			t.Fatalf("append %q: exit %d, want 2 (a bad command line); stdout %q", args, r.code, r.stdout)
		}
		checkOneErrorLine(t, "append", r.stderr)
		if !strings.Contains(r.stderr, "looks like a flag") || !strings.Contains(r.stderr, `put "--" before`) {
			t.Errorf("append %q: %q does not say why, and what to do", args, r.stderr)
		}
	}
	if got := values(t, dir, db); len(got) != 0 {
		t.Fatalf("refused appends appended %q", got)
	}
	if out := mustRun(t, dir, "feeds", "-db", db); strings.Count(out, "\n") != 1 {
		t.Fatalf("refused appends created a writer:\n%s", out)
	}

	// After "--", anything is a value: "--" before the values, or among
	// them (the first one only).
	mustRun(t, dir, "append", "-db", db, "-writer", "w", "--", "-a", "b")
	mustRun(t, dir, "append", "-db", db, "c", "--", "-d", "--")
	mustRun(t, dir, "append", "-db", db, "-", "e") // "-" alone is a value
	want := []string{`"-"`, `"--"`, `"-a"`, `"-d"`, `"b"`, `"c"`, `"e"`}
	if got := values(t, dir, db); !slices.Equal(got, want) {
		t.Errorf("values %q, want %q", got, want)
	}
}

func TestDBThatIsAFileIsNotADatabaseDirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-db", file, "log"},
		{"append", "-db", file, "x"},
		{"init", "-db", file},
	} {
		msg := mustFail(t, dir, "", args...)
		if !strings.Contains(msg, file+" is a file, not a database directory") || strings.Contains(msg, "kappa init") {
			t.Errorf("kappa %q: %q", args, msg)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "hello\n" {
		t.Errorf("the file changed: %q, %v", b, err)
	}

	// The database's own file: the message names the directory.
	db := newDB(t, dir, "db")
	msg := mustFail(t, dir, "", "log", "-db", filepath.Join(db, dbFile))
	if !strings.Contains(msg, "not a database directory") || !strings.Contains(msg, "(-db "+db+")") {
		t.Errorf("log -db DB/kappa: %q", msg)
	}
}

// silentPeer listens on a port, accepts connections and never sends a
// byte; it returns the address.
func silentPeer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestSyncTimeoutEndsAWaitForASilentPeer(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	addr := silentPeer(t)
	msg := mustFail(t, dir, "", "sync", "-db", db, "-timeout", "1s", addr)
	if !strings.Contains(msg, "timed out") || !strings.Contains(msg, "1s") {
		t.Errorf("sync -timeout 1s with a silent peer: %q", msg)
	}
	for _, bad := range []string{"0", "-1s"} {
		r := kappaRun(t, dir, "", "sync", "-db", db, "-timeout", bad, addr)
		if r.code != 2 || !strings.Contains(r.stderr, "-timeout") {
			t.Errorf("sync -timeout %s: exit %d, %q", bad, r.code, r.stderr)
		}
	}
	if out := mustRun(t, dir, "sync", "-h"); !strings.Contains(out, "-timeout") {
		t.Errorf("sync -h does not list -timeout:\n%s", out)
	}
}

func TestVersionPrintsModuleFormatAndProtocol(t *testing.T) {
	dir := t.TempDir()
	out := mustRun(t, dir, "version")
	for _, want := range []string{
		"kappa github.com/kappa-db/kappa-go (devel)\n", // built from this tree
		fmt.Sprintf("format version %d\n", kappa.FormatVersion),
		fmt.Sprintf("protocol version %d.%d\n", kappa.ProtocolMajor, kappa.ProtocolMinor),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kappa version lacks %q:\n%s", want, out)
		}
	}
	if kappa.FormatVersion != 4 || kappa.ProtocolMajor != 1 || kappa.ProtocolMinor != 2 {
		t.Errorf("versions %d, %d.%d: update doc/FORMAT.md, doc/PROTOCOL.md and this test",
			kappa.FormatVersion, kappa.ProtocolMajor, kappa.ProtocolMinor)
	}
	if _, err := os.Stat(filepath.Join(dir, defaultDB)); !os.IsNotExist(err) {
		t.Errorf("version created %s", defaultDB)
	}
	mustFail(t, dir, "", "version", "extra")
}
