package kv

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// killWriters is how many writers the child of the kill test puts through,
// in turns.
const killWriters = 2

// TestKillChild is the child of TestKilledViewAppliesEveryEntryExactlyOnce:
// it puts in a loop and prints each put's number once it returned.
func TestKillChild(t *testing.T) {
	dir := os.Getenv("KAPPA_KV_KILL_DIR")
	if dir == "" {
		t.Skip("the child of TestKilledViewAppliesEveryEntryExactlyOnce")
	}
	c, err := kappa.Open(filepath.Join(dir, "db"), nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	s, err := Open(c, "kv", filepath.Join(dir, "kv"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var ws []*kappa.Feed
	for i := range killWriters {
		w, err := c.Writer("w" + strconv.Itoa(i))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		ws = append(ws, w)
	}
	for i := 0; ; i++ {
		w := ws[i%len(ws)]
		key := "k" + strconv.Itoa(i%37)
		var err error
		if i%11 == 10 {
			err = s.Delete(w, key)
		} else {
			err = s.Put(w, key, []byte(strconv.Itoa(i)))
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println(i)
	}
}

// logAdds counts, for each entry, the records of the view's file that add
// it.
func logAdds(t *testing.T, dir string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kv", logName))
	if err != nil {
		t.Fatal(err)
	}
	adds := map[string]int{}
	if _, _, err := replay(b, func(o op) {
		if o.kind == opAdd {
			adds[fmt.Sprintf("%x/%d", o.feed, o.seq)]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	return adds
}

func TestKilledViewAppliesEveryEntryExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 18))
	rounds := 6
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "KAPPA_KV_KILL_DIR="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n := 1 + rng.IntN(400)
		sc := bufio.NewScanner(out)
		got := 0
		for got < n && sc.Scan() {
			line := sc.Text()
			if _, err := strconv.Atoi(line); err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child: %s", round, line)
			}
			got++
		}
		if err := cmd.Process.Kill(); err != nil { // SIGKILL
			t.Fatal(err)
		}
		go func() {
			for sc.Scan() {
			}
		}()
		cmd.Wait()
		if got < n {
			t.Fatalf("round %d: the child stopped after %d puts", round, got)
		}

		// Exactly once: no entry was added twice to the file, before or
		// after this open.
		for pos, k := range logAdds(t, dir) {
			if k > 1 {
				t.Fatalf("round %d: entry %s added %d times", round, pos, k)
			}
		}
		c := openDB(t, dir, nil)
		s, err := Open(c, "kv", filepath.Join(dir, "kv"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Ready(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		entries := allEntries(t, c)
		if len(entries) < got {
			t.Fatalf("round %d: %d entries, %d puts acknowledged", round, len(entries), got)
		}
		equalDumps(t, fmt.Sprintf("round %d (%d entries)", round, len(entries)), dump(t, s), model(t, entries))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		for pos, k := range logAdds(t, dir) {
			if k > 1 {
				t.Fatalf("round %d, after reopening: entry %s added %d times", round, pos, k)
			}
		}
		if t.Failed() {
			return
		}
	}
}
