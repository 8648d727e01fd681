// KV is a key-value view that sees every entry exactly once, across
// restarts and crashes. The log holds commands, {"key": K, "value": V} to
// set a key and {"key": K, "delete": true} to remove it; the view holds
// the current value of each key.
//
// The view keeps its data and the indexer's progress in one file, under
// the database's views/ directory, and replaces that file atomically:
// write a temporary file, fsync it, rename it over the old one, fsync the
// directory. Map only collects a batch's changes in memory; StoreState,
// which the indexer calls after Map with the progress that includes every
// batch mapped so far (with many feeds, after a group of batches), writes
// them together with that progress. A crash leaves the file
// as it was before the batch or after it, never in between, so no entry
// is applied twice and none is lost. After a restart the view loads the
// file and maps nothing again.
//
//	go run ./examples/kv [-dir DIR]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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

func main() {
	dir := flag.String("dir", "", "keep the database in `DIR`")
	flag.Parse()
	path := *dir
	if path == "" {
		tmp, err := os.MkdirTemp("", "kappa-kv-")
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

// command is the value of each entry.
type command struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Delete bool   `json:"delete,omitempty"`
}

// kvFile is the view's file: its data and the progress it includes.
type kvFile struct {
	Progress []byte            `json:"progress"` // the indexer's, opaque here
	Data     map[string]string `json:"data"`
}

// kvView is the key-value view. It implements kappa.View,
// kappa.StateStorer and kappa.IndexClearer.
type kvView struct {
	path string // the view's file

	mu      sync.Mutex
	data    map[string]string  // as the file holds it
	pending map[string]*string // the changes of the batch being indexed; nil deletes
	mapped  int                // entries given to Map since the view started
}

// openKV returns the view kept in dir, creating dir if needed.
func openKV(dir string) (*kvView, error) {
	if err := mkdirDurable(dir); err != nil {
		return nil, err
	}
	return &kvView{
		path:    filepath.Join(dir, "kv.json"),
		data:    map[string]string{},
		pending: map[string]*string{},
	}, nil
}

// Map collects the batch's changes, after those of batches before it.
// Nothing is written here.
func (v *kvView) Map(entries []kappa.Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mapped += len(entries)
	for _, e := range entries {
		var c command
		if err := e.Decode(&c); err != nil || c.Key == "" {
			continue // not a command
		}
		if c.Delete {
			v.pending[c.Key] = nil
		} else {
			v.pending[c.Key] = &c.Value
		}
	}
	return nil
}

// StoreState writes the data, with the collected changes, and the progress
// in one atomic step. If it fails, nothing changed: the indexer stops and
// the batches are not counted as indexed.
func (v *kvView) StoreState(progress []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	data := maps.Clone(v.data)
	for k, val := range v.pending {
		if val == nil {
			delete(data, k)
		} else {
			data[k] = *val
		}
	}
	b, err := json.Marshal(kvFile{Progress: progress, Data: data})
	if err != nil {
		return err
	}
	if err := replaceFile(v.path, b); err != nil {
		return err
	}
	v.data = data
	clear(v.pending)
	return nil
}

// FetchState loads the view's file: the data here, the progress for the
// indexer, which goes on from there. Without a file the indexer starts
// from the first entry.
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
		v.data = map[string]string{}
	}
	clear(v.pending)
	return f.Progress, nil
}

// ClearIndex empties the view; the indexer then calls StoreState with the
// progress reset, which writes the empty view.
func (v *kvView) ClearIndex() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.data = map[string]string{}
	clear(v.pending)
	return nil
}

// Get returns the value of key.
func (v *kvView) Get(key string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	val, ok := v.data[key]
	return val, ok
}

// String lists the keys and values, sorted by key.
func (v *kvView) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var kvs []string
	for _, k := range slices.Sorted(maps.Keys(v.data)) {
		kvs = append(kvs, k+"="+v.data[k])
	}
	if kvs == nil {
		return "(empty)"
	}
	return strings.Join(kvs, " ")
}

// mappedEntries returns how many entries Map was given since the view
// started.
func (v *kvView) mappedEntries() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mapped
}

// replaceFile replaces the file at path with data so that a crash leaves
// the old content or the new, never a mix.
func replaceFile(path string, data []byte) error {
	tmp := path + ".tmp" // a crash's leftover is overwritten
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync() // the content is durable before the name points to it
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
	return syncDir(filepath.Dir(path)) // the rename is durable
}

// mkdirDurable creates dir and its missing parents, and fsyncs the parent
// of each directory it creates, so that a crash cannot lose one.
func mkdirDurable(dir string) error {
	var made []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		made = append(made, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range made {
		if err := syncDir(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs a directory, making its entries durable. Windows cannot
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

// store is the database and the view, as a program has them open.
type store struct {
	core *kappa.Core
	kv   *kvView
}

// open opens the database in dir and installs the view, as a program does
// each time it starts. The view's file goes under the database's views/
// directory, which the database leaves to its views.
func open(dir string) (*store, error) {
	core, err := kappa.Open(dir, &kappa.Options{ValueEncoding: kappa.JSON})
	if err != nil {
		return nil, err
	}
	kv, err := openKV(filepath.Join(core.Dir(), "views", "kv"))
	if err != nil {
		core.Close()
		return nil, err
	}
	if _, err := core.Use("kv", 1, kv); err != nil {
		core.Close()
		return nil, err
	}
	return &store{core: core, kv: kv}, nil
}

// apply appends commands through the local writer "main" and waits until
// the view has indexed them.
func (s *store) apply(ctx context.Context, cmds ...command) error {
	w, err := s.core.Writer("main")
	if err != nil {
		return err
	}
	values := make([][]byte, len(cmds))
	for i, c := range cmds {
		if values[i], err = json.Marshal(c); err != nil {
			return err
		}
	}
	if _, err := w.Append(values...); err != nil {
		return err
	}
	return s.core.Ready(ctx, "kv")
}

func (s *store) report(w io.Writer, when string) {
	fmt.Fprintf(w, "%-16s %s (entries mapped since start: %d)\n", when+":", s.kv, s.kv.mappedEntries())
}

// run runs the program twice over, with the database in dir: the restart
// maps nothing again.
func run(ctx context.Context, dir string, stdout io.Writer) error {
	s, err := open(dir)
	if err != nil {
		return err
	}
	err = s.apply(ctx,
		command{Key: "fruit", Value: "apple"},
		command{Key: "tree", Value: "oak"},
		command{Key: "fruit", Value: "pear"},
		command{Key: "tree", Delete: true},
	)
	if err != nil {
		s.core.Close()
		return err
	}
	s.report(stdout, "first run")
	if err := s.core.Close(); err != nil {
		return err
	}

	// A restart: the view loads its file and goes on from its progress.
	if s, err = open(dir); err != nil {
		return err
	}
	defer s.core.Close()
	if err := s.core.Ready(ctx, "kv"); err != nil {
		return err
	}
	s.report(stdout, "after restart")
	if err := s.apply(ctx, command{Key: "nut", Value: "hazel"}); err != nil {
		return err
	}
	s.report(stdout, "one more")
	if v, ok := s.kv.Get("fruit"); ok {
		fmt.Fprintf(stdout, "fruit is %s\n", v)
	}
	return s.core.Close()
}
