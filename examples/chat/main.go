// Chat is a two-person chat over kappa. Alice and Bob each keep a database
// of their own with one writer in it, and post messages to it while they
// are apart. Now and then the two databases replicate over a TCP
// connection on 127.0.0.1; then each prints the merged conversation from
// its own copy: every message of both writers, ordered by the time stamp
// the message carries.
//
//	go run ./examples/chat [-dir DIR]
//
// The databases go in a temporary directory that is removed at the end, or
// in DIR, which is kept.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

func main() {
	dir := flag.String("dir", "", "keep the databases in `DIR`")
	flag.Parse()
	path := *dir
	if path == "" {
		tmp, err := os.MkdirTemp("", "kappa-chat-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		path = tmp
	}
	if err := run(context.Background(), path, os.Stdout); err != nil {
		log.Print(err)
		os.RemoveAll(path)
		os.Exit(1)
	}
}

// message is the value of every entry: JSON, as the databases' encoding
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

// chatView collects the messages of every feed.
type chatView struct {
	mu    sync.Mutex
	posts []post
}

// Map keeps each entry that is a message; anything else in a feed is
// skipped.
func (v *chatView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var m message
		if err := e.Decode(&m); err != nil || m.Author == "" {
			continue
		}
		v.posts = append(v.posts, post{message: m, feed: string(e.Key), seq: e.Seq})
	}
	return nil
}

// conversation returns the messages in the order they were written: by
// time stamp, then (for equal stamps) by writer and sequence number, so
// that every copy shows the same order.
func (v *chatView) conversation() []post {
	v.mu.Lock()
	defer v.mu.Unlock()
	posts := slices.Clone(v.posts)
	slices.SortFunc(posts, func(a, b post) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.feed, b.feed), cmp.Compare(a.seq, b.seq))
	})
	return posts
}

// member is one person: a database, a writer in it and the chat view.
type member struct {
	name string
	core *kappa.Core
	out  *kappa.Feed
	chat *chatView
}

// join opens name's database under dir. A nil key starts a new chat;
// otherwise the database joins the chat with that shared key.
func join(dir, name string, key []byte) (*member, error) {
	core, err := kappa.Open(filepath.Join(dir, name), &kappa.Options{ValueEncoding: kappa.JSON, SharedKey: key})
	if err != nil {
		return nil, err
	}
	m := &member{name: name, core: core, chat: &chatView{}}
	if _, err := core.Use("chat", 1, m.chat); err != nil {
		core.Close()
		return nil, err
	}
	if m.out, err = core.Writer(name); err != nil {
		core.Close()
		return nil, err
	}
	return m, nil
}

// say posts a message, stamped with the current time.
func (m *member) say(text string) error {
	b, err := json.Marshal(message{Time: time.Now().UTC(), Author: m.name, Text: text})
	if err != nil {
		return err
	}
	_, err = m.out.Append(b)
	return err
}

// print prints the conversation as m's database holds it, once the view
// has indexed every entry. The author is the local writer's name for m's
// own messages (Core.WriterName); a peer's writer names are not
// replicated, so for those it is the name in the message.
func (m *member) print(ctx context.Context, w io.Writer) error {
	if err := m.core.Ready(ctx, "chat"); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s's copy:\n", m.name)
	for _, p := range m.chat.conversation() {
		author := p.Author
		if name, ok := m.core.WriterName([]byte(p.feed)); ok {
			author = name + " (me)"
		}
		fmt.Fprintf(w, "  %s  %-10s %s\n", p.Time.Format("15:04:05.000"), author, p.Text)
	}
	return nil
}

// replicate runs one session between a and b over TCP on 127.0.0.1: b
// listens, a dials. It returns once both hold what the other had.
func replicate(ctx context.Context, a, b *member) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- b.core.Replicate(ctx, conn, false, nil)
	}()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		l.Close()
		<-done
		return err
	}
	errA := a.core.Replicate(ctx, conn, true, nil)
	if errA != nil {
		l.Close() // b may still be waiting for the connection
	}
	errB := <-done
	if errA != nil {
		return fmt.Errorf("%s: %w", a.name, errA)
	}
	if errB != nil {
		return fmt.Errorf("%s: %w", b.name, errB)
	}
	return nil
}

// run plays a short conversation with the databases under dir and prints
// both copies after each sync.
func run(ctx context.Context, dir string, stdout io.Writer) error {
	alice, err := join(dir, "alice", nil)
	if err != nil {
		return err
	}
	defer alice.core.Close()
	bob, err := join(dir, "bob", alice.core.SharedKey())
	if err != nil {
		return err
	}
	defer bob.core.Close()

	// Apart: each writes to their own database.
	script := []struct {
		who  *member
		text string
	}{
		{alice, "hi Bob, are you there?"},
		{bob, "hi Alice, I'm on the train, no signal"},
		{alice, "let's sync when you're back"},
		{bob, "will do"},
	}
	steps := []int{3, 1} // messages before each sync
	for _, n := range steps {
		for _, line := range script[:n] {
			if err := line.who.say(line.text); err != nil {
				return err
			}
		}
		script = script[n:]
		if err := replicate(ctx, alice, bob); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "-- synced")
		for _, m := range []*member{alice, bob} {
			if err := m.print(ctx, stdout); err != nil {
				return err
			}
		}
	}
	if err := alice.core.Close(); err != nil {
		return err
	}
	return bob.core.Close()
}
