package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// connPair returns two ends of a connection: a synchronous net.Pipe, or
// real TCP over 127.0.0.1.
func connPair(t testing.TB, kind string) (net.Conn, net.Conn) {
	t.Helper()
	if kind == "pipe" {
		return net.Pipe()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return a, r.c
}

var connKinds = []string{"pipe", "tcp"}

// replicatePair runs a session between a and b and returns both results.
func replicatePair(t testing.TB, kind string, a, b *Core, oa, ob *ReplicateOptions) (error, error) {
	t.Helper()
	ca, cb := connPair(t, kind)
	ctx := ctxT(t)
	errs := make(chan error, 1)
	go func() { errs <- b.Replicate(ctx, cb, false, ob) }()
	ea := a.Replicate(ctx, ca, true, oa)
	return ea, <-errs
}

func mustReplicate(t testing.TB, kind string, a, b *Core) {
	t.Helper()
	ea, eb := replicatePair(t, kind, a, b, nil, nil)
	if ea != nil || eb != nil {
		t.Fatalf("replicate: %v / %v", ea, eb)
	}
}

// sharedPair makes two in-memory databases with one shared key.
func sharedPair(t testing.TB, opts *Options) (*Core, *Core) {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	a := newCore(t, &o)
	o.SharedKey = a.SharedKey()
	b := newCore(t, &o)
	return a, b
}

func appendN(t testing.TB, f *Feed, n int, prefix string) {
	t.Helper()
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = []byte(fmt.Sprintf("%s%d", prefix, i))
	}
	if _, err := f.Append(vals...); err != nil {
		t.Fatal(err)
	}
}

// sameFeeds checks that b holds every entry a's feed of the same key holds.
func checkHas(t testing.TB, from, to *Core) {
	t.Helper()
	for _, f := range from.Feeds() {
		g := to.Feed(f.Key())
		if g == nil {
			t.Fatalf("feed %x missing", f.Key()[:4])
		}
		if g.Len() != f.Len() || g.Downloaded() != f.Downloaded() {
			t.Fatalf("feed %x: length %d, held %d; want %d, %d", f.Key()[:4], g.Len(), g.Downloaded(), f.Len(), f.Downloaded())
		}
		if f.Len() == 0 {
			continue
		}
		want, err := f.GetBatch(context.Background(), 0, f.Len())
		if err != nil {
			t.Fatal(err)
		}
		got, err := g.GetBatch(context.Background(), 0, g.Len())
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("feed %x entry %d = %q, want %q", f.Key()[:4], i, got[i], want[i])
			}
		}
	}
}

func TestReplicateTwoEmpty(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			mustReplicate(t, kind, a, b)
			if len(a.Feeds())+len(b.Feeds()) != 0 {
				t.Fatal("feeds appeared")
			}
		})
	}
}

func TestReplicateOneEmpty(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			w := mustWriter(t, a, "w")
			appendN(t, w, 1000, "a")
			mustReplicate(t, kind, a, b)
			checkHas(t, a, b)
		})
	}
}

func TestReplicateTwoFeedsBothWays(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, &Options{ValueEncoding: JSON})
			appendN(t, mustWriter(t, a, "w"), 1, "")
			appendN(t, mustWriter(t, b, "w"), 1, "1")
			mustReplicate(t, kind, a, b)
			checkHas(t, a, b)
			checkHas(t, b, a)
			for _, c := range []*Core{a, b} {
				fs := c.Feeds()
				if len(fs) != 2 || !fs[0].Writable() || fs[1].Writable() {
					t.Fatal("want the own feed first, then the peer's")
				}
			}
			// Twice: nothing new, and it still ends.
			appendN(t, a.FindWriter("w"), 5, "1")
			mustReplicate(t, kind, a, b)
			checkHas(t, a, b)
			checkHas(t, b, a)
		})
	}
}

func TestReplicateDifferentKeysCannot(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a := newCore(t, nil)
			b := newCore(t, nil)
			appendN(t, mustWriter(t, a, "w"), 3, "")
			ea, eb := replicatePair(t, kind, a, b, nil, nil)
			if !errors.Is(ea, ErrUnauthorized) || !errors.Is(eb, ErrUnauthorized) {
				t.Fatalf("got %v / %v, want ErrUnauthorized", ea, eb)
			}
			if len(b.Feeds()) != 0 {
				t.Fatal("the unauthorized peer learned a feed")
			}
		})
	}
}

