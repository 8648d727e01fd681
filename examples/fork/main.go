// Fork shows two writers editing the same key offline, the fork both see
// once they sync, and its resolution.
//
// Alice and Bob each keep a database of the same shared key on their own
// machine (here: two directories), with the key-value view of package kv.
// Alice sets "colour"; they sync and agree. Then, offline, each sets it
// again. After the next sync both see two versions of "colour": neither
// edit had seen the other, so neither replaces the other, and the view
// shows both rather than choosing. Bob, who now holds both, sets it once
// more: his entry follows both versions (the database recorded what he had
// seen), so it replaces both; after a sync both see that one version.
//
//	go run ./examples/fork [-dir DIR]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	kappa "github.com/kappa-db/kappa-go"
	"github.com/kappa-db/kappa-go/kv"
)

func main() {
	dir := flag.String("dir", "", "keep the two databases under `DIR` (default: a temporary directory, removed)")
	flag.Parse()
	path := *dir
	if path == "" {
		tmp, err := os.MkdirTemp("", "kappa-fork-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		path = tmp
	}
	if err := run(context.Background(), path, os.Stdout); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// person is one side: a database, its writer and its key-value view.
type person struct {
	name string
	core *kappa.Core
	w    *kappa.Feed
	kv   *kv.KV
}

// open opens (creating) name's database under dir, of the shared key key
// (nil: a new one), with a writer called name and the view "kv", which
// keeps its file under the database's views/kv.
func open(dir, name string, key []byte) (*person, error) {
	core, err := kappa.Open(filepath.Join(dir, name), &kappa.Options{SharedKey: key})
	if err != nil {
		return nil, err
	}
	w, err := core.Writer(name)
	if err != nil {
		core.Close()
		return nil, err
	}
	s, err := kv.Open(core, "kv", filepath.Join(core.Dir(), "views", "kv"))
	if err != nil {
		core.Close()
		return nil, err
	}
	return &person{name: name, core: core, w: w, kv: s}, nil
}

func (p *person) close() error {
	err := p.kv.Close()
	if cerr := p.core.Close(); err == nil {
		err = cerr
	}
	return err
}

// run is the example: it writes its transcript to out.
func run(ctx context.Context, dir string, out io.Writer) error {
	alice, err := open(dir, "alice", nil)
	if err != nil {
		return err
	}
	defer alice.close()
	bob, err := open(dir, "bob", alice.core.SharedKey())
	if err != nil {
		return err
	}
	defer bob.close()
	names := map[string]string{ // feed key → writer, for the transcript
		string(alice.w.Key()): alice.name,
		string(bob.w.Key()):   bob.name,
	}
	both := []*person{alice, bob}

	// show prints what each side's Get says of key.
	show := func(key string) error {
		for _, p := range both {
			if err := p.kv.Ready(ctx); err != nil {
				return err
			}
			vs, err := p.kv.Get(key)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "  %-5s sees %s\n", p.name, describe(key, vs, names))
		}
		return nil
	}
	put := func(p *person, key, value string) error {
		fmt.Fprintf(out, "%s sets %s=%s\n", p.name, key, value)
		return p.kv.Put(p.w, key, []byte(value))
	}
	syncNow := func() error {
		fmt.Fprintln(out, "sync")
		return replicate(ctx, alice.core, bob.core)
	}

	if err := put(alice, "colour", "blue"); err != nil {
		return err
	}
	if err := syncNow(); err != nil {
		return err
	}
	if err := show("colour"); err != nil {
		return err
	}

	fmt.Fprintln(out, "offline:")
	if err := put(alice, "colour", "green"); err != nil {
		return err
	}
	if err := put(bob, "colour", "red"); err != nil {
		return err
	}
	if err := show("colour"); err != nil {
		return err
	}
	if err := syncNow(); err != nil {
		return err
	}
	if err := show("colour"); err != nil {
		return err
	}

	fmt.Fprintln(out, "bob resolves the fork:")
	if err := put(bob, "colour", "green"); err != nil {
		return err
	}
	if err := syncNow(); err != nil {
		return err
	}
	if err := show("colour"); err != nil {
		return err
	}
	if err := alice.close(); err != nil {
		return err
	}
	return bob.close()
}

// describe says what Get returned: "colour=blue (bob)" for one version,
// "colour has 2 versions: green (alice), red (bob)" for a fork. Get sorts
// versions by feed key and seq; here they are listed by value then
// writer, so the transcript is the same on every run.
func describe(key string, vs []kv.Version, names map[string]string) string {
	var each []string
	for _, v := range vs {
		val := string(v.Value)
		if v.Deleted {
			val = "(deleted)"
		}
		each = append(each, fmt.Sprintf("%s (%s)", val, names[string(v.Pos.Feed)]))
	}
	slices.Sort(each)
	switch len(each) {
	case 0:
		return key + " unset"
	case 1:
		return key + "=" + each[0]
	}
	return fmt.Sprintf("%s has %d versions: %s", key, len(each), strings.Join(each, ", "))
}

// replicate syncs a and b: one replication session over a pipe, each
// side sending what the other lacks.
func replicate(ctx context.Context, a, b *kappa.Core) error {
	ca, cb := net.Pipe()
	errs := make(chan error, 1)
	go func() { errs <- b.Replicate(ctx, cb, false, nil) }()
	err := a.Replicate(ctx, ca, true, nil)
	if berr := <-errs; err == nil {
		err = berr
	}
	return err
}
