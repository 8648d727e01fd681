package kappa

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A JSON database's writer records that it checked its values (the
// newest signature record names the encoding), so views do not check them
// again. Values appended to the same feed by an opening that checked
// nothing (a feed opened alone, Binary) are not covered: a view of the
// database, opened again, still leaves out the one that is not JSON.
func TestValuesAppendedWithoutTheDatabasesCheckAreStillChecked(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, &Options{ValueEncoding: JSON, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	appendStrings(t, w, `{"a":1}`, `[2]`)
	if got := w.checkedBelow(JSON); got != 2 {
		t.Fatalf("checked below %d after two checked appends, want 2", got)
	}
	prefix := w.name
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// The same feed, opened alone: Binary takes any bytes.
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFeed(s, prefix, &FeedOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.checkedBelow(JSON); got != 0 {
		t.Fatalf("a Binary opening takes the JSON check as its own: checked below %d", got)
	}
	appendStrings(t, f, "{not json", `"3"`)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	var log errorLog
	c, err = Open(dir, &Options{NoSync: true, OnError: log.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err = c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	if got := w.checkedBelow(JSON); got != 0 {
		t.Fatalf("reopened after unchecked appends: checked below %d, want 0", got)
	}
	appendStrings(t, w, `4`) // checked, but those before were not
	v := newRecorder()
	c.Use("v", 1, v)
	if err := c.Ready(scaleCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.saw(w, 2); ok || v.count() != 4 {
		t.Fatalf("Map got %v; want every entry but 2", v.seen)
	}
	errs := log.all()
	want := fmt.Sprintf(`view "v": feed %x entry 2`, w.Key()[:4])
	if len(errs) != 1 || !errors.Is(errs[0], ErrInvalidValue) || !strings.Contains(errs[0].Error(), want) {
		t.Fatalf("OnError got %v, want one error containing %q", errs, want)
	}
}

// The flags of the signature records a writer writes are those
// doc/FORMAT.md gives (signatures: bit 1 journaled, bits 8–15 checked,
// bit 16 plain), read from the file as a second implementation would.
func TestSignatureRecordFlagsAsDocumented(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, &Options{ValueEncoding: JSON})
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, c, "w")
	appendStrings(t, w, `1`, `2`) // alone (one call each): no context
	x := mustWriter(t, c, "x")
	appendStrings(t, x, `3`) // names w's entries
	appendStrings(t, w, `4`) // names x's entry
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	const journaled, checkedJSON, plain = 1 << 1, 2 << 8, 1 << 16
	for _, tc := range []struct {
		file  string
		flags []uint32
	}{
		{"feeds/0/signatures", []uint32{journaled | checkedJSON | plain, journaled | checkedJSON | plain, journaled | checkedJSON}},
		{"feeds/1/signatures", []uint32{journaled | checkedJSON}},
	} {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(tc.file)))
		if err != nil {
			t.Fatal(err)
		}
		var got []uint32
		for off := 16; off+80 <= len(b); off += 80 {
			got = append(got, binary.BigEndian.Uint32(b[off+76:]))
		}
		if fmt.Sprintf("%#x", got) != fmt.Sprintf("%#x", tc.flags) {
			t.Errorf("%s: flags %#x, want %#x", tc.file, got, tc.flags)
		}
	}
}
