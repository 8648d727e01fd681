package kappa

import (
	"errors"
	"fmt"
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
