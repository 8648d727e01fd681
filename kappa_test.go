package kappa

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func newCore(t testing.TB, opts *Options) *Core {
	t.Helper()
	c, err := New(NewMemStorage(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mustWriter returns the writer feed called name, failing the test at once
// if there is none.
func mustWriter(t testing.TB, c *Core, name string) *Feed {
	t.Helper()
	w, err := c.Writer(name)
	if err != nil {
		t.Fatalf("writer %q: %v", name, err)
	}
	return w
}

// mustUse installs a view, failing the test at once if Use fails.
func mustUse(t testing.TB, c *Core, name string, version int, view View) *Index {
	t.Helper()
	x, err := c.Use(name, version, view)
	if err != nil {
		t.Fatalf("use %q: %v", name, err)
	}
	return x
}

// hangAfter is how long a test waits for one event before it calls the
// wait a hang: far beyond any honest wait in these tests, on any machine.
const hangAfter = 2 * time.Minute

// ctxT returns a context for a test's waiting calls. It ends when the test
// does and, as a hang detector only, after hangAfter or a little before the
// test binary's -timeout would stop everything, whichever comes first: a
// call still waiting then fails with its own error, and the other tests
// still run.
func ctxT(t testing.TB) context.Context {
	deadline := time.Now().Add(hangAfter)
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if end, ok := d.Deadline(); ok && end.Add(-time.Until(end)/20).Before(deadline) {
			deadline = end.Add(-time.Until(end) / 20)
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// mustKeyPair returns a new key pair.
func mustKeyPair(t testing.TB) KeyPair {
	t.Helper()
	kp, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// waitUntil waits until cond holds, checking now and then. It fails the
// test only if ctxT's hang detector ends first.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx := ctxT(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("still waiting for %s: %v", what, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// sumView adds up JSON numbers, like the seed's example view.
type sumView struct {
	mu      sync.Mutex
	sum     int
	batches []int
}

func (v *sumView) Map(entries []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var n int
		if err := e.Decode(&n); err == nil {
			v.sum += n
		}
	}
	v.batches = append(v.batches, len(entries))
	return nil
}

func (v *sumView) Sum() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sum
}

func appendJSON(t testing.TB, f *Feed, values ...int) {
	t.Helper()
	for _, n := range values {
		if _, err := f.Append([]byte(fmt.Sprint(n))); err != nil {
			t.Fatal(err)
		}
	}
}

// Seed test/basic.js: "simple view".
func TestSimpleView(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	v := &sumView{}
	if _, err := c.Use("sum", 1, v); err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("default")
	if err != nil {
		t.Fatal(err)
	}
	appendJSON(t, w, 1)
	if err := c.Ready(ctxT(t), "sum"); err != nil {
		t.Fatal(err)
	}
	if v.Sum() != 1 {
		t.Fatalf("sum %d, want 1", v.Sum())
	}
}

// Seed test/basic.js: "REGRESSION: views still work while indexing is
// paused".
func TestViewsStillWorkWhilePaused(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	v := &sumView{}
	mustUse(t, c, "sum", 1, v)
	w := mustWriter(t, c, "default")
	appendJSON(t, w, 1)
	ready(t, c)
	if err := c.Pause(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(ctxT(t), "sum"); err != nil {
		t.Fatalf("ready while paused: %v", err)
	}
	if v.Sum() != 1 {
		t.Fatalf("sum %d, want 1", v.Sum())
	}
}

// kvView maps {"key","value"} JSON entries into a map, like kappa-view's
// mapper test.
type kvView struct {
	mu sync.Mutex
	m  map[string]string
}

func (v *kvView) Map(entries []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range entries {
		var kv struct{ Key, Value string }
		if err := e.Decode(&kv); err != nil {
			return err
		}
		v.m[kv.Key] = kv.Value
	}
	return nil
}

func (v *kvView) ClearIndex() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.m = map[string]string{}
	return nil
}

func (v *kvView) Get(k string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.m[k]
	return s, ok
}

// kappa-view test/test.js: "mapper".
func TestMapperView(t *testing.T) {
	c := newCore(t, &Options{ValueEncoding: "json"})
	v := &kvView{}
	mustUse(t, c, "mapper", 1, v)
	w := mustWriter(t, c, "default")
	mustAppend(t, w, `{"key":"foo","value":"bar"}`)
	mustAppend(t, w, `{"key":"bax","value":"baz"}`)
	if err := c.Ready(ctxT(t), "mapper"); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"foo": "bar", "bax": "baz"} {
		if got, ok := v.Get(k); !ok || got != want {
			t.Errorf("get %q = %q, %v", k, got, ok)
		}
	}
	if _, ok := v.Get("nix"); ok {
		t.Error("nix found")
	}
}

// multifeed test/basic.js: "no feeds".
func TestNoFeeds(t *testing.T) {
	c := newCore(t, nil)
	if len(c.Feeds()) != 0 {
		t.Fatalf("new database has %d feeds", len(c.Feeds()))
	}
}

// multifeed: "create writer", "get feed by key", "get localfeed by name".
func TestWriterAndFeedLookup(t *testing.T) {
	c := newCore(t, nil)
	w, err := c.Writer("bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]byte("foo")); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, w, 0); got != "foo" {
		t.Fatalf("get 0 = %q", got)
	}
	if fs := c.Feeds(); len(fs) != 1 || fs[0] != w {
		t.Fatalf("feeds = %v", fs)
	}
	if c.Feed(w.Key()) != w || c.FeedHex(hex.EncodeToString(w.Key())) != w {
		t.Fatal("feed by key or by hex key is not the writer")
	}
	if c.Feed(make([]byte, 32)) != nil || c.FeedHex("zz") != nil {
		t.Fatal("unknown key found a feed")
	}
	again, err := c.Writer("bob")
	if err != nil || again != w {
		t.Fatalf("writer by name twice: %v %v", again, err)
	}
	if _, err := c.Writer(""); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("empty name: %v", err)
	}
	if _, err := c.Writer(strings.Repeat("x", 89)); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("long name: %v", err)
	}
}

// multifeed: "get localfeed by name across disk loads", and feed order and
// numeric-looking names across restarts.
func TestWritersAndOrderSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for _, name := range []string{"minuette", "5", "0", "1"} {
		w, err := c.Writer(name)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, w.Key())
	}
	other := mustKeyPair(t)
	if _, err := c.AddFeed(other.PublicKey); err != nil {
		t.Fatal(err)
	}
	keys = append(keys, other.PublicKey)
	shared := c.SharedKey()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, f := range c.Feeds() {
		if !bytes.Equal(f.Key(), keys[i]) {
			t.Fatalf("feed %d after reopen is %x, want %x", i, f.Key()[:4], keys[i][:4])
		}
	}
	for i, name := range []string{"minuette", "5", "0", "1"} {
		w, err := c.Writer(name)
		if err != nil || !bytes.Equal(w.Key(), keys[i]) || !w.Writable() {
			t.Fatalf("writer %q after reopen: %v", name, err)
		}
	}
	if c.Feed(other.PublicKey).Writable() {
		t.Fatal("a replica became writable")
	}
	if len(c.Feeds()) != 5 || !bytes.Equal(c.SharedKey(), shared) {
		t.Fatalf("%d feeds, shared key kept %v", len(c.Feeds()), bytes.Equal(c.SharedKey(), shared))
	}
}

