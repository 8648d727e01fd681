package kappa

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

// crashWriter appends to the feed in dir until killed, printing each
// acknowledged length.
func crashWriter(dir string) {
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

func TestKilledWriterLosesNoAcknowledgedAppend(t *testing.T) {
	runs := 200
	if testing.Short() {
		runs = 20
	}
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 3))
	var acked uint64
	for run := range runs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "KAPPA_CRASH_WRITER="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let the writer acknowledge something, then kill it at a random
		// moment.
		killAt := time.After(time.Duration(1+rng.IntN(20)) * time.Millisecond)
	read:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					break read
				}
				if rest, found := strings.CutPrefix(line, "ack "); found {
					n, _ := strconv.ParseUint(rest, 10, 64)
					acked = max(acked, n)
					continue
				}
				t.Fatalf("run %d: writer said %q", run, line)
			case <-killAt:
				cmd.Process.Signal(syscall.SIGKILL)
				killAt = nil
			}
		}
		cmd.Wait()
		acked = checkCrashedFeed(t, dir, acked, fmt.Sprintf("seed %d run %d", seed, run))
	}
	t.Logf("%d kills, %d entries acknowledged and found", runs, acked)
	if acked < uint64(runs) {
		t.Fatalf("only %d entries in %d runs: the writer hardly ran", acked, runs)
	}
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
	left int
}

var errDied = fmt.Errorf("process died")

func (d *dyingStorage) Open(name string, create bool) (File, error) {
	if d.left <= 0 && create {
		return nil, errDied
	}
	f, err := d.MemStorage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return &dyingFile{File: f, d: d}, nil
}

func (d *dyingStorage) step() error {
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
	if testing.Short() {
		runs = 500
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
			disk = disk.CrashClone(nil)
		} else {
			disk = disk.CrashClone(rng)
		}
		acked = checkRecoveredFeed(t, disk, "f/", acked, where)
	}
	t.Logf("%d crashes", runs)
}