func TestReplicateThreeWay(t *testing.T) {
	a, b := sharedPair(t, nil)
	c := newCore(t, &Options{SharedKey: a.SharedKey()})
	appendN(t, mustWriter(t, a, "w"), 10, "a")
	appendN(t, mustWriter(t, c, "w"), 7, "c")
	mustReplicate(t, "pipe", a, b)
	mustReplicate(t, "tcp", b, c)
	mustReplicate(t, "pipe", c, a)
	for _, x := range []*Core{a, b, c} {
		if len(x.Feeds()) != 2 {
			t.Fatalf("%d feeds", len(x.Feeds()))
		}
		checkHas(t, a, x)
		checkHas(t, c, x)
	}
}

func TestReplicateForwardsFromAPartialReplica(t *testing.T) {
	a, b := sharedPair(t, nil)
	c := newCore(t, &Options{SharedKey: a.SharedKey()})
	w := mustWriter(t, a, "w")
	appendN(t, w, 10, "x")
	mustReplicate(t, "pipe", a, b) // b holds [0, 10) at length 10
	appendN(t, w, 10, "y")
	// b learns length 20 through block 9 (which reaches the roots of 10)
	// and block 15.
	r := b.Feed(w.Key())
	for _, s := range []uint64{9, 15} {
		p, err := w.Proof(s, s+1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	if r.Len() != 20 {
		t.Fatalf("length %d", r.Len())
	}
	mustReplicate(t, "tcp", b, c)
	got := c.Feed(w.Key())
	if got == nil || !got.HasRange(0, 10) || !got.Has(15) {
		t.Fatalf("c holds %v", got)
	}
}

func TestReplicateLive(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			wa := mustWriter(t, a, "w")
			appendN(t, wa, 3, "a")
			ca, cb := connPair(t, kind)
			ctx, cancel := context.WithCancel(ctxT(t))
			errs := make(chan error, 2)
			go func() { errs <- a.Replicate(ctx, ca, true, &ReplicateOptions{Live: true}) }()
			go func() { errs <- b.Replicate(ctx, cb, false, &ReplicateOptions{Live: true}) }()
			waitFeed := func(c *Core, key []byte, n uint64) {
				t.Helper()
				if _, err := waitFeedGet(ctx, c, key, n-1); err != nil {
					t.Fatal(err)
				}
			}
			waitFeed(b, wa.Key(), 3)
			appendN(t, wa, 2, "more")
			waitFeed(b, wa.Key(), 5)
			wb := mustWriter(t, b, "w") // a new feed, announced live
			appendN(t, wb, 4, "b")
			waitFeed(a, wb.Key(), 4)
			cancel()
			// A side whose context ended returns its error; its peer
			// may see the hang-up first, which after both said done (live
			// sides do too) is a clean end.
			canceled := 0
			for range 2 {
				switch err := <-errs; {
				case errors.Is(err, context.Canceled):
					canceled++
				case err != nil:
					t.Fatalf("live session ended with %v", err)
				}
			}
			if canceled == 0 {
				t.Fatal("no session saw its context end")
			}
		})
	}
}

func TestReplicateClosedBeforeHandshake(t *testing.T) {
	a := newCore(t, nil)
	ca, cb := net.Pipe()
	cb.Close()
	if err := a.Replicate(ctxT(t), ca, true, nil); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("got %v, want ErrPeerClosed", err)
	}
}

func TestReplicateGarbageInsteadOfHandshake(t *testing.T) {
	a := newCore(t, nil)
	ca, cb := connPair(t, "tcp")
	go func() {
		cb.Write(bytes.Repeat([]byte("garbage!"), 100))
		io.Copy(io.Discard, cb)
	}()
	defer cb.Close()
	if err := a.Replicate(ctxT(t), ca, false, nil); !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
}

