package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyDir copies the database directory src to dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// flipBit flips one bit of file at off.
func flipBit(t *testing.T, file string, off int64, bit uint) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 1 << bit
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A sample of the library's bit-flip sweep, through the command: a flip in
// a record's length or value is a problem (exit 1, naming feed, seq, file
// and offset); a flip in its checksum is a stale checksum over an intact
// value (exit 0), reported and, verify being read-only, left as it is.
func TestVerifyAgreesWithReadsOnFlippedRecordBits(t *testing.T) {
	dir := t.TempDir()
	base := newDB(t, dir, "base")
	mustRun(t, dir, "append", "-db", base, "aaaa", "bbbb", "cccc")
	feed := entries(t, dir, base)[0][:8]
	for seq := range 3 {
		rec := int64(16 + seq*13) // header, then 4-byte length ‖ block 0x00 ‖ 4-byte value (format 4) ‖ CRC
		for _, part := range []struct {
			name string
			off  int64
		}{{"length", 2}, {"value", 5}, {"crc", 9}} {
			t.Run(fmt.Sprintf("entry %d %s", seq, part.name), func(t *testing.T) {
				db := filepath.Join(dir, fmt.Sprintf("e%d%s", seq, part.name))
				copyDir(t, base, db)
				data := filepath.Join(db, "feeds", "0", "data")
				flipBit(t, data, rec+part.off, 4)
				r := kappaRun(t, dir, "", "verify", "-db", db)
				if part.name == "crc" {
					if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("entry %d: stale record checksum, not rewritten (read-only)", seq)) ||
						!strings.Contains(r.stdout, "3 entries (15 bytes) re-hashed, 1 signature checked, 1 stale checksum over intact values") {
						t.Fatalf("verify of a stale checksum: exit %d\n%s%s", r.code, r.stdout, r.stderr)
					}
					if out := mustRun(t, dir, "verify", "-db", db); !strings.Contains(out, "1 stale checksum") {
						t.Fatalf("a read-only verify changed the stale checksum:\n%s", out)
					}
					return
				}
				if r.code != 1 {
					t.Fatalf("verify passed a flipped %s:\n%s", part.name, r.stdout)
				}
				checkOneErrorLine(t, "verify", r.stderr)
				want := fmt.Sprintf("damaged: feed %s (writer \"default\") seq %d: %s at offset %d", feed, seq, data, rec)
				if !strings.Contains(r.stdout, want) || strings.Count(r.stdout, "damaged:") != 1 ||
					!strings.Contains(r.stdout, "2 entries (10 bytes) re-hashed, 1 signature checked; 1 problem") {
					t.Fatalf("verify's report lacks %q, or names more:\n%s", want, r.stdout)
				}
			})
		}
	}
}

// Verify checks every tree node and every signature record, not only the
// entries' leaves and the newest signature.
func TestVerifyChecksTreeNodesAndEverySignatureRecord(t *testing.T) {
	dir := t.TempDir()
	base := newDB(t, dir, "base")
	for _, v := range []string{"aaaa", "bbbb", "cccc", "dddd"} {
		mustRun(t, dir, "append", "-db", base, v)
	}
	out := mustRun(t, dir, "verify", "-db", base)
	if !strings.Contains(out, "4 entries (20 bytes) re-hashed, 4 signatures checked") {
		t.Fatalf("verify of a healthy database:\n%s", out)
	}
	for _, tc := range []struct {
		name, file string
		off        int64
	}{
		// Node 1, the parent of entries 0 and 1: 16-byte header, 56 bytes a node.
		{"parent node", "tree", 16 + 56 + 3},
		// The first of four signature records (80 bytes each).
		{"older signature record", "signatures", 16 + 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			copyDir(t, base, db)
			file := filepath.Join(db, "feeds", "0", tc.file)
			flipBit(t, file, tc.off, 2)
			r := kappaRun(t, dir, "", "verify", "-db", db)
			if r.code != 1 || !strings.Contains(r.stdout, "damaged: ") || !strings.Contains(r.stdout, file+" at offset ") {
				t.Fatalf("verify of a damaged %s: exit %d\n%s%s", tc.name, r.code, r.stdout, r.stderr)
			}
		})
	}
}
