package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// flipNewestSignature flips a byte inside the signature of the newest
// record of a signatures file (records of 80 bytes after a 16-byte header)
// and returns the record's offset.
func flipNewestSignature(t *testing.T, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	n := (len(b) - 16) / 80
	if n == 0 {
		t.Fatalf("%s holds no signature record", name)
	}
	off := 16 + (n-1)*80
	b[off+20] ^= 0x01
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return int64(off)
}

// A flipped bit in a writer's newest signature record costs no entry: the
// writer signs its length again, which verify reports as a repair, and
// every entry is there. A replica's (its only record: it used to drop to
// length 0) lists the damage (verify fails, naming the file and offset)
// until a sync with the writer brings the signature back, after which
// verify passes and both hold the same entries.
func TestVerifyAfterANewestSignatureRecordIsDamaged(t *testing.T) {
	dir := t.TempDir()
	a := newDB(t, dir, "a")
	key := strings.TrimSpace(mustRun(t, dir, "key", "-db", a))
	b := newDB(t, dir, "b", "-key", key)
	mustRun(t, dir, "append", "-db", a, "-writer", "alice", "one", "two")
	mustRun(t, dir, "append", "-db", a, "-writer", "alice", "three", "four", "five")
	srv, addr := serve(t, dir, a)
	mustRun(t, dir, "sync", "-db", b, addr)
	srv.interrupt()
	want := entries(t, dir, a)
	if len(want) != 5 || !slices.Equal(entries(t, dir, b), want) {
		t.Fatalf("before the damage: a %v, b %v", want, entries(t, dir, b))
	}

	flipNewestSignature(t, filepath.Join(a, "feeds", "0", "signatures"))
	out := mustRun(t, dir, "verify", "-db", a)
	if !strings.Contains(out, "damage, not a torn write") || !strings.Contains(out, "5 entries") {
		t.Errorf("verify of the writer:\n%s", out)
	}
	if got := entries(t, dir, a); !slices.Equal(got, want) {
		t.Errorf("writer after the damage: %v, want %v", got, want)
	}

	sigs := filepath.Join(b, "feeds", "0", "signatures")
	off := flipNewestSignature(t, sigs)
	r := kappaRun(t, dir, "", "verify", "-db", b)
	if r.code == 0 || !strings.Contains(r.stdout, fmt.Sprintf("%s at offset %d", sigs, off)) {
		t.Errorf("verify of the replica: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	srv, addr = serve(t, dir, a)
	mustRun(t, dir, "sync", "-db", b, addr)
	srv.interrupt()
	mustRun(t, dir, "verify", "-db", b)
	if got := entries(t, dir, b); !slices.Equal(got, want) {
		t.Errorf("replica after the sync: %v, want %v", got, want)
	}
}