func TestReplicateTimeoutOnSilentPeer(t *testing.T) {
	a := newCore(t, nil)
	ca, cb := net.Pipe()
	go func() {
		buf := make([]byte, 1)
		cb.Read(buf) // read one byte, then nothing
	}()
	defer cb.Close()
	err := a.Replicate(ctxT(t), ca, true, &ReplicateOptions{KeepAlive: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("a silent peer: %v, want ErrTimeout", err)
	}
}

// multifeed-index test/sync.js "multiple feeds", through the wire.
func TestReplicateThenIndexMultipleFeeds(t *testing.T) {
	a, b := sharedPair(t, &Options{ValueEncoding: JSON})
	sa, sb := &adder{max: 50}, &adder{max: 50}
	mustUse(t, a, "sum", 1, sa)
	mustUse(t, b, "sum", 1, sb)
	for i, n := range []int{17, 12, 1} {
		appendJSON(t, mustWriter(t, a, fmt.Sprint("a", i)), n)
	}
	for i, n := range []int{11, 3} {
		appendJSON(t, mustWriter(t, b, fmt.Sprint("b", i)), n)
	}
	mustReplicate(t, "tcp", a, b)
	ready(t, a)
	ready(t, b)
	if sa.Sum() != 44 || sb.Sum() != 44 {
		t.Fatalf("sums %d and %d, want 44", sa.Sum(), sb.Sum())
	}
}

// multifeed-index test/adder.js "adder + sync": 3 and 1 entries.
func TestReplicateAdderSync(t *testing.T) {
	a, b := sharedPair(t, &Options{ValueEncoding: JSON})
	sa, sb := &adder{}, &adder{}
	mustUse(t, a, "sum", 1, sa)
	mustUse(t, b, "sum", 1, sb)
	appendJSON(t, mustWriter(t, a, "w"), 10, 20, 5)
	appendJSON(t, mustWriter(t, b, "w"), 4)
	mustReplicate(t, "pipe", a, b)
	ready(t, a)
	ready(t, b)
	if sa.Sum() != 39 || sb.Sum() != 39 {
		t.Fatalf("sums %d and %d, want 39", sa.Sum(), sb.Sum())
	}
	pa := sa.progress(t)
	if len(pa) != 2 {
		t.Fatalf("progress over %d feeds, want 2", len(pa))
	}
}

// kvHeads is multifeed-index test/fork.js's view: entries {id, links}; the
// heads are the ids nobody links to.
type kvHeads struct {
	mu     sync.Mutex
	linked map[string]bool
	ids    map[string]bool
}

func (v *kvHeads) Map(es []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ids == nil {
		v.ids, v.linked = map[string]bool{}, map[string]bool{}
	}
	for _, e := range es {
		var m struct {
			ID    string   `json:"id"`
			Links []string `json:"links"`
		}
		if err := e.Decode(&m); err != nil {
			return err
		}
		v.ids[m.ID] = true
		for _, l := range m.Links {
			v.linked[l] = true
		}
	}
	return nil
}

func (v *kvHeads) heads() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var hs []string
	for id := range v.ids {
		if !v.linked[id] {
			hs = append(hs, id)
		}
	}
	slices.Sort(hs)
	return strings.Join(hs, ",")
}

