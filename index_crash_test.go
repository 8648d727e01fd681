package kappa

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fileView records every entry it maps (its feed and sequence number), in
// files, so a test can count deliveries across crashes. In atomic mode Map
// only buffers, and StoreState writes the records and the state in one
// atomic file replacement: exactly-once. Otherwise Map appends the records
// to a log at once and StoreState writes the state on its own:
// at-least-once.
type fileView struct {
	dir    string
	atomic bool
	seen   []delivery // atomic mode: everything durable plus the batches in flight
}

// delivery is an entry a fileView mapped: the first 8 bytes of its feed's
// key, and its sequence number. It is recorded as those 16 bytes.
type delivery struct{ feed, seq uint64 }

func deliveryOf(e Entry) delivery {
	return delivery{feed: binary.BigEndian.Uint64(e.Key), seq: e.Seq}
}

func (d delivery) append(b []byte) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, d.feed), d.seq)
}

func readDeliveries(b []byte) []delivery {
	var out []delivery
	for ; len(b) >= 16; b = b[16:] {
		out = append(out, delivery{feed: binary.BigEndian.Uint64(b), seq: binary.BigEndian.Uint64(b[8:])})
	}
	return out
}

func (v *fileView) Map(es []Entry) error {
	if v.atomic {
		for _, e := range es {
			v.seen = append(v.seen, deliveryOf(e))
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
		buf = deliveryOf(e).append(buf)
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
	v.seen = readDeliveries(rest)
	return state, nil
}

func (v *fileView) StoreState(state []byte) error {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(state)))
	b = append(b, state...)
	if v.atomic {
		for _, d := range v.seen {
			b = d.append(b)
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
func countDeliveries(t *testing.T, dir string, atomic bool) map[delivery]int {
	t.Helper()
	var seen []delivery
	if atomic {
		v := &fileView{dir: dir, atomic: true}
		if _, err := v.FetchState(); err != nil {
			t.Fatal(err)
		}
		seen = v.seen
	} else {
		b, err := os.ReadFile(filepath.Join(dir, "log"))
		if err != nil {
			t.Fatal(err)
		}
		seen = readDeliveries(b)
	}
	counts := map[delivery]int{}
	for _, d := range seen {
		counts[d]++
	}
	return counts
}

// TestKilledIndexerDeliversAtLeastOnceAndExactlyOnceWithAtomicState kills
// an indexing child process again and again, then lets one finish, and
// counts what the view recorded. Kills follow the child's progress, never
// the clock: the child reports each Map and each StoreState and waits for
// the parent's go-ahead, and the parent kills it at an event it picked at
// random (or just after letting it go on, so the kill lands inside the next
// step). The first kill always lands between a Map and its StoreState, so
// the at-least-once view must see that batch again.
func TestKilledIndexerDeliversAtLeastOnceAndExactlyOnceWithAtomicState(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes; skipped with -short")
	}
	testKilledIndexer(t, indexKillLoop{feeds: 1, perFeed: 1500, maxBatch: 7, kills: 10})
}

// TestKilledIndexerOfManyFeedsDeliversAtLeastOnceAndExactlyOnce is the test
// above over 300 feeds of 3 entries: past 128 feeds the indexer maps a
// group of batches (of several feeds) before one StoreState covers them
// all. The first kill lands inside such a group, after its second Map: the
// at-least-once view must see every batch of the group again, the atomic
// one none of them.
func TestKilledIndexerOfManyFeedsDeliversAtLeastOnceAndExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes; skipped with -short")
	}
	testKilledIndexer(t, indexKillLoop{feeds: 300, perFeed: 3, maxBatch: 2, kills: 8, grouped: true})
}

// indexKillLoop is a database for testKilledIndexer to index, and how
// often to kill the indexer.
type indexKillLoop struct {
	feeds, perFeed int // writers w0, w1…, each of perFeed entries
	maxBatch       int
	kills          int
	// grouped makes the first kill land at a Map that follows a Map: in a
	// group of batches whose progress is stored together.
	grouped bool
}

