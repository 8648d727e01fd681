package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Serve says why each session ended: a live peer that leaves says
// goodbye; one that is killed vanishes, and is not "synced".
func TestServeLogsWhyALiveSessionEnded(t *testing.T) {
	dir := t.TempDir()
	dbs := sharedDBs(t, dir, "a", "b", "c")
	a, b, c := dbs[0], dbs[1], dbs[2]
	mustRun(t, dir, "append", "-db", a, "first")
	srv, addr := serve(t, dir, a)

	left := start(t, dir, "log", "-follow", "-json", "-peer", addr, "-db", b)
	left.waitLine(`"value":"first"`)
	left.interrupt()
	if line := srv.waitLine(" ended: "); !strings.Contains(line, "the peer said goodbye") {
		t.Errorf("a follower that was interrupted: serve says %q", line)
	}

	killed := start(t, dir, "log", "-follow", "-json", "-peer", addr, "-db", c)
	killed.waitLine(`"value":"first"`)
	if err := killed.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed.cmd.Wait()
	line := srv.waitLine(" ended: ")
	if !strings.Contains(line, "connection closed before the session ended") || strings.Contains(line, "synced") {
		t.Errorf("a follower that was killed: serve says %q", line)
	}
	srv.interrupt()
}

// init -key takes exactly 32 bytes as 64 hex digits, and nothing else: a
// key typed in wrong must not become a weak one, or a new random one.
func TestInitRefusesAKeyThatIsNot32BytesOfHex(t *testing.T) {
	dir := t.TempDir()
	good := strings.Repeat("ab", 32)
	for _, key := range []string{"", good[:62], good + "ab", good[:63], "0x" + good[:62], " " + good, good[:60] + "zzzz"} {
		db := filepath.Join(dir, "db")
		msg := mustFail(t, dir, "", "init", "-db", db, "-key", key)
		if !strings.Contains(msg, "64 hex digits") {
			t.Errorf("-key %q: %s", key, msg)
		}
		if _, err := os.Stat(db); !os.IsNotExist(err) {
			t.Errorf("-key %q left %s behind (stat: %v)", key, db, err)
		}
	}
	db := filepath.Join(dir, "db")
	if out := mustRun(t, dir, "init", "-db", db, "-key", good); !strings.Contains(out, "shared key: "+good) {
		t.Errorf("a good key: %s", out)
	}
}

// A sync adds at most -max-new-feeds new feeds, and says how many more the
// peer offered; a second sync adds them.
func TestSyncBoundsNewFeeds(t *testing.T) {
	dir := t.TempDir()
	a, b := threeWritersAndAPeer(t, dir)
	srv, addr := serve(t, dir, a)
	out := mustRun(t, dir, "sync", "-db", b, "-max-new-feeds", "2", addr)
	if !strings.Contains(out, "holds 2 feeds") || !strings.Contains(out, "offered 1 more new feed, not added") {
		t.Errorf("the first sync:\n%s", out)
	}
	out = mustRun(t, dir, "sync", "-db", b, "-max-new-feeds", "2", addr)
	if !strings.Contains(out, "holds 3 feeds") || strings.Contains(out, "not added") {
		t.Errorf("the second sync:\n%s", out)
	}
	if msg := mustFail(t, dir, "", "sync", "-db", b, "-max-new-feeds", "0", addr); !strings.Contains(msg, "-max-new-feeds") {
		t.Errorf("-max-new-feeds 0: %s", msg)
	}
	srv.interrupt()
}

// A serve that takes at most -max-new-feeds new feeds of a peer says, in
// the line that ends the peer's session, how many it did not add.
func TestServeSaysHowManyNewFeedsItDidNotAdd(t *testing.T) {
	dir := t.TempDir()
	a, b := threeWritersAndAPeer(t, dir)
	srv := start(t, dir, "serve", "-db", b, "-listen", "127.0.0.1:0", "-max-new-feeds", "2")
	addr := strings.TrimPrefix(srv.waitLine("listening on "), "listening on ")
	mustRun(t, dir, "sync", "-db", a, addr)
	if line := srv.waitLine(" ended: "); !strings.Contains(line, "1 new feed offered not added, past -max-new-feeds") {
		t.Errorf("serve's line: %s", line)
	}
	srv.interrupt()
}

// threeWritersAndAPeer makes database a, with three writers of one entry,
// and b, empty, sharing a's key.
func threeWritersAndAPeer(t *testing.T, dir string) (a, b string) {
	t.Helper()
	dbs := sharedDBs(t, dir, "a", "b")
	a, b = dbs[0], dbs[1]
	for _, w := range []string{"w1", "w2", "w3"} {
		mustRun(t, dir, "append", "-db", a, "-writer", w, "x")
	}
	return a, b
}
