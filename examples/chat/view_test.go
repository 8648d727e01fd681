package main

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// The view shows the history by time stamp where causal order allows,
// then each new message in the order it arrives, whatever its time stamp.
func TestHistoryByTimeThenLiveInArrivalOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang detector
	defer cancel()
	core, err := kappa.Open(t.TempDir(), &kappa.Options{ValueEncoding: kappa.JSON})
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	alice, err := core.Writer("alice")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := core.Writer("bob")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	say := func(w *kappa.Feed, author, text string, at time.Duration) {
		t.Helper()
		b, err := json.Marshal(message{Time: t0.Add(at), Author: author, Text: text})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	// Each writer had seen the messages before its own (one database),
	// so causal order and time agree.
	say(alice, "alice", "first", time.Second)
	say(bob, "bob", "second", 2*time.Second)
	say(alice, "alice", "third", 3*time.Second)
	if _, err := alice.Append([]byte(`{"not":"a message"}`)); err != nil {
		t.Fatal(err)
	}

	v := &chatView{}
	if _, err := core.Use("chat", 1, v); err != nil {
		t.Fatal(err)
	}
	if err := core.Ready(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var shown []string
	v.goLive(func(p post) {
		mu.Lock()
		defer mu.Unlock()
		shown = append(shown, p.Author+": "+p.Text)
	})
	say(bob, "bob", "late, stamped before all", 0)
	if err := core.Ready(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"alice: first", "bob: second", "alice: third", "bob: late, stamped before all"}
	if !slices.Equal(shown, want) {
		t.Errorf("shown %q, want %q", shown, want)
	}
}

func TestPostFormat(t *testing.T) {
	p := post{message: message{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local), Author: "bob", Text: "hi"}}
	if got, want := p.format(), "[03:04:05] bob: hi"; got != want {
		t.Errorf("format = %q, want %q", got, want)
	}
}
