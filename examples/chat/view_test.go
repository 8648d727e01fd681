package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
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

// The history is a causal order: an answer comes after its question even
// when its writer's clock put it earlier, including through entries that
// are not messages; concurrent messages go by time stamp; and the order
// does not depend on the order the entries came in.
func TestHistoryIsCausalWhateverTheClocksSay(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	msg := func(feed string, seq uint64, text string, at time.Duration, deps ...at) post {
		return post{message: message{Time: t0.Add(at), Author: feed, Text: text}, msg: true, feed: feed, seq: seq, deps: deps}
	}
	posts := []post{
		msg("alice", 0, "question", 10*time.Second),
		msg("bob", 0, "answer, from a slow clock", 5*time.Second, at{"alice", 0}),
		msg("carol", 0, "concurrent with both", 7*time.Second),
		msg("dave", 0, "dave first", 20*time.Second),
		// Erin's first entry is no message, but it follows dave's:
		// so does her message after it, however early its stamp.
		{feed: "erin", seq: 0, deps: []at{{"dave", 0}}},
		msg("erin", 1, "erin after dave", time.Second),
	}
	want := []string{"concurrent with both", "question", "answer, from a slow clock", "dave first", "erin after dave"}
	for i := range 20 {
		shuffled := slices.Clone(posts)
		if i > 0 {
			rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		}
		var got []string
		for _, p := range history(shuffled) {
			got = append(got, p.Text)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("history of %v:\n%q\nwant\n%q", shuffled, got, want)
		}
	}
}
