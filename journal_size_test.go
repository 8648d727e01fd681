package kappa

import (
	"os"
	"path/filepath"
	"testing"
)

// A writer that does not append keeps a small journal; one that appends
// gets the full preallocation at its first checkpoint, and its appends
// then leave the journal's size as it is (their fdatasyncs write no
// metadata).
func TestJournalGrowsOnlyForAWriterThatAppends(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	idle, busy := mustWriter(t, c, "idle"), mustWriter(t, c, "busy")
	size := func(f *Feed) int64 {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f.name+fileJournal)))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if s := size(idle); s > journalPreallocOpen {
		t.Fatalf("a new writer's journal: %d bytes, want at most %d", s, journalPreallocOpen)
	}
	for i := range 40 {
		appendStrings(t, busy, "value "+string(rune('a'+i%26)))
	}
	grown := size(busy)
	if grown < journalPrealloc {
		t.Fatalf("after 40 appends the journal holds %d bytes, want the full %d", grown, journalPrealloc)
	}
	for i := range 200 {
		appendStrings(t, busy, "more "+string(rune('a'+i%26)))
	}
	if s := size(busy); s != grown {
		t.Fatalf("appends changed the journal's size from %d to %d", grown, s)
	}
	if s := size(idle); s > journalPreallocOpen {
		t.Fatalf("the idle writer's journal: %d bytes", s)
	}
}
