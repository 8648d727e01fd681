package main

import (
	"fmt"
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
