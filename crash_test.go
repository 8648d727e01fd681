package kappa

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// crashValue is the value a crash test writes at seq, so a checker can
// recompute it.
func crashValue(seq uint64) []byte {
	return []byte(fmt.Sprintf("entry-%d-%s", seq, strings.Repeat(string(rune('a'+seq%26)), int(seq%97))))
}

// TestMain lets the test binary double as the writer process that the crash
// test kills.
func TestMain(m *testing.M) {
	if dir := os.Getenv("KAPPA_CRASH_WRITER"); dir != "" {
		crashWriter(dir)
		return
	}
	if spec := os.Getenv("KAPPA_INDEX_CRASH"); spec != "" {
		runIndexCrashChild(spec)
		return
	}
	code := m.Run()
	removeBenchFixtures()
	os.Exit(code)
}

// childEnv is the environment of a child process of the test binary: ours,
// plus vars. Under the race detector the child does not sleep its second
// at exit.
func childEnv(vars ...string) []string {
	env := append(os.Environ(), vars...)
	return append(env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// crashWriter appends to the feed in dir until killed. It prints "start"
// before it opens the feed and each acknowledged length after.
func crashWriter(dir string) {
	fmt.Println("start")
	s, err := OpenDir(dir, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	f, err := OpenFeed(s, "feed/", nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 1))
	for {
		seq := f.Len()
		vals := make([][]byte, 1+rng.IntN(5))
		for i := range vals {
			vals[i] = crashValue(seq + uint64(i))
		}
		if _, err := f.Append(vals...); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Printf("ack %d\n", seq+uint64(len(vals)))
	}
}

// TestKilledWriterLosesNoAcknowledgedAppend kills a writer process with
// SIGKILL, again and again, and checks after each kill that every
// acknowledged entry is there. Kills follow the writer's progress, never
// the clock: the parent kills it after a random number of acknowledgments
// (sometimes none, so the kill lands in the recovery of the last crash),
// and the kill lands wherever the writer has got to by then.
func TestKilledWriterLosesNoAcknowledgedAppend(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes; skipped with -short")
	}
	const runs = 200
	dir := t.TempDir()
	seed := testSeed() // replay the kill points with -kappa.seed
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 3))
	var acked, writerAcks uint64
	for run := range runs {
		where := fmt.Sprintf("seed %d run %d", seed, run)
		ctx := ctxT(t) // a hang detector only: it kills a writer that stopped
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = childEnv("KAPPA_CRASH_WRITER=" + dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := rng.IntN(21) // acknowledgments; 0: at "start"
		acks, killed := 0, false
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if rest, found := strings.CutPrefix(line, "ack "); found {
				n, err := strconv.ParseUint(rest, 10, 64)
				if err != nil {
					cmd.Process.Kill()
					t.Fatalf("%s: writer said %q", where, line)
				}
				acked = max(acked, n)
				acks++
				writerAcks++
			} else if line != "start" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("%s: writer said %q\n%s", where, line, stderr.Bytes())
			}
			if acks == killAfter && !killed {
				cmd.Process.Kill()
				killed = true
			}
		}
		// Acknowledgments read after the kill were printed before it.
		err = cmd.Wait()
		if ctx.Err() != nil {
			t.Fatalf("%s: writer hung after %d acknowledgments: %v\n%s", where, acks, ctx.Err(), stderr.Bytes())
		}
		if !killed {
			t.Fatalf("%s: writer ended on its own: %v\n%s", where, err, stderr.Bytes())
		}
		acked = checkCrashedFeed(t, dir, acked, where)
	}
	t.Logf("%d kills, %d appends acknowledged by the writer, %d entries found", runs, writerAcks, acked)
}

// checkCrashedFeed reopens the feed in dir and checks it; see
// checkRecoveredFeed.
func checkCrashedFeed(t *testing.T, dir string, acked uint64, where string) uint64 {
	t.Helper()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	defer s.Close()
	return checkRecoveredFeed(t, s, "feed/", acked, where)
}

