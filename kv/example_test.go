package kv_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"

	kappa "github.com/kappa-db/kappa-go"
	"github.com/kappa-db/kappa-go/kv"
)

// Two writers edit the same key offline; after they sync, both see the fork
// (two versions); a Put by one who saw both resolves it on both replicas.
func Example() {
	dir, err := os.MkdirTemp("", "kappa-kv")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	open := func(name string, shared []byte) (*kappa.Core, *kv.KV, *kappa.Feed) {
		core, err := kappa.Open(filepath.Join(dir, name, "db"), &kappa.Options{SharedKey: shared})
		if err != nil {
			log.Fatal(err)
		}
		s, err := kv.Open(core, "kv", filepath.Join(dir, name, "kv"))
		if err != nil {
			log.Fatal(err)
		}
		w, err := core.Writer(name)
		if err != nil {
			log.Fatal(err)
		}
		return core, s, w
	}
	alice, akv, aw := open("alice", nil)
	defer alice.Close()
	defer akv.Close()
	bob, bkv, bw := open("bob", alice.SharedKey())
	defer bob.Close()
	defer bkv.Close()

	sync := func() {
		a, b := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- bob.Replicate(ctx, b, false, nil) }()
		if err := alice.Replicate(ctx, a, true, nil); err != nil {
			log.Fatal(err)
		}
		if err := <-done; err != nil {
			log.Fatal(err)
		}
		if err := akv.Ready(ctx); err != nil {
			log.Fatal(err)
		}
		if err := bkv.Ready(ctx); err != nil {
			log.Fatal(err)
		}
	}
	show := func(who string, s *kv.KV) {
		vs, err := s.Get("door")
		if err != nil {
			log.Fatal(err)
		}
		var values []string
		for _, v := range vs {
			values = append(values, string(v.Value))
		}
		slices.Sort(values) // versions are sorted by writer key, random here
		fmt.Println(who, values)
	}

	// Offline, each paints the door.
	if err := akv.Put(aw, "door", []byte("red")); err != nil {
		log.Fatal(err)
	}
	if err := bkv.Put(bw, "door", []byte("blue")); err != nil {
		log.Fatal(err)
	}
	sync()
	show("alice", akv)
	show("bob", bkv)

	// Bob has seen both: his Put follows both and replaces them.
	if err := bkv.Put(bw, "door", []byte("purple")); err != nil {
		log.Fatal(err)
	}
	sync()
	show("alice", akv)
	show("bob", bkv)
	// Output:
	// alice [blue red]
	// bob [blue red]
	// alice [purple]
	// bob [purple]
}
