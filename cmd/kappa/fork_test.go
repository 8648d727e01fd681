package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// forkedDB makes, in dir/name, a database whose replica of feed x is
// forked: x's key pair wrote 3 entries in one database and 5 others in
// another, and this one, holding the first history, fetched from the
// second.
func forkedDB(t *testing.T, dir, name string) (db string, key []byte) {
	t.Helper()
	db, key = forkPair(t, dir, name, true)
	return db, key
}

// forkPair makes the three databases of forkedDB: a and b wrote the two
// histories of feed x, and dir/name holds a's. With fetch, it fetched from
// b too, and is forked. It returns dir/name's path and x's key; all three
// are closed.
func forkPair(t *testing.T, dir, name string, fetch bool) (db string, key []byte) {
	t.Helper()
	kp, err := kappa.NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	open := func(path string, shared []byte) *kappa.Core {
		c, err := kappa.Open(path, &kappa.Options{SharedKey: shared})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a := open(filepath.Join(dir, "a"), nil)
	b := open(filepath.Join(dir, "b"), a.SharedKey())
	db = filepath.Join(dir, name)
	c := open(db, a.SharedKey())
	for i, w := range []*kappa.Core{a, b} {
		x, err := w.WriterWithKeyPair("x", kp)
		if err != nil {
			t.Fatal(err)
		}
		for j := range 3 + 2*i {
			if _, err := x.Append([]byte{byte('a' + i), byte('0' + j)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	sync := func(p, q *kappa.Core) {
		t.Helper()
		cp, cq := net.Pipe()
		errs := make(chan error, 1)
		go func() { errs <- q.Replicate(ctxT(t), cq, false, nil) }()
		if err := p.Replicate(ctxT(t), cp, true, nil); err != nil {
			t.Fatal(err)
		}
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	sync(a, c)
	if fetch {
		sync(c, b)
		if f := c.Feed(kp.PublicKey); f == nil || !f.Forked() {
			t.Fatal("the replica is not forked")
		}
	}
	for _, x := range []*kappa.Core{a, b, c} {
		if err := x.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return db, kp.PublicKey
}

// A sync that finds a feed forked says so: the feed is no longer
// exchanged, which the summary's counts alone do not tell.
func TestSyncSaysItFoundAFork(t *testing.T) {
	dir := t.TempDir()
	db, key := forkPair(t, dir, "c", false)
	srv, addr := serveSwarm(t, dir, filepath.Join(dir, "b"))
	defer srv.interrupt()
	r := kappaRun(t, dir, "", "sync", "-db", db, addr)
	if r.code != 0 {
		t.Fatalf("sync: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	want := "feed " + shortKey(key) + " is forked"
	if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "kappa verify") {
		t.Errorf("sync's standard error does not say %q:\n%s", want, r.stderr)
	}
	// A later sync has no such news: the fork was known before it.
	if r := kappaRun(t, dir, "", "sync", "-db", db, addr); r.code != 0 || strings.Contains(r.stderr, want) {
		t.Errorf("a later sync: exit %d, standard error:\n%s", r.code, r.stderr)
	}
}

func TestFeedsAndVerifyReportAFork(t *testing.T) {
	dir := t.TempDir()
	db, key := forkedDB(t, dir, "c")
	r := kappaRun(t, dir, "", "feeds", "-db", db)
	if r.code != 0 {
		t.Fatalf("feeds: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var line string
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, shortKey(key)) {
			line = l
		}
	}
	if !strings.Contains(line, "forked") || strings.Count(r.stdout, "forked") != 1 {
		t.Errorf("feeds does not mark the forked feed alone:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "1 feed(s) are forked") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("feeds' warning:\n%s", r.stderr)
	}

	r = kappaRun(t, dir, "", "verify", "-db", db)
	if r.code == 0 {
		t.Fatalf("verify passed a forked feed:\n%s", r.stdout)
	}
	checkOneErrorLine(t, "verify", r.stderr)
	t.Logf("verify:\n%s%s", r.stdout, r.stderr)
	evidence := filepath.Join(db, "feeds", "0", "fork")
	for _, want := range []string{"damaged: feed " + shortKey(key) + " is forked", evidence, "1 problem", "new feed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("verify's report lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "not loaded") {
		t.Errorf("verify calls the forked feed not loaded:\n%s", r.stdout)
	}
}
