package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// log skips a damaged entry the way a view does: every other entry is
// printed, the damaged one is named on standard error with its file and
// offset, and the command exits non-zero.
func TestLogSkipsADamagedEntryAndPrintsTheRest(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	var values []string
	for i := range 20 {
		values = append(values, fmt.Sprintf("v%03d", i))
	}
	mustRun(t, dir, append([]string{"append", "-db", db}, values...)...)
	data := filepath.Join(db, "feeds", "0", "data")
	rec := int64(16 + 7*13) // header, then records of 4-byte length ‖ 5-byte block (0x00 ‖ 4-byte value, format 4) ‖ CRC
	flipBit(t, data, rec+5, 0)

	r := kappaRun(t, dir, "", "log", "-db", db)
	if r.code == 0 {
		t.Fatalf("log exited 0 over a damaged entry:\n%s", r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 19 {
		t.Fatalf("log printed %d entries, want the 19 intact ones:\n%s", len(lines), r.stdout)
	}
	for _, l := range lines {
		if strings.Contains(l, "v007") {
			t.Fatalf("log printed the damaged entry: %q", l)
		}
	}
	if !strings.Contains(r.stdout, "v006") || !strings.Contains(r.stdout, "v008") {
		t.Fatalf("log lacks the entries around the damaged one:\n%s", r.stdout)
	}
	checkOneErrorLine(t, "log", r.stderr)
	want := fmt.Sprintf("1 damaged entry skipped, feed %s (writer \"default\") seq 7: %s at offset %d", lines[0][:8], data, rec)
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("log's stderr lacks %q:\n%s", want, r.stderr)
	}
}

// log -follow inside a serve, where a read before it marked an entry
// damaged (a marked entry reads as not held), goes on past that entry:
// it prints the feed's later entries and new appends, and exits 1 on the
// interrupt, as log does over damage. (It stopped at the entry for good.)
func TestFollowGoesPastAMarkedDamagedEntry(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "v000", "v001", "v002", "v003")
	data := filepath.Join(db, "feeds", "0", "data")
	flipBit(t, data, 16+13+5, 0) // entry 1's value (records of 13 bytes)
	srv, _ := serve(t, dir, db)
	if r := kappaRun(t, dir, "", "log", "-db", db); r.code != 1 || strings.Contains(r.stdout, "v001") {
		t.Fatalf("log inside the serve: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	follow := start(t, dir, "log", "-follow", "-db", db)
	follow.waitLine("v003")
	mustRun(t, dir, "append", "-db", db, "v004")
	follow.waitLine("v004")
	if err := follow.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for line := range follow.lines {
		if strings.Contains(line, "v001") {
			t.Fatalf("follow printed the damaged entry: %q", line)
		}
	}
	var ee *exec.ExitError
	if err := follow.cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("follow after SIGINT: %v, want exit status 1 for the skipped entry", err)
	}
	srv.interrupt()
}

// A serve that stops ends the commands running inside it as an interrupt
// would, and says so: log -follow exits 0, with a line on standard error
// naming the serve, so that its user can tell it from their own interrupt.
func TestFollowSaysTheServeStopped(t *testing.T) {
	dir := t.TempDir()
	db := newDB(t, dir, "db")
	mustRun(t, dir, "append", "-db", db, "one")
	srv, _ := serve(t, dir, db)
	follow := start(t, dir, "log", "-follow", "-db", db)
	follow.waitLine("one")
	srv.interrupt()
	for range follow.lines {
	}
	if err := follow.cmd.Wait(); err != nil || !strings.Contains(follow.stderr.String(), "stopped, and ended the command") {
		t.Fatalf("follow after its serve stopped: %v, stderr %q; want exit 0 and a line saying so", err, follow.stderr.String())
	}
}
