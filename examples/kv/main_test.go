package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestARestartMapsNothingAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang detector
	defer cancel()
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run(ctx, dir, &out); err != nil {
		t.Fatal(err)
	}
	want := `first run:       fruit=pear (entries mapped since start: 4)
after restart:   fruit=pear (entries mapped since start: 0)
one more:        fruit=pear nut=hazel (entries mapped since start: 1)
fruit is pear
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	// The data and the progress are in one file, and no temporary file is
	// left.
	b, err := os.ReadFile(filepath.Join(dir, "views", "kv", "kv.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f kvFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Progress) == 0 || len(f.Data) != 2 || f.Data["nut"] != "hazel" {
		t.Errorf("view file: %s", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "views", "kv", "kv.json.tmp")); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
}

// A StoreState that fails changes nothing: the batch stays pending, and
// the view's data and file are as before.
func TestAFailedStoreChangesNothing(t *testing.T) {
	dir := t.TempDir()
	v, err := openKV(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.StoreState([]byte("p1")); err != nil {
		t.Fatal(err)
	}
	val := "v"
	v.pending["k"] = &val
	// A directory where the temporary file goes makes the write fail.
	if err := os.Mkdir(v.path+".tmp", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := v.StoreState([]byte("p2")); err == nil {
		t.Fatal("StoreState succeeded")
	}
	if _, ok := v.Get("k"); ok {
		t.Error("a failed StoreState changed the data")
	}
	state, err := v.FetchState()
	if err != nil || string(state) != "p1" {
		t.Errorf("FetchState = %q, %v; want p1", state, err)
	}
}