func TestSharedKey(t *testing.T) {
	dir := t.TempDir()
	key := bytes.Repeat([]byte{7}, 32)
	c, err := Open(dir, &Options{SharedKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.SharedKey(), key) {
		t.Fatal("database did not join the given key")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, &Options{SharedKey: bytes.Repeat([]byte{8}, 32)}); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("open with another shared key: %v", err)
	}
	if _, err := Open(t.TempDir(), &Options{SharedKey: []byte("short")}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("short shared key: %v", err)
	}
	c, err = Open(dir, nil)
	if err != nil {
		t.Fatalf("reopen without a key: %v", err)
	}
	if !bytes.Equal(c.SharedKey(), key) {
		t.Fatal("reopened without a key, the database has another shared key")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	a, b := newCore(t, nil), newCore(t, nil)
	if bytes.Equal(a.SharedKey(), b.SharedKey()) || len(a.SharedKey()) != 32 {
		t.Fatal("two new databases share a generated key")
	}
}

// multifeed: "close", "close after double-open", "calling close while
// closing should not throw errors".
func TestClose(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		c, err := Open(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		mustAppend(t, mustWriter(t, c, "w"), "x")
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = c.Close() }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if len(c.Feeds()) != 0 {
			t.Fatal("feeds after close")
		}
		if _, err := c.Writer("w"); !errors.Is(err, ErrClosed) {
			t.Fatalf("writer after close: %v", err)
		}
		if err := c.Ready(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("ready after close: %v", err)
		}
	}
}

