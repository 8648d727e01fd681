package kappa

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fileView records every sequence number it maps, in files, so a test can
// count deliveries across crashes. In atomic mode Map only buffers, and
// StoreState writes the records and the state in one atomic file
// replacement: exactly-once. Otherwise Map appends the records to a log at
// once and StoreState writes the state on its own: at-least-once.
type fileView struct {
	dir     string
	atomic  bool
	seen    []uint64 // atomic mode: everything durable plus the batch in flight
	pending int
}

func (v *fileView) Map(es []Entry) error {
	if v.atomic {
		for _, e := range es {
			v.seen = append(v.seen, e.Seq)
		}
		return nil
	}
	f, err := os.OpenFile(filepath.Join(v.dir, "log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	var buf []byte
	for _, e := range es {
		buf = binary.BigEndian.AppendUint64(buf, e.Seq)
	}
	if _, err := f.Write(buf); err != nil {
		return err
	}
	return f.Sync()
}

func (v *fileView) FetchState() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(v.dir, "state"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil || len(b) < 4 {
		return nil, err
	}
	n := binary.BigEndian.Uint32(b)
	state, rest := b[4:4+n], b[4+n:]
	v.seen = v.seen[:0]
	for ; len(rest) >= 8; rest = rest[8:] {
		v.seen = append(v.seen, binary.BigEndian.Uint64(rest))
	}
	return state, nil
}

func (v *fileView) StoreState(state []byte) error {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(state)))
	b = append(b, state...)
	if v.atomic {
		for _, s := range v.seen {
			b = binary.BigEndian.AppendUint64(b, s)
		}
	}
	return writeFileAtomic(filepath.Join(v.dir, "state"), b)
}

func writeFileAtomic(name string, b []byte) error {
	tmp := name + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// countDeliveries reads what a fileView recorded.
func countDeliveries(t *testing.T, dir string, atomic bool) map[uint64]int {
	t.Helper()
	counts := map[uint64]int{}
	var b []byte
	if atomic {
		v := &fileView{dir: dir, atomic: true}
		if _, err := v.FetchState(); err != nil {
			t.Fatal(err)
		}
		for _, s := range v.seen {
			counts[s]++
		}
		return counts
	}
	b, err := os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	for ; len(b) >= 8; b = b[8:] {
		counts[binary.BigEndian.Uint64(b)]++
	}
	return counts
}

func TestKilledIndexerDeliversAtLeastOnceAndExactlyOnceWithAtomicState(t *testing.T) {
	const entries = 1500
	for _, atomic := range []bool{false, true} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			dir := t.TempDir()
			c, err := Open(filepath.Join(dir, "db"), &Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			w, _ := c.Writer("w")
			vals := make([][]byte, entries)
			for i := range vals {
				vals[i] = []byte(fmt.Sprint(i))
			}
			w.Append(vals...)
			c.Close()

			seed := time.Now().UnixNano()
			rng := rand.New(rand.NewPCG(uint64(seed), 9))
			kills := 0
			for run := 0; ; run++ {
				if run > 500 {
					t.Fatalf("seed %d: indexing never finished", seed)
				}
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				mode := "log"
				if atomic {
					mode = "atomic"
				}
				cmd.Env = append(os.Environ(), "KAPPA_INDEX_CRASH="+mode+":"+dir)
				out, _ := cmd.StdoutPipe()
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan bool, 1)
				go func() {
					sc := bufio.NewScanner(out)
					ok := false
					for sc.Scan() {
						if sc.Text() == "done" {
							ok = true
						}
					}
					done <- ok
				}()
				var finished bool
				select {
				case finished = <-done:
				case <-time.After(time.Duration(5+rng.IntN(60)) * time.Millisecond):
					cmd.Process.Signal(syscall.SIGKILL)
					kills++
					finished = <-done
				}
				cmd.Wait()
				if finished {
					break
				}
			}
			counts := countDeliveries(t, dir, atomic)
			dups := 0
			for i := range uint64(entries) {
				switch n := counts[i]; {
				case n == 0:
					t.Fatalf("seed %d: entry %d never delivered", seed, i)
				case n > 1 && atomic:
					t.Fatalf("seed %d: entry %d delivered %d times with atomic state", seed, i, n)
				case n > 1:
					dups += n - 1
				}
			}
			t.Logf("%d kills; %d entries delivered again", kills, dups)
			if kills == 0 {
				t.Fatal("the indexer finished before any kill: the test crashed nothing")
			}
		})
	}
}

// runIndexCrashChild is the child side of the test above; TestMain calls
// it when KAPPA_INDEX_CRASH is set.
func runIndexCrashChild(spec string) {
	mode, dir, _ := bytes.Cut([]byte(spec), []byte(":"))
	c, err := Open(filepath.Join(string(dir), "db"), nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	v := &fileView{dir: string(dir), atomic: string(mode) == "atomic"}
	if _, err := c.Use("v", 1, &statefulBatcher{fileView: v, max: 7}); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	if err := c.Ready(context.Background()); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	c.Close()
	fmt.Println("done")
	os.Exit(0)
}

type statefulBatcher struct {
	*fileView
	max int
}

func (b *statefulBatcher) MaxBatch() int { return b.max }
