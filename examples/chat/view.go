package main

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// The chat's view: every message of every writer, and how they are shown.
// What order the chat shows messages in is decided here, and only here.

// message is the value of every entry: JSON, as the database's encoding
// requires.
type message struct {
	Time   time.Time `json:"time"`
	Author string    `json:"author"`
	Text   string    `json:"text"`
}

// post is a message as the view keeps it, with where it came from.
type post struct {
	message
	feed string // the writer's public key
	seq  uint64
}

// format is how the chat shows a post: "[15:04:05] bob: hi", in local time.
func (p post) format() string {
	return fmt.Sprintf("[%s] %s: %s", p.Time.Local().Format("15:04:05"), p.Author, p.Text)
}

// chatView collects the messages of every feed. Until goLive it only
// collects; goLive shows what it holds, in history order, and from then
// on Map shows each new message as it is indexed.
type chatView struct {
	mu    sync.Mutex
	posts []post
	show  func(post) // nil until goLive
}

// Map keeps each entry that is a message, and shows it once the view is
// live; anything else in a feed is skipped.
func (v *chatView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var m message
		if err := e.Decode(&m); err != nil || m.Author == "" {
			continue
		}
		p := post{message: m, feed: string(e.Key), seq: e.Seq}
		v.posts = append(v.posts, p)
		if v.show != nil {
			v.show(p)
		}
	}
	return nil
}

// goLive shows the messages held so far in history order, then makes Map
// show every new one as it arrives, with show. Both happen under the
// view's lock, so no message is shown twice, none is missed, and none
// comes before the history ends.
func (v *chatView) goLive(show func(post)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range history(v.posts) {
		show(p)
	}
	v.show = show
}

// history returns posts in the order they were written: by time stamp,
// then (for equal stamps) by writer and sequence number, so that every
// copy shows the same order.
func history(posts []post) []post {
	posts = slices.Clone(posts)
	slices.SortFunc(posts, func(a, b post) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.feed, b.feed), cmp.Compare(a.seq, b.seq))
	})
	return posts
}
