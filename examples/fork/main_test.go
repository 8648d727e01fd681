package main

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// The example's transcript: one version after the first sync; each side
// its own edit while offline; both versions on both sides after the sync;
// one version on both sides once Bob's resolution is synced.
func TestTwoOfflineEditsForkAndOneResolves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang detector
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, t.TempDir(), &out); err != nil {
		t.Fatalf("%v; transcript:\n%s", err, out.String())
	}
	want := `alice sets colour=blue
sync
  alice sees colour=blue (alice)
  bob   sees colour=blue (alice)
offline:
alice sets colour=green
bob sets colour=red
  alice sees colour=green (alice)
  bob   sees colour=red (bob)
sync
  alice sees colour has 2 versions: green (alice), red (bob)
  bob   sees colour has 2 versions: green (alice), red (bob)
bob resolves the fork:
bob sets colour=green
sync
  alice sees colour=green (bob)
  bob   sees colour=green (bob)
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