func TestOpenTwiceIsLocked(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Open(dir, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

// multifeed: "can create writer with custom keypair".
func TestWriterWithKeyPair(t *testing.T) {
	c := newCore(t, nil)
	kp := mustKeyPair(t)
	w, err := c.WriterWithKeyPair("moose", kp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.Key(), kp.PublicKey) || !w.Writable() {
		t.Fatal("writer does not have the given key pair")
	}
	mustAppend(t, w, "hi")
	if mustGet(t, w, 0) != "hi" {
		t.Fatal("get")
	}
	other := mustKeyPair(t)
	if _, err := c.WriterWithKeyPair("moose", other); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("same name, other key pair: %v", err)
	}
}

// multifeed test/regression.js: "concurrency of writer creation".
func TestConcurrentWriterCreation(t *testing.T) {
	c := newCore(t, nil)
	var wg sync.WaitGroup
	got := make([]*Feed, 10)
	errs := make([]error, len(got))
	for i := range got {
		wg.Go(func() { got[i], errs[i] = c.Writer("minuette") })
	}
	if err := c.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, f := range got {
		if errs[i] != nil {
			t.Fatalf("concurrent Writer call %d: %v", i, errs[i])
		}
		if f != got[0] {
			t.Fatal("concurrent Writer calls made different feeds")
		}
	}
	if len(c.Feeds()) != 1 {
		t.Fatalf("%d feeds", len(c.Feeds()))
	}
}

func TestDamagedFeedDoesNotHideLaterFeeds(t *testing.T) {
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for _, n := range []string{"a", "b", "c"} {
		w := mustWriter(t, c, n)
		mustAppend(t, w, n)
		keys = append(keys, w.Key())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b, ok := s.fileBytes("feeds/1/key")
	if !ok || len(b) <= 20 {
		t.Fatalf("feeds/1/key holds %d bytes (exists %v)", len(b), ok)
	}
	b[20] ^= 0xff
	s.setFileBytes("feeds/1/key", b)
	var reported []error
	c, err = New(s, &Options{OnError: func(err error) { reported = append(reported, err) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(reported) != 1 || !errors.Is(reported[0], ErrCorrupt) {
		t.Fatalf("reported %v", reported)
	}
	fs := c.Feeds()
	if len(fs) != 2 || !bytes.Equal(fs[0].Key(), keys[0]) || !bytes.Equal(fs[1].Key(), keys[2]) {
		t.Fatalf("loaded %d feeds", len(fs))
	}
	// A new feed does not reuse the damaged one's place.
	d, err := c.Writer("d")
	if err != nil {
		t.Fatal(err)
	}
	if d.name != "feeds/3/" {
		t.Fatalf("new writer stored at %s", d.name)
	}
}

func TestFeedsChangedSignalsNewFeeds(t *testing.T) {
	c := newCore(t, nil)
	ch := c.FeedsChanged()
	select {
	case <-ch:
		t.Fatal("signalled before any feed")
	default:
	}
	mustWriter(t, c, "x")
	// The channel is closed by the time Writer returns.
	select {
	case <-ch:
	default:
		t.Fatal("no signal for a new feed")
	}
}

func TestValueEncodings(t *testing.T) {
	cases := []struct {
		enc      string
		good     string
		bad      []byte
		decodeTo func(Entry) (any, error)
		want     any
	}{
		{"json", `{"a":1}`, []byte(`{"a":`), func(e Entry) (any, error) {
			var v map[string]int
			err := e.Decode(&v)
			return v["a"], err
		}, 1},
		{"utf-8", "héllo", []byte{0xff, 0xfe}, func(e Entry) (any, error) {
			var s string
			err := e.Decode(&s)
			return s, err
		}, "héllo"},
		{"binary", "\x00\x01", nil, func(e Entry) (any, error) {
			var b []byte
			err := e.Decode(&b)
			return string(b), err
		}, "\x00\x01"},
	}
	for _, tc := range cases {
		t.Run(tc.enc, func(t *testing.T) {
			c := newCore(t, &Options{ValueEncoding: Encoding(tc.enc)})
			got := make(chan Entry, 1)
			mustUse(t, c, "v", 1, viewFunc(func(es []Entry) error { got <- es[0]; return nil }))
			w := mustWriter(t, c, "w")
			if tc.bad != nil {
				if _, err := w.Append(tc.bad); !errors.Is(err, ErrInvalidValue) {
					t.Fatalf("bad value: %v", err)
				}
			}
			if _, err := w.Append([]byte(tc.good)); err != nil {
				t.Fatal(err)
			}
			ready(t, c)
			var e Entry
			select {
			case e = <-got:
			default:
				t.Fatal("Ready returned before the view saw the entry")
			}
			v, err := tc.decodeTo(e)
			if err != nil || v != tc.want {
				t.Fatalf("decoded %v, %v; want %v", v, err, tc.want)
			}
		})
	}
	if _, err := New(NewMemStorage(), &Options{ValueEncoding: "ebcdic"}); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("unknown encoding: %v", err)
	}
}

type viewFunc func([]Entry) error

func (f viewFunc) Map(es []Entry) error { return f(es) }

// A database of thousands of feeds keeps its file descriptors bounded (the
// JS stack ran out of them at about 2,500 feeds).
func TestManyFeedsKeepDescriptorsBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts descriptors in /proc/self/fd")
	}
	if testing.Short() {
		t.Skip("thousands of feeds; skipped with -short")
	}
	feeds := 10_000
	if raceEnabled {
		feeds = 2_000
	}
	const maxOpen = 64
	openFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	base := openFDs()
	dir := t.TempDir()
	c, err := Open(dir, &Options{NoSync: true, MaxOpenFiles: maxOpen})
	if err != nil {
		t.Fatal(err)
	}
	// 10,000 local writers each naming the heads of all those before it
	// would write gigabytes of contexts: this test is about descriptors.
	withoutContexts(c)
	peak := 0
	for i := range feeds {
		w, err := c.Writer(fmt.Sprint("w", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Append([]byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			peak = max(peak, openFDs()-base)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, &Options{NoSync: true, MaxOpenFiles: maxOpen})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fs := c.Feeds()
	if len(fs) != feeds {
		t.Fatalf("%d feeds after reopen", len(fs))
	}
	for i, f := range fs {
		if got := mustGet(t, f, 0); got != fmt.Sprint(i) {
			t.Fatalf("feed %d holds %q", i, got)
		}
		if i%500 == 0 {
			peak = max(peak, openFDs()-base)
		}
	}
	if peak > maxOpen+8 {
		t.Fatalf("%d descriptors open at the peak, limit %d", peak, maxOpen)
	}
	t.Logf("%d feeds, at most %d descriptors", feeds, peak)
}
