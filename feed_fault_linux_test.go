package kappa

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fileLimitValue is the value of entry seq in TestWriterOverAFileSizeLimit.
func fileLimitValue(seq uint64) []byte {
	return []byte(fmt.Sprintf("%-100d", seq))
}

// TestWriterOverAFileSizeLimit runs a writer into a real write limit of the
// kernel, without root or mounts: a child process limits the size of the
// files it writes (RLIMIT_FSIZE), so a write crossing it lands in part and
// fails (EFBIG), as one that fills the disk does (ENOSPC). The child then
// lifts the limit, appends once more, and the database must open with every
// acknowledged entry and nothing to repair.
func TestWriterOverAFileSizeLimit(t *testing.T) {
	if os.Getenv("KAPPA_FSIZE_CHILD") != "" {
		t.Skip("the child's own run")
	}
	dir := filepath.Join(t.TempDir(), "db")
	cmd := exec.CommandContext(ctxT(t), os.Args[0], "-test.run=^TestFileSizeLimitChild$", "-test.v")
	cmd.Env = childEnv("KAPPA_FSIZE_CHILD=" + dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var acked uint64
	full := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "ack "); ok {
			if acked, err = strconv.ParseUint(rest, 10, 64); err != nil {
				t.Fatalf("child said %q", line)
			}
		}
		if rest, ok := strings.CutPrefix(line, "full "); ok {
			full = true
			if rest != "EFBIG" {
				t.Fatalf("the append over the limit failed with %s, want EFBIG\n%s", rest, out)
			}
		}
		if strings.HasPrefix(line, "skip ") {
			t.Skip(line)
		}
	}
	if !full || !strings.Contains(string(out), "done") {
		t.Fatalf("the child did not reach the limit and finish:\n%s", out)
	}
	t.Logf("%d entries acknowledged around a failed append", acked)
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := c.Repairs(); len(r) > 0 {
		t.Fatalf("opening repaired %v: the failed append was not undone", r)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	if w.Len() != acked {
		t.Fatalf("length %d, %d entries acknowledged", w.Len(), acked)
	}
	vals, err := w.GetBatch(ctxT(t), 0, acked)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		if !bytes.Equal(v, fileLimitValue(uint64(i))) {
			t.Fatalf("entry %d is %q", i, v)
		}
	}
}

// TestFileSizeLimitChild is the child of TestWriterOverAFileSizeLimit: it
// prints "ack N" after each append, "full ERR" when one fails, and "done".
func TestFileSizeLimitChild(t *testing.T) {
	dir := os.Getenv("KAPPA_FSIZE_CHILD")
	if dir == "" {
		t.Skip("run by TestWriterOverAFileSizeLimit")
	}
	signal.Ignore(syscall.SIGXFSZ) // a write over the limit fails instead
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fmt.Println("skip getrlimit:", err)
		return
	}
	const limit = 64 << 10
	if old.Cur < limit {
		fmt.Println("skip file size limit already below", limit)
		return
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: old.Max}); err != nil {
		fmt.Println("skip setrlimit:", err)
		return
	}
	appendN := func(n int) error {
		seq := w.Len()
		vals := make([][]byte, n)
		for i := range vals {
			vals[i] = fileLimitValue(seq + uint64(i))
		}
		if _, err := w.Append(vals...); err != nil {
			return err
		}
		fmt.Printf("ack %d\n", seq+uint64(n))
		return nil
	}
	for {
		err := appendN(10)
		if err == nil {
			continue
		}
		if errors.Is(err, syscall.EFBIG) {
			fmt.Println("full EFBIG")
		} else {
			fmt.Println("full", err)
		}
		break
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if err := appendN(1); err != nil {
		t.Fatalf("append once the limit is lifted: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("done")
}
