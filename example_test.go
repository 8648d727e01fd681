package kappa_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"

	kappa "github.com/kappa-db/kappa-go"
)

// sumView tallies the sum of all the numbers in the logs, like the seed's
// README view.
type sumView struct {
	mu  sync.Mutex
	sum int
}

// Map is called with a batch of log entries to be processed by the view.
// No further entries are given to the view until it returns.
func (v *sumView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var n int
		if err := e.Decode(&n); err == nil {
			v.sum += n
		}
	}
	return nil
}

// Get waits for the view to catch up, then returns the sum.
func (v *sumView) Get(ctx context.Context, core *kappa.Core) (int, error) {
	if err := core.Ready(ctx, "sum"); err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sum, nil
}

// The seed's README example: logs on disk in a directory, a view in memory
// that sums the numbers in them.
func Example() {
	dir, err := os.MkdirTemp("", "kappa-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Store logs in a directory. Store views in memory.
	core, err := kappa.Open(dir, &kappa.Options{ValueEncoding: "json"})
	if err != nil {
		log.Fatal(err)
	}
	defer core.Close()

	// Name the view "sum" and consider its logic version 1.
	sum := &sumView{}
	if _, err := core.Use("sum", 1, sum); err != nil {
		log.Fatal(err)
	}

	w, err := core.Writer("default")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := w.Append([]byte(`1`)); err != nil {
		log.Fatal(err)
	}
	value, err := sum.Get(context.Background(), core)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(value)
	// Output: 1
}

// A feed on its own: append, read back, and copy it to a replica through
// proofs that the replica verifies.
func ExampleFeed() {
	writer, err := kappa.OpenFeed(kappa.NewMemStorage(), "feed/", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer writer.Close()
	seq, _ := writer.Append([]byte("hello"), []byte("world"))
	fmt.Println("first seq:", seq, "length:", writer.Len())

	replica, err := kappa.OpenFeed(kappa.NewMemStorage(), "feed/", &kappa.FeedOptions{Key: writer.Key()})
	if err != nil {
		log.Fatal(err)
	}
	defer replica.Close()
	proof, _ := writer.Proof(0, writer.Len(), 0)
	if err := replica.Put(proof); err != nil {
		log.Fatal(err)
	}
	v, _ := replica.Get(context.Background(), 1)
	fmt.Printf("replica has %d entries; entry 1 is %q\n", replica.Len(), v)
	// Output:
	// first seq: 0 length: 2
	// replica has 2 entries; entry 1 is "world"
}
