package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// A replica that receives Bob's answer before Alice's question (it got
// Bob's feed first, from Bob, who holds Alice's too) shows nothing until
// the question comes, then the question and the answer, in that order.
func TestAnAnswerIsNeverShownBeforeItsQuestion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang detector
	defer cancel()
	dir := t.TempDir()
	open := func(name string, key []byte) *kappa.Core {
		t.Helper()
		c, err := kappa.Open(filepath.Join(dir, name), &kappa.Options{ValueEncoding: kappa.JSON, SharedKey: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	say := func(c *kappa.Core, author, text string, stamp time.Time) *kappa.Feed {
		t.Helper()
		w, err := c.Writer(author)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(message{Time: stamp, Author: author, Text: text})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append(b); err != nil {
			t.Fatal(err)
		}
		return w
	}

	alice := open("alice", nil)
	aliceFeed := say(alice, "alice", "what time is it?", t0.Add(time.Minute))
	bob := open("bob", alice.SharedKey())
	replicate(t, ctx, alice, bob, nil)
	// Bob's clock is behind: his answer is stamped before the question.
	bobFeed := say(bob, "bob", "noon", t0)

	carol := open("carol", alice.SharedKey())
	v := &chatView{}
	idx, err := carol.Use("chat", 1, v)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var shown []string
	v.goLive(func(p post) {
		mu.Lock()
		defer mu.Unlock()
		shown = append(shown, p.Author+": "+p.Text)
	})
	shownNow := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(shown)
	}

	// Carol takes only Bob's feed: she holds the answer, not the question.
	replicate(t, ctx, bob, carol, func(key []byte) bool { return bytes.Equal(key, bobFeed.Key()) })
	if f := carol.Feed(bobFeed.Key()); f == nil || f.Len() != 1 || carol.Feed(aliceFeed.Key()) != nil {
		t.Fatal("carol should hold bob's answer and not alice's feed")
	}
	if err := carol.Ready(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if got := shownNow(); len(got) != 0 {
		t.Fatalf("with the question missing, carol shows %q", got)
	}
	waiting := idx.Status().Waiting
	if len(waiting) != 1 || !bytes.Equal(waiting[0].Feed, bobFeed.Key()) || waiting[0].Seq != 0 ||
		!bytes.Equal(waiting[0].On.Feed, aliceFeed.Key()) || waiting[0].On.Seq != 0 {
		t.Fatalf("Status().Waiting = %+v; want bob's entry 0 waiting on alice's entry 0", waiting)
	}

	// Now the question comes: both are shown, question first.
	replicate(t, ctx, bob, carol, nil)
	if err := carol.Ready(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	want := []string{"alice: what time is it?", "bob: noon"}
	if got := shownNow(); !slices.Equal(got, want) {
		t.Fatalf("carol shows %q, want %q", got, want)
	}
	if w := idx.Status().Waiting; len(w) != 0 {
		t.Errorf("Status().Waiting = %+v once all is held", w)
	}
	// And the history, after a restart say, is in the same order,
	// though Bob's stamp is the earlier.
	var hist []string
	v.mu.Lock()
	for _, p := range history(v.posts) {
		hist = append(hist, p.Author+": "+p.Text)
	}
	v.mu.Unlock()
	if !slices.Equal(hist, want) {
		t.Errorf("history %q, want %q", hist, want)
	}
}

// replicate runs one (non-live) replication session between a and b over
// a pipe; b takes only the feeds accept accepts (all if nil).
func replicate(t *testing.T, ctx context.Context, a, b *kappa.Core, accept func([]byte) bool) {
	t.Helper()
	ca, cb := net.Pipe()
	errs := make(chan error, 2)
	go func() { errs <- a.Replicate(ctx, ca, true, nil) }()
	go func() { errs <- b.Replicate(ctx, cb, false, &kappa.ReplicateOptions{Accept: accept}) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
