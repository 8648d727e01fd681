package kappa_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
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

// kvView is a key-value view that comes back after a restart without mapping
// anything again. It keeps its data and the indexer's progress in one file,
// which it replaces atomically: Map only buffers a batch's changes in
// memory, and StoreState, which the indexer calls after Map with the
// progress that includes every batch mapped so far (with many feeds, after
// a group of batches), writes the changes and the progress together. A crash leaves the file before the batch or after it, never in
// between, so each entry counts exactly once. (Data and progress written
// separately would give at-least-once: a crash between the two writes maps
// the batch again.)
type kvView struct {
	path string // the view's file

	mu      sync.Mutex
	data    map[string]int // the view's content, as its file holds it
	pending map[string]int // the changes of the batch being indexed
	mapped  int            // entries given to Map, to show what a restart costs
}

// kvFile is what the view's file holds.
type kvFile struct {
	State []byte // the indexer's progress, opaque to the view
	Data  map[string]int
}

// newKVView returns a view kept in a file in dir, creating dir if needed.
func newKVView(dir string) (*kvView, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Make dir's own entry durable, or a crash could lose it with the file.
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	return &kvView{
		path:    filepath.Join(dir, "kv.json"),
		data:    map[string]int{},
		pending: map[string]int{},
	}, nil
}

// Map buffers the batch's changes, after those of batches before it. Nothing
// is written until StoreState.
func (v *kvView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mapped += len(entries)
	for _, e := range entries {
		var kv struct {
			Key   string `json:"key"`
			Value int    `json:"value"`
		}
		if err := e.Decode(&kv); err != nil {
			continue // not a key-value entry
		}
		v.pending[kv.Key] = kv.Value
	}
	return nil
}

// StoreState writes the view's data, with the buffered changes, and the
// indexer's progress in one atomic step.
func (v *kvView) StoreState(state []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	data := maps.Clone(v.data)
	maps.Copy(data, v.pending)
	b, err := json.Marshal(kvFile{State: state, Data: data})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(v.path, b); err != nil {
		return err // the batch is not stored; the indexer stops here
	}
	v.data = data
	clear(v.pending)
	return nil
}

// FetchState loads the view's file: the data into memory, and the progress
// for the indexer, which goes on from there. Without a file it returns nil,
// and the indexer starts from the first entry.
func (v *kvView) FetchState() ([]byte, error) {
	b, err := os.ReadFile(v.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f kvFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", v.path, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.data = f.Data
	if v.data == nil {
		v.data = map[string]int{}
	}
	clear(v.pending)
	return f.State, nil
}

// ClearIndex empties the view. The indexer calls it when there is no stored
// progress or the view's version changed, then StoreState with the
// progress reset, which writes the empty view.
func (v *kvView) ClearIndex() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.data = map[string]int{}
	clear(v.pending)
	return nil
}

// String lists the view's content, sorted by key.
func (v *kvView) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var pairs []string
	for _, k := range slices.Sorted(maps.Keys(v.data)) {
		pairs = append(pairs, fmt.Sprintf("%s=%d", k, v.data[k]))
	}
	return strings.Join(pairs, " ")
}

// mappedEntries returns how many entries Map was given.
func (v *kvView) mappedEntries() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mapped
}

// writeFileAtomic replaces the file at path with data so that a crash
// leaves the old content or the new, never a mix: write a temporary file,
// fsync it, rename it over path, and fsync the directory, which makes the
// rename durable.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp" // a leftover from a crash is overwritten next time
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory, making the names in it durable. Windows cannot
// fsync a directory; there it does nothing.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// A view that keeps its data in files of its own, next to the database, and
// after a restart goes on from where it stopped: it maps no entry twice.
// See kvView.
func Example_durableView() {
	base, err := os.MkdirTemp("", "kappa-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)
	dbDir := filepath.Join(base, "db")      // the database's; nothing else goes there
	viewDir := filepath.Join(base, "views") // the view's, next to it
	ctx := context.Background()

	// open opens the database and installs the view, as a program does
	// each time it starts.
	open := func() (*kappa.Core, *kvView) {
		core, err := kappa.Open(dbDir, &kappa.Options{ValueEncoding: kappa.JSON})
		if err != nil {
			log.Fatal(err)
		}
		view, err := newKVView(viewDir)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := core.Use("kv", 1, view); err != nil {
			log.Fatal(err)
		}
		return core, view
	}
	// put appends key-value entries through the writer "w" and waits for
	// the view to index them.
	put := func(core *kappa.Core, values ...string) {
		w, err := core.Writer("w")
		if err != nil {
			log.Fatal(err)
		}
		for _, v := range values {
			if _, err := w.Append([]byte(v)); err != nil {
				log.Fatal(err)
			}
		}
		if err := core.Ready(ctx, "kv"); err != nil {
			log.Fatal(err)
		}
	}

	core, view := open()
	put(core, `{"key":"a","value":1}`, `{"key":"b","value":2}`, `{"key":"a","value":3}`)
	fmt.Printf("first run: %v (entries mapped: %d)\n", view, view.mappedEntries())
	if err := core.Close(); err != nil {
		log.Fatal(err)
	}

	// Reopened, the view loads its data and progress from its file.
	core, view = open()
	if err := core.Ready(ctx, "kv"); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("reopened: %v (entries mapped: %d)\n", view, view.mappedEntries())
	put(core, `{"key":"c","value":4}`)
	fmt.Printf("one more: %v (entries mapped: %d)\n", view, view.mappedEntries())
	if err := core.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// first run: a=3 b=2 (entries mapped: 3)
	// reopened: a=3 b=2 (entries mapped: 0)
	// one more: a=3 b=2 c=4 (entries mapped: 1)
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