// multifeed-index test/fork.js "kv merge fork".
func TestReplicateKVMergeFork(t *testing.T) {
	a, b := sharedPair(t, &Options{ValueEncoding: JSON})
	va, vb := &kvHeads{}, &kvHeads{}
	mustUse(t, a, "kv", 1, va)
	mustUse(t, b, "kv", 1, vb)
	wa, wb := mustWriter(t, a, "w"), mustWriter(t, b, "w")
	put := func(w *Feed, v string) {
		t.Helper()
		if _, err := w.Append([]byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want string) {
		t.Helper()
		ready(t, a)
		ready(t, b)
		if va.heads() != want || vb.heads() != want {
			t.Fatalf("heads %q and %q, want %q", va.heads(), vb.heads(), want)
		}
	}
	put(wa, `{"id":"1","links":[]}`)
	mustReplicate(t, "pipe", a, b)
	check("1")
	put(wa, `{"id":"2","links":["1"]}`)
	put(wb, `{"id":"3","links":["1"]}`)
	mustReplicate(t, "tcp", a, b)
	check("2,3")
	put(wa, `{"id":"4","links":["2","3"]}`)
	mustReplicate(t, "pipe", b, a)
	check("4")
}

// hypercore test/replicate.js "download blocks": a sparse replica holds
// exactly the blocks asked for.
func TestReplicateSparseDownload(t *testing.T) {
	a, b := sharedPair(t, &Options{Sparse: true})
	w := mustWriter(t, a, "w")
	appendN(t, w, 10, "v")
	// A non-live session gives b the feed but no blocks: nobody asked.
	mustReplicate(t, "pipe", a, b)
	r := b.Feed(w.Key())
	if r == nil || r.Len() != 0 && r.Downloaded() != 0 {
		t.Fatalf("sparse replica holds %d blocks", r.Downloaded())
	}
	ca, cb := connPair(t, "tcp")
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errs := make(chan error, 2)
	live := &ReplicateOptions{Live: true}
	go func() { errs <- a.Replicate(ctx, ca, true, live) }()
	go func() { errs <- b.Replicate(ctx, cb, false, live) }()
	for _, rg := range [][2]uint64{{0, 1}, {3, 5}, {9, 10}} {
		if err := r.Download(ctx, rg[0], rg[1]); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	<-errs
	<-errs
	if r.Downloaded() != 4 || !r.Has(0) || !r.Has(3) || !r.Has(4) || !r.Has(9) {
		t.Fatalf("holds %d blocks", r.Downloaded())
	}
	got, err := r.Get(context.Background(), 9)
	if err != nil || string(got) != "v9" {
		t.Fatalf("Get(9) = %q, %v", got, err)
	}
}

// hypercore test/replicate.js "can wait for updates": a Get waits for a
// block that is appended and arrives later.
func TestReplicateGetWaitsForALaterBlock(t *testing.T) {
	a, b := sharedPair(t, nil)
	w := mustWriter(t, a, "w")
	appendN(t, w, 1, "v")
	mustReplicate(t, "pipe", a, b)
	r := b.Feed(w.Key())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	got := make(chan string, 1)
	go func() {
		v, err := r.Get(ctx, 3)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(v)
	}()
	ca, cb := connPair(t, "pipe")
	errs := make(chan error, 2)
	live := &ReplicateOptions{Live: true}
	go func() { errs <- a.Replicate(ctx, ca, true, live) }()
	go func() { errs <- b.Replicate(ctx, cb, false, live) }()
	appendN(t, w, 5, "later")
	if v := <-got; v != "later2" {
		t.Fatalf("Get(3) = %q", v)
	}
	cancel()
	<-errs
	<-errs
}

// multifeed "announcing a new feed on existing connections": with A–B and
// B–C live, a feed created on A reaches C through B.
func TestReplicateLiveForwardsNewFeeds(t *testing.T) {
	a, b := sharedPair(t, nil)
	c := newCore(t, &Options{SharedKey: a.SharedKey()})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errs := make(chan error, 4)
	live := &ReplicateOptions{Live: true}
	ab1, ab2 := connPair(t, "tcp")
	bc1, bc2 := connPair(t, "pipe")
	go func() { errs <- a.Replicate(ctx, ab1, true, live) }()
	go func() { errs <- b.Replicate(ctx, ab2, false, live) }()
	go func() { errs <- b.Replicate(ctx, bc1, true, live) }()
	go func() { errs <- c.Replicate(ctx, bc2, false, live) }()
	w := mustWriter(t, a, "new")
	appendN(t, w, 3, "x")
	if v, err := waitFeedGet(ctx, c, w.Key(), 2); err != nil || string(v) != "x2" {
		t.Fatalf("Get(2) on C = %q, %v", v, err)
	}
	cancel()
	for range 4 {
		<-errs
	}
}

func TestReplicateDeclinedFeedIsNotAdded(t *testing.T) {
	a, b := sharedPair(t, nil)
	blocked := mustWriter(t, a, "blocked")
	ok := mustWriter(t, a, "ok")
	appendN(t, blocked, 2, "b")
	appendN(t, ok, 2, "o")
	ea, eb := replicatePair(t, "pipe", a, b, nil, &ReplicateOptions{
		Accept: func(key []byte) bool { return !bytes.Equal(key, blocked.Key()) },
	})
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	if b.Feed(blocked.Key()) != nil || b.Feed(ok.Key()) == nil || b.Feed(ok.Key()).Len() != 2 {
		t.Fatal("the declined feed was added, or the other one was not")
	}
}

func TestReplicateReportsProgressAndLeavesNoGoroutine(t *testing.T) {
	a, b := sharedPair(t, nil)
	for i := range 3 {
		appendN(t, mustWriter(t, a, fmt.Sprint(i)), 2000, "p")
	}
	before := runtime.NumGoroutine()
	var last ReplicateProgress
	calls := 0
	ea, eb := replicatePair(t, "tcp", a, b, nil, &ReplicateOptions{Progress: func(p ReplicateProgress) {
		calls++
		last = p
	}})
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	if calls < 3 || last.Phase != "done" || last.Feeds != 3 || last.BlocksReceived != 6000 || last.BlocksToGo != 0 || last.FeedsToGo != 0 || last.BytesReceived == 0 {
		t.Fatalf("after %d reports: %+v", calls, last)
	}
	// Every goroutine of both sessions has ended (the connection's own
	// may take a moment to notice it is closed).
	for i := 0; runtime.NumGoroutine() > before; i++ {
		if i > 10000 { // a hang detector, far beyond an honest wait
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReplicateSeveralSessionsAtOnce(t *testing.T) {
	a, b := sharedPair(t, nil)
	c := newCore(t, &Options{SharedKey: a.SharedKey()})
	appendN(t, mustWriter(t, a, "w"), 500, "a")
	appendN(t, mustWriter(t, c, "w"), 500, "c")
	var wg sync.WaitGroup
	fail := make(chan error, 4)
	for _, peer := range []*Core{a, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ea, eb := replicatePair(t, "tcp", peer, b, nil, nil)
			if ea != nil || eb != nil {
				fail <- fmt.Errorf("%v / %v", ea, eb)
			}
		}()
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Fatal(err)
	}
	// b holds both writers' feeds whole. (a or c may also hold an empty
	// replica of the other's feed, if b had it when their session began.)
	for _, w := range []*Feed{a.FindWriter("w"), c.FindWriter("w")} {
		if f := b.Feed(w.Key()); f == nil || f.Len() != 500 || f.Downloaded() != 500 {
			t.Fatalf("b holds %v of a writer's 500 entries", f)
		}
	}
}

// slowStorage delays every open and write, to replicate with storage of
// very different speeds (multifeed's random-access-latency tests).
type slowStorage struct {
	Storage
	delay time.Duration
}

func (s slowStorage) Open(name string, create bool) (File, error) {
	time.Sleep(s.delay)
	f, err := s.Storage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return slowFile{f, s.delay}, nil
}

type slowFile struct {
	File
	delay time.Duration
}

func (f slowFile) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(f.delay)
	return f.File.WriteAt(p, off)
}

func TestReplicateSlowStorage(t *testing.T) {
	fast := newCore(t, nil)
	slow, err := New(slowStorage{NewMemStorage(), 2 * time.Millisecond}, &Options{SharedKey: fast.SharedKey()})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	appendN(t, mustWriter(t, fast, "f"), 300, "f")
	appendN(t, mustWriter(t, slow, "s"), 10, "s")
	mustReplicate(t, "tcp", slow, fast)
	checkHas(t, fast, slow)
	checkHas(t, slow, fast)
}

// multifeed "can replicate with custom keypairs", and no writer to one
// writer with 1,000 and 10 entries, both ways.
func TestReplicateCustomKeyPairsAndSizes(t *testing.T) {
	for _, n := range []int{1000, 10} {
		a, b := sharedPair(t, nil)
		kp, err := NewKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		w, err := a.WriterWithKeyPair("local", kp)
		if err != nil {
			t.Fatal(err)
		}
		appendN(t, w, n, "k")
		mustReplicate(t, "pipe", b, a) // the empty side initiates
		checkHas(t, a, b)
		if f := b.Feed(kp.PublicKey); f == nil || f.Writable() {
			t.Fatal("the custom key pair's feed did not arrive as a replica")
		}
	}
}

// No fixed cap on feeds per session (the JS stack once stopped at 128).
func TestReplicateManyFeeds(t *testing.T) {
	a, b := sharedPair(t, &Options{})
	for i := range 300 {
		appendN(t, mustWriter(t, a, fmt.Sprint("w", i)), 2, "x")
	}
	mustReplicate(t, "tcp", a, b)
	if len(b.Feeds()) != 300 {
		t.Fatalf("%d feeds arrived, want 300", len(b.Feeds()))
	}
	checkHas(t, a, b)
}

// Replicating right after Open, and with a database closed meanwhile.
func TestReplicateRightAfterOpenAndAfterClose(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(dir+"/a", &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	appendN(t, mustWriter(t, a, "w"), 5, "a")
	a.Close()
	a, err = Open(dir+"/a", &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := newCore(t, &Options{SharedKey: a.SharedKey()})
	mustReplicate(t, "tcp", a, b)
	checkHas(t, a, b)
	b.Close()
	ca, cb := net.Pipe()
	defer ca.Close()
	if err := b.Replicate(ctxT(t), cb, false, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("replicate a closed database: %v, want ErrClosed", err)
	}
}

func TestCloseEndsALiveSession(t *testing.T) {
	a, b := sharedPair(t, nil)
	ca, cb := connPair(t, "pipe")
	ctx := ctxT(t)
	errs := make(chan error, 2)
	live := &ReplicateOptions{Live: true}
	go func() { errs <- a.Replicate(ctx, ca, true, live) }()
	go func() { errs <- b.Replicate(ctx, cb, false, live) }()
	w := mustWriter(t, a, "w")
	appendN(t, w, 1, "x")
	if _, err := waitFeedGet(ctx, b, w.Key(), 0); err != nil {
		t.Fatal(err)
	}
	a.Close()
	var closed int
	defer func() {
		if closed != 1 {
			t.Errorf("%d sessions ended with ErrClosed, want 1", closed)
		}
	}()
	if err := <-errs; err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("first session ended with %v", err)
	} else if errors.Is(err, ErrClosed) {
		closed++
	}
	// The other side sees its peer hang up: after both said done (which
	// live sides do too) that is a clean end.
	if err := <-errs; err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("second session ended with %v", err)
	} else if errors.Is(err, ErrClosed) {
		closed++
	}
}

// waitFeedGet waits until c holds the feed with key and entry seq of it.
func waitFeedGet(ctx context.Context, c *Core, key []byte, seq uint64) ([]byte, error) {
	for {
		ch := c.FeedsChanged()
		if f := c.Feed(key); f != nil {
			return f.Get(ctx, seq)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// A replica keeps the verified signatures of lengths below its own, so it
// can prove entries it received at such a length even when it lacks the
// nodes to prove them at its newest.
func TestReplicaKeepsOlderSignatures(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	appendN(t, w, 10, "x")
	// old: a replica of w at length 10.
	old := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	p, err := w.Proof(0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Put(p); err != nil {
		t.Fatal(err)
	}
	appendN(t, w, 10, "y")
	// b learns length 20 through block 15, then [0, 10) signed at 10.
	b := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	if p, err = w.Proof(15, 16, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(p); err != nil {
		t.Fatal(err)
	}
	if p, err = old.Proof(0, 10, 0); err != nil || p.Length != 10 || p.Signature == nil {
		t.Fatalf("proof at 10: %v, %v", p, err)
	}
	if err := b.Put(p); err != nil {
		t.Fatal(err)
	}
	// b proves [0, 10) to a fresh replica, at length 10.
	q, err := b.Proof(0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	if err := c.Put(q); err != nil {
		t.Fatal(err)
	}
	if !c.HasRange(0, 10) {
		t.Fatal("c does not hold [0, 10)")
	}
}

// A session asks for no more than maxInFlightBytes (by the size of the
// blocks it has seen) before it stored what it got, and always for
// something: large blocks do not pile up in memory.
func TestRequestsInFlightAreBoundedInBytes(t *testing.T) {
	for _, blockBytes := range []uint64{0, 100, 1 << 20, MaxBlockSize} {
		t.Run(fmt.Sprint(blockBytes), func(t *testing.T) {
			c := newCore(t, &Options{NoSync: true})
			fs, err := c.AddFeeds(mustKeyPair(t).PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			s := &session{core: c, mineID: map[*Feed]uint64{}, sentHave: map[*Feed]haveState{}}
			startStores(s)
			pf := &peerFeed{id: 0, key: fs[0].Key(), local: fs[0], length: 1 << 20, have: []span{{0, 1 << 20}}, blockBytes: blockBytes}
			s.peers = []*peerFeed{pf}
			s.trimWants(pf)
			if err := s.fetch(); err != nil {
				t.Fatal(err)
			}
			if len(s.outstanding) == 0 {
				t.Fatal("nothing asked for")
			}
			var asked uint64
			for i, r := range s.outstanding {
				if i > 0 && asked >= maxInFlightBytes {
					t.Fatalf("request %d sent with %d bytes in flight", i, asked)
				}
				asked += (r.end - r.start) * blockBytes
			}
			if blockBytes > 0 && asked < maxInFlightBytes && len(s.outstanding) < maxOutstanding {
				t.Fatalf("only %d bytes in %d requests asked for", asked, len(s.outstanding))
			}
		})
	}
}

// A feed created while a live session runs is announced, and what it gets
// appended right after its first have was sent is sent too. (The session
// once sent that have and only then started watching the feed, so an
// append in between was never announced and the peer waited for good.)
func TestReplicateLiveSendsAppendsMadeAsAFeedIsAnnounced(t *testing.T) {
	a, b := sharedPair(t, nil)
	ca, cb := connPair(t, "pipe")
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	// The append lands exactly between the have and the watch.
	var hooked atomic.Int32
	testHookAnnounced = func(f *Feed) {
		if f.Writable() && f.Len() == 0 && b.Feed(f.Key()) == f {
			hooked.Add(1)
			if _, err := f.Append([]byte("x")); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { testHookAnnounced = nil })
	errs := make(chan error, 2)
	go func() { errs <- a.Replicate(ctx, ca, true, &ReplicateOptions{Live: true}) }()
	go func() { errs <- b.Replicate(ctx, cb, false, &ReplicateOptions{Live: true}) }()
	w := mustWriter(t, b, "w")
	if _, err := waitFeedGet(ctx, a, w.Key(), 0); err != nil {
		t.Fatal(err)
	}
	if hooked.Load() == 0 {
		t.Fatal("no append was made between a have and the watch")
	}
	cancel()
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("live session ended with %v", err)
		}
	}
}

// TestReplicateHaveOffersTheLowestRangesThatFit: a sparse replica may hold
// more ranges of a feed than one have message can carry; it offers those
// of its lowest entries, and a peer fetches those. (The cap, 2^18 ranges,
// is lowered here to 5.)
func TestReplicateHaveOffersTheLowestRangesThatFit(t *testing.T) {
	defer func(n int) { maxHaveRanges = n }(maxHaveRanges)
	maxHaveRanges = 5
	a, b := sharedPair(t, &Options{NoSync: true})
	c := newCore(t, &Options{SharedKey: a.SharedKey(), NoSync: true})
	w := mustWriter(t, a, "w")
	appendN(t, w, 40, "v")
	r, err := b.AddFeed(w.Key())
	if err != nil {
		t.Fatal(err)
	}
	for s := uint64(0); s < 40; s += 2 { // 20 ranges of one entry
		p, err := w.Proof(s, s+1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err != nil {
			t.Fatal(err)
		}
	}
	mustReplicate(t, "tcp", b, c)
	got := c.Feed(w.Key())
	if got == nil {
		t.Fatal("c lacks the feed")
	}
	if got.Len() != 40 || got.Downloaded() != 5 {
		t.Fatalf("c holds %d entries at length %d, want 5 at 40", got.Downloaded(), got.Len())
	}
	for s := uint64(0); s < 10; s += 2 {
		if !got.Has(s) {
			t.Fatalf("c lacks entry %d, of the lowest five ranges", s)
		}
	}
}