// checkRecoveredFeed opens the feed after a crash, checks every
// acknowledged entry is there and verifies, and appends one more; it
// returns the new length.
func checkRecoveredFeed(t *testing.T, s Storage, prefix string, acked uint64, where string) uint64 {
	t.Helper()
	f, err := OpenFeed(s, prefix, nil)
	if err != nil {
		t.Fatalf("%s: reopen: %v", where, err)
	}
	defer f.Close()
	n := f.Len()
	if n < acked {
		t.Fatalf("%s: length %d after crash, %d were acknowledged", where, n, acked)
	}
	vals, err := f.GetBatch(context.Background(), 0, n)
	if err != nil {
		t.Fatalf("%s: read back: %v", where, err)
	}
	for i, v := range vals {
		if string(v) != string(crashValue(uint64(i))) {
			t.Fatalf("%s: entry %d is %q", where, i, v)
		}
	}
	if n > 0 {
		length, sig := f.Signature()
		if err := f.Verify(length, sig); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
	if _, err := f.Append(crashValue(n)); err != nil {
		t.Fatalf("%s: append after crash: %v", where, err)
	}
	return n + 1
}

// dyingStorage wraps a MemStorage and "dies" at its n-th write, truncate or
// sync: that operation and every later one fails without effect, as if the
// process had been killed there.
type dyingStorage struct {
	*MemStorage
	mu   sync.Mutex // a large append writes its files at once
	left int
}

var errDied = errors.New("process died")

func (d *dyingStorage) Open(name string, create bool) (File, error) {
	d.mu.Lock()
	dead := d.left <= 0
	d.mu.Unlock()
	if dead && create {
		return nil, errDied
	}
	f, err := d.MemStorage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return &dyingFile{File: f, d: d}, nil
}

func (d *dyingStorage) step() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.left <= 0 {
		return errDied
	}
	d.left--
	return nil
}

type dyingFile struct {
	File
	d *dyingStorage
}

func (f *dyingFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.d.step(); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *dyingFile) Truncate(size int64) error {
	if err := f.d.step(); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

func (f *dyingFile) Sync() error {
	if err := f.d.step(); err != nil {
		return err
	}
	return f.File.Sync()
}

// TestSimulatedCrashesLoseNoAcknowledgedAppend kills a writer at a random
// storage operation, thousands of times, then simulates the power loss
// (unsynced writes dropped, or partly landed and torn) and checks the feed.
func TestSimulatedCrashesLoseNoAcknowledgedAppend(t *testing.T) {
	runs := 5000
	switch {
	case testing.Short():
		runs = 100
	case raceEnabled: // ten times slower, and the simulation is sequential
		runs = 1000
	}
	seed := testSeed() // replay with -kappa.seed
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 5))
	disk := NewMemStorage()
	var acked uint64
	for run := range runs {
		where := fmt.Sprintf("seed %d run %d", seed, run)
		if run%100 == 0 { // a new feed now and then keeps each check short
			disk, acked = NewMemStorage(), 0
		}
		d := &dyingStorage{MemStorage: disk, left: rng.IntN(60)}
		if f, err := OpenFeed(d, "f/", nil); err == nil {
			for {
				seq := f.Len()
				vals := make([][]byte, 1+rng.IntN(4))
				for i := range vals {
					vals[i] = crashValue(seq + uint64(i))
				}
				if _, err := f.Append(vals...); err != nil {
					break
				}
				acked = seq + uint64(len(vals))
			}
			f.Close()
		}
		if rng.IntN(4) == 0 {
			disk = disk.crashClone(nil)
		} else {
			disk = disk.crashClone(rng)
		}
		acked = checkRecoveredFeed(t, disk, "f/", acked, where)
	}
	t.Logf("%d crashes", runs)
}
