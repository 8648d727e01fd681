package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"
)

func TestBothCopiesShowTheMergedConversation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang detector
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, t.TempDir(), &out); err != nil {
		t.Fatal(err)
	}
	// Leave the time stamps out.
	got := regexp.MustCompile(`(?m)^  \d\d:\d\d:\d\d\.\d\d\d  `).ReplaceAllString(out.String(), "  ")
	want := `-- synced
alice's copy:
  alice (me) hi Bob, are you there?
  bob        hi Alice, I'm on the train, no signal
  alice (me) let's sync when you're back
bob's copy:
  alice      hi Bob, are you there?
  bob (me)   hi Alice, I'm on the train, no signal
  alice      let's sync when you're back
-- synced
alice's copy:
  alice (me) hi Bob, are you there?
  bob        hi Alice, I'm on the train, no signal
  alice (me) let's sync when you're back
  bob        will do
bob's copy:
  alice      hi Bob, are you there?
  bob (me)   hi Alice, I'm on the train, no signal
  alice      let's sync when you're back
  bob (me)   will do
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
