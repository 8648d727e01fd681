package main

import (
	"cmp"
	"container/heap"
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

// post is an entry as the view keeps it: a message, with where it came
// from and what it follows, or (msg false) any other entry of a feed, kept
// because causal order passes through it.
type post struct {
	message
	msg  bool   // a message; false: another entry, never shown
	feed string // the writer's public key
	seq  uint64
	deps []at // Entry.Deps: the entries of other feeds it follows
}

// at names an entry: a feed's key and a sequence number.
type at struct {
	feed string
	seq  uint64
}

// format is how the chat shows a post: "[15:04:05] bob: hi", in local time.
func (p post) format() string {
	return fmt.Sprintf("[%s] %s: %s", p.Time.Local().Format("15:04:05"), p.Author, p.Text)
}

// chatView collects the messages of every feed. Until goLive it only
// collects; goLive shows what it holds, in history order, and from then
// on Map shows each new message as it is indexed.
//
// The view is causal (see Causal): the database gives it an entry only
// after every entry that entry's writer had seen when writing it, so an
// answer never reaches it, and is never shown, before its question.
type chatView struct {
	mu    sync.Mutex
	posts []post     // every entry, in the order Map got them
	show  func(post) // nil until goLive
}

// Causal asks the database for causal delivery (kappa.CausalViewer).
func (v *chatView) Causal() bool { return true }

// Map keeps every entry, and shows each message once the view is live;
// entries that are not messages are never shown.
func (v *chatView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var m message
		isMsg := e.Decode(&m) == nil && m.Author != ""
		p := post{message: m, msg: isMsg, feed: string(e.Key), seq: e.Seq}
		if !isMsg {
			p.message = message{}
		}
		for _, d := range e.Deps {
			p.deps = append(p.deps, at{feed: string(d.Feed), seq: d.Seq})
		}
		v.posts = append(v.posts, p)
		if isMsg && v.show != nil {
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

// history returns the messages of posts in causal order: no message
// before one its writer had seen when writing it (its own earlier ones,
// and those of others its entry follows, directly or through other
// entries). Messages that are concurrent (neither writer had seen the
// other's) are ordered by time stamp, then writer and sequence number.
// The order depends only on which entries posts holds, not on the order
// they came in, so every copy that holds the same entries shows the same
// history; and a clock that is wrong cannot put an answer before its
// question.
//
// It is a topological sort of the entries (Kahn's): an entry is ready
// once its predecessor in its feed and every entry of its Deps that posts
// holds were taken; of the ready ones, the earliest by (time stamp,
// writer, seq) goes next. Entries that are not messages have no time
// stamp: they go as soon as they are ready, and are not returned.
func history(posts []post) []post {
	index := make(map[at]int, len(posts))
	for i, p := range posts {
		index[at{p.feed, p.seq}] = i
	}
	need := make([]int, len(posts))         // entries i still waits for
	dependents := make([][]int, len(posts)) // entries whose Deps name i
	for i, p := range posts {
		if p.seq > 0 {
			if _, ok := index[at{p.feed, p.seq - 1}]; ok {
				need[i]++
			}
		}
		for _, d := range p.deps {
			if j, ok := index[d]; ok {
				need[i]++
				dependents[j] = append(dependents[j], i)
			}
		}
	}
	ready := &byStamp{posts: posts}
	for i := range posts {
		if need[i] == 0 {
			ready.items = append(ready.items, i)
		}
	}
	heap.Init(ready)
	taken := make([]bool, len(posts))
	var out []post
	release := func(j int) {
		if need[j]--; need[j] == 0 {
			heap.Push(ready, j)
		}
	}
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		taken[i] = true
		p := posts[i]
		if p.msg {
			out = append(out, p)
		}
		if j, ok := index[at{p.feed, p.seq + 1}]; ok {
			release(j)
		}
		for _, j := range dependents[i] {
			release(j)
		}
	}
	// Entries in a cycle never get ready; a causal view is never given
	// any, but if posts holds some, they come last, in stamp order.
	var rest []post
	for i, p := range posts {
		if !taken[i] && p.msg {
			rest = append(rest, p)
		}
	}
	slices.SortFunc(rest, compareStamps)
	return append(out, rest...)
}

// compareStamps orders posts by time stamp, then writer, then seq.
func compareStamps(a, b post) int {
	return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.feed, b.feed), cmp.Compare(a.seq, b.seq))
}

// byStamp is a heap of indexes into posts, the earliest by compareStamps
// on top.
type byStamp struct {
	posts []post
	items []int
}

func (h *byStamp) Len() int { return len(h.items) }
func (h *byStamp) Less(i, j int) bool {
	return compareStamps(h.posts[h.items[i]], h.posts[h.items[j]]) < 0
}
func (h *byStamp) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *byStamp) Push(x any)    { h.items = append(h.items, x.(int)) }
func (h *byStamp) Pop() any {
	n := len(h.items) - 1
	x := h.items[n]
	h.items = h.items[:n]
	return x
}
