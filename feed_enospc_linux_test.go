package kappa

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestFullDiskLosesNoAcknowledgedEntry is the reliability issue's first
// defect on a real full disk: a writer appends until a small tmpfs is full,
// a little space is freed and it goes on on the same Core, so that writes
// fail with ENOSPC in each of its files in turn (data, tree, signatures);
// then one more append is acknowledged, and the database must reopen with
// every acknowledged entry. (Before failed writes were undone, the tree
// kept leaves of failed appends past the signed length, and the writer no
// longer loaded: "signature records are missing".) Mounting needs
// privileges: without them the test skips, and TestWriterOverAFileSizeLimit
// covers a real kernel limit instead.
func TestFullDiskLosesNoAcknowledgedEntry(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=512k"); err != nil {
		t.Skipf("no tmpfs of our own (mounting needs privileges): %v", err)
	}
	defer func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	}()
	// Space to free later, a page at a time.
	var fillers []string
	for i := range 60 {
		name := filepath.Join(mnt, fmt.Sprint("filler", i))
		if err := os.WriteFile(name, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, name)
	}
	dir := filepath.Join(mnt, "db")
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	vals := make([][]byte, 10)
	for i := range vals {
		vals[i] = []byte(fmt.Sprintf("value %02d of some length ...", i))
	}
	var acked [][]byte
	failedIn := map[string]int{}
	for len(fillers) > 0 {
		if _, err := w.Append(vals...); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("after %d acknowledged entries: %v", len(acked), err)
			}
			for _, file := range []string{fileData, fileTree, fileSignatures} {
				if strings.Contains(err.Error(), "feeds/0/"+file) {
					failedIn[file]++
				}
			}
			if err := os.Remove(fillers[0]); err != nil {
				t.Fatal(err)
			}
			fillers = fillers[1:]
			continue
		}
		acked = append(acked, vals...)
	}
	if failedIn[fileTree]+failedIn[fileSignatures] == 0 {
		t.Fatalf("no append failed past its data (failed in %v): the test proves nothing", failedIn)
	}
	if _, err := w.Append([]byte("one more")); err != nil {
		t.Fatalf("an append once there is room: %v", err)
	}
	acked = append(acked, []byte("one more"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d := c.Damaged(); len(d) != 0 {
		t.Fatalf("damage after appends that failed for want of space: %v", d)
	}
	if r := c.Repairs(); len(r) != 0 {
		t.Fatalf("repairs after appends that failed for want of space: %v", r)
	}
	w, err = c.Writer("w")
	if err != nil {
		t.Fatalf("the writer after reopening (appends failed in %v): %v", failedIn, err)
	}
	got, err := w.GetBatch(t.Context(), 0, w.Len())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(acked) {
		t.Fatalf("%d entries after reopening, %d acknowledged", len(got), len(acked))
	}
	for i := range got {
		if string(got[i]) != string(acked[i]) {
			t.Fatalf("entry %d is %q, %q was acknowledged", i, got[i], acked[i])
		}
	}
}

// A writer's journal is preallocated in full at its first checkpoint; on
// a disk too full for that, the preallocation is given up and appends
// extend the journal, and the writer does not checkpoint again before
// each append to retry it (five syncs an append): data, synced only by
// checkpoints, is synced once over a hundred appends.
func TestJournalOnAFullDiskIsNotPreallocatedAgainAndAgain(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=192k"); err != nil {
		t.Skipf("no tmpfs of our own (mounting needs privileges): %v", err)
	}
	defer func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	}()
	s, err := OpenDir(filepath.Join(mnt, "db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := mustWriter(t, c, "w")
	tr := traceDir(t, s)
	for i := range 100 {
		appendStrings(t, w, fmt.Sprintf("value %d", i))
	}
	evs := tr.take()
	syncs := 0
	for _, e := range evs {
		if isSync(e) && e.Name == "feeds/0/data" {
			syncs++
		}
	}
	if syncs != 1 {
		t.Fatalf("data synced %d times over 100 appends, want 1 (one checkpoint):\n%s", syncs, formatTrace(evs[:min(len(evs), 60)]))
	}
	if fi, err := os.Stat(filepath.Join(mnt, "db", "feeds", "0", "journal")); err != nil || fi.Size() >= journalPrealloc {
		t.Fatalf("journal: %v, %v; want one smaller than its preallocation, which cannot fit", fi.Size(), err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
