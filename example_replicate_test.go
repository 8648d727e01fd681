package kappa_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"

	kappa "github.com/kappa-db/kappa-go"
)

// Two databases that share a key replicate over TCP: each ends with both
// writers' feeds, verified entry by entry, and their views catch up.
func ExampleCore_Replicate() {
	dir, err := os.MkdirTemp("", "kappa-replicate")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	alice, err := kappa.Open(filepath.Join(dir, "alice"), &kappa.Options{ValueEncoding: kappa.JSON})
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close()
	// Bob joins Alice's database: same shared key.
	bob, err := kappa.Open(filepath.Join(dir, "bob"), &kappa.Options{ValueEncoding: kappa.JSON, SharedKey: alice.SharedKey()})
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close()

	sums := map[string]*sumView{"alice": {}, "bob": {}}
	for name, core := range map[string]*kappa.Core{"alice": alice, "bob": bob} {
		if _, err := core.Use("sum", 1, sums[name]); err != nil {
			log.Fatal(err)
		}
		w, err := core.Writer("default")
		if err != nil {
			log.Fatal(err)
		}
		if _, err := w.Append([]byte(`1`), []byte(`2`)); err != nil {
			log.Fatal(err)
		}
	}

	// Bob listens, Alice dials; each runs one non-live session.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		done <- bob.Replicate(ctx, conn, false, nil)
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	if err := alice.Replicate(ctx, conn, true, nil); err != nil {
		log.Fatal(err)
	}
	if err := <-done; err != nil {
		log.Fatal(err)
	}

	for _, name := range []string{"alice", "bob"} {
		core := map[string]*kappa.Core{"alice": alice, "bob": bob}[name]
		sum, err := sums[name].Get(ctx, core)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d feeds, sum %d\n", name, len(core.Feeds()), sum)
	}
	// Output:
	// alice: 2 feeds, sum 6
	// bob: 2 feeds, sum 6
}