func testKilledIndexer(t *testing.T, l indexKillLoop) {
	batches := l.feeds * ((l.perFeed + l.maxBatch - 1) / l.maxBatch)
	for _, atomic := range []bool{false, true} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			dir := t.TempDir()
			c, err := Open(filepath.Join(dir, "db"), &Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			var want []delivery
			for f := range l.feeds {
				w := mustWriter(t, c, fmt.Sprint("w", f))
				vals := make([][]byte, l.perFeed)
				for i := range vals {
					vals[i] = []byte(fmt.Sprint(i))
					want = append(want, delivery{feed: binary.BigEndian.Uint64(w.Key()), seq: uint64(i)})
				}
				if _, err := w.Append(vals...); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}

			mode := "log"
			if atomic {
				mode = "atomic"
			}
			spec := fmt.Sprintf("%s:%d:%s", mode, l.maxBatch, dir)
			seed := testSeed() // replay the kill points with -kappa.seed
			rng := rand.New(rand.NewPCG(uint64(seed), 9))
			stored, killed, mappedKills, groupedKills := 0, 0, 0, 0
			for run := 0; ; run++ {
				where := fmt.Sprintf("seed %d run %d", seed, run)
				// Plan this run's kill: after a random number of events,
				// spread over what is left to index.
				var plan *indexKill
				if left := batches - stored; killed < l.kills && left > 1 {
					plan = &indexKill{after: 1 + rng.IntN(max(1, 4*left/(l.kills-killed+1)))}
					switch {
					case killed == 0 && l.grouped:
						plan.after, plan.at = 1, "grouped"
					case killed == 0:
						plan.at = "mapped"
					default:
						plan.at = []string{"mapped", "stored", ""}[rng.IntN(3)]
						plan.letGo = rng.IntN(2) == 0
					}
				}
				res := runIndexCrashChildProcess(t, spec, plan, where)
				stored += res.stored
				if res.finished {
					break
				}
				if plan == nil {
					t.Fatalf("%s: the child ended without finishing or being killed", where)
				}
				killed++
				if res.killedAt == "mapped" && !plan.letGo {
					mappedKills++
					if res.inGroup {
						groupedKills++
					}
				}
			}
			counts := countDeliveries(t, dir, atomic)
			dups := 0
			for _, d := range want {
				switch n := counts[d]; {
				case n == 0:
					t.Fatalf("seed %d: entry %d of feed %x never delivered", seed, d.seq, d.feed)
				case n > 1 && atomic:
					t.Fatalf("seed %d: entry %d of feed %x delivered %d times with atomic state", seed, d.seq, d.feed, n)
				case n > 1:
					dups += n - 1
				}
			}
			if len(counts) != len(want) {
				t.Fatalf("seed %d: %d entries delivered, %d written", seed, len(counts), len(want))
			}
			t.Logf("seed %d: %d kills (%d between Map and StoreState, %d inside a group); %d entries delivered again", seed, killed, mappedKills, groupedKills, dups)
			if killed == 0 || mappedKills == 0 || (l.grouped && groupedKills == 0) {
				t.Fatalf("seed %d: %d kills, %d between Map and StoreState, %d inside a group: the test did not crash the indexer where it must", seed, killed, mappedKills, groupedKills)
			}
			if !atomic && dups == 0 {
				t.Fatalf("seed %d: killed between Map and StoreState, yet no entry was delivered again: progress was stored before Map returned", seed)
			}
		})
	}
}

// indexKill is where the parent kills an indexing child: at the first
// event named at (any event if at is "") once after events were reported;
// at "grouped" is a "mapped" that follows a "mapped" (the second or later
// batch of a group whose progress is stored together). With letGo it first
// lets the child go on, so the kill lands somewhere in the step after the
// event.
type indexKill struct {
	after int
	at    string
	letGo bool
}

type indexChildResult struct {
	finished bool   // the child said done
	killedAt string // the event the child was killed at, if killed
	inGroup  bool   // it was a Map that followed a Map
	stored   int    // batches whose progress the child reported stored
}

// runIndexCrashChildProcess runs one indexing child to its end: until it
// finishes, or until the parent kills it as plan says (nil: never). It
// waits on the child's reports only; a child that hangs is caught by the
// test binary's -timeout.
func runIndexCrashChildProcess(t *testing.T, spec string, plan *indexKill, where string) indexChildResult {
	t.Helper()
	ctx := ctxT(t) // a hang detector only: it kills a child that stopped reporting
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = childEnv("KAPPA_INDEX_CRASH=" + spec)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var res indexChildResult
	events, killed, prev, mapped := 0, false, "", 0
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		switch line := sc.Text(); line {
		case "mapped", "stored":
			events++
			if line == "mapped" {
				mapped++
			} else {
				res.stored += mapped
				mapped = 0
			}
			inGroup := line == "mapped" && prev == "mapped"
			prev = line
			if killed {
				continue
			}
			if plan != nil && events >= plan.after && (plan.at == "" || plan.at == line || (plan.at == "grouped" && inGroup)) {
				if plan.letGo {
					io.WriteString(stdin, "go\n")
				}
				cmd.Process.Kill()
				killed, res.killedAt, res.inGroup = true, line, inGroup
				continue
			}
			// A write error means the child died; its output says why.
			io.WriteString(stdin, "go\n")
		case "done":
			res.finished = true
		default:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s: child said %q\n%s", where, line, stderr.Bytes())
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("%s: child hung after %d events: %v\n%s", where, events, ctx.Err(), stderr.Bytes())
	}
	if !res.finished && !killed {
		t.Fatalf("%s: child ended on its own without finishing: %v\n%s", where, err, stderr.Bytes())
	}
	if res.finished {
		res.killedAt = ""
	}
	return res
}

// runIndexCrashChild is the child side of the test above; TestMain calls
// it when KAPPA_INDEX_CRASH is set. It indexes the database with a
// fileView, and after each Map and each StoreState it says so on stdout
// and waits for a line on stdin: the parent either lets it go on or kills
// it there.
func runIndexCrashChild(spec string) {
	mode, rest, _ := strings.Cut(spec, ":")
	maxBatch, dir, _ := strings.Cut(rest, ":")
	max, err := strconv.Atoi(maxBatch)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	in := bufio.NewReader(os.Stdin)
	step := func(event string) {
		fmt.Println(event)
		if line, err := in.ReadString('\n'); err != nil || line != "go\n" {
			os.Exit(3) // the parent is gone
		}
	}
	c, err := Open(filepath.Join(dir, "db"), nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	v := &fileView{dir: dir, atomic: mode == "atomic"}
	if _, err := c.Use("v", 1, &steppedView{fileView: v, max: max, step: step}); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	if err := c.Ready(context.Background()); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	if err := c.Close(); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("done")
	os.Exit(0)
}

// steppedView is a fileView that reports each Map and StoreState that
// succeeded through step.
type steppedView struct {
	*fileView
	max  int
	step func(event string)
}

func (v *steppedView) MaxBatch() int { return v.max }

func (v *steppedView) Map(es []Entry) error {
	if err := v.fileView.Map(es); err != nil {
		return err
	}
	v.step("mapped")
	return nil
}

func (v *steppedView) StoreState(state []byte) error {
	if err := v.fileView.StoreState(state); err != nil {
		return err
	}
	v.step("stored")
	return nil
}
