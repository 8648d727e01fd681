package kappa

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// causalLog is a view that records the entries it is given, in order; it
// is causal when causal is set.
type causalLog struct {
	causal bool
	mu     sync.Mutex
	got    []Entry
	state  []byte // with durable set: StoreState's last
}

func (v *causalLog) Causal() bool { return v.causal }

func (v *causalLog) Map(es []Entry) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.got = append(v.got, es...)
	return nil
}

func (v *causalLog) entries() []Entry {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.got)
}

func (v *causalLog) names() []string {
	var out []string
	for _, e := range v.entries() {
		out = append(out, entryName(e.Key, e.Seq))
	}
	return out
}

func (v *causalLog) has(key []byte, seq uint64) bool {
	return slices.Contains(v.names(), entryName(key, seq))
}

// durableLog is a causalLog that stores its progress (in memory, kept
// across databases by the test).
type durableLog struct{ *causalLog }

func (v durableLog) FetchState() ([]byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.state), nil
}

func (v durableLog) StoreState(s []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.state = s
	return nil
}

// checkCausalOrder checks that log gave each entry once, after its own
// feed's predecessor and after every Pos of its Deps.
func checkCausalOrder(t *testing.T, got []Entry) {
	t.Helper()
	at := make(map[string]int, len(got))
	for i, e := range got {
		name := entryName(e.Key, e.Seq)
		if j, ok := at[name]; ok {
			t.Fatalf("entry %x@%d given twice (at %d and %d)", e.Key[:4], e.Seq, j, i)
		}
		if e.Seq > 0 {
			if j, ok := at[entryName(e.Key, e.Seq-1)]; !ok || j > i {
				t.Fatalf("entry %x@%d given before its predecessor", e.Key[:4], e.Seq)
			}
		}
		for _, d := range e.Deps {
			if _, ok := at[entryName(d.Feed, d.Seq)]; !ok {
				t.Fatalf("entry %x@%d given before %x@%d, which it follows", e.Key[:4], e.Seq, d.Feed[:4], d.Seq)
			}
		}
		at[name] = i
	}
}

// readyIn calls x.Ready with a generous deadline that turns a hang into a
// failure.
func readyIn(t *testing.T, x *Index) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := x.Ready(ctx); err != nil {
		t.Fatalf("ready: %v (status %+v)", err, x.Status())
	}
}

// waitingOn returns the Wait of feed key in x's status, failing if none.
func waitingOn(t *testing.T, x *Index, key []byte) Wait {
	t.Helper()
	for _, w := range x.Status().Waiting {
		if bytes.Equal(w.Feed, key) {
			return w
		}
	}
	t.Fatalf("feed %x does not wait; Waiting %+v", key[:4], x.Status().Waiting)
	return Wait{}
}

func fmtWaits(ws []Wait) string {
	var s []string
	for _, w := range ws {
		s = append(s, fmt.Sprintf("%x@%d on %x@%d: %s", w.Feed[:4], w.Seq, w.On.Feed[:4], w.On.Seq, w.Reason))
	}
	return strings.Join(s, "; ")
}

// Bob answers Alice's question; a replica gets Bob's feed first. Its causal
// view gives the answer only after the question; a view that does not opt
// in gives the answer at once.
func TestCausalViewNeverSeesTheAnswerBeforeTheQuestion(t *testing.T) {
	x, z := sharedPair(t, nil)
	alice, bob := mustWriter(t, x, "alice"), mustWriter(t, x, "bob")
	appendN(t, alice, 1, "question")
	appendN(t, bob, 1, "answer") // names alice@0
	onlyBob := &ReplicateOptions{Accept: func(key []byte) bool { return bytes.Equal(key, bob.Key()) }}
	if ea, eb := replicatePair(t, "pipe", x, z, nil, onlyBob); ea != nil || eb != nil {
		t.Fatalf("replicate: %v / %v", ea, eb)
	}
	if z.Feed(alice.Key()) != nil || z.Feed(bob.Key()) == nil {
		t.Fatal("the replica should hold Bob's feed alone")
	}
	causal, plain := &causalLog{causal: true}, &causalLog{}
	xc := mustUse(t, z, "causal", 1, causal)
	xp := mustUse(t, z, "plain", 1, plain)
	readyIn(t, xc) // the answer waits on a feed not held: Ready does not wait for it
	readyIn(t, xp)
	if !plain.has(bob.Key(), 0) {
		t.Fatal("the plain view should see Bob's answer at once")
	}
	if len(causal.entries()) != 0 {
		t.Fatalf("the causal view saw %v before the question", causal.names())
	}
	w := waitingOn(t, xc, bob.Key())
	if w.Seq != 0 || !bytes.Equal(w.On.Feed, alice.Key()) || w.On.Seq != 0 || w.Reason != "feed not held" || !w.Dead {
		t.Fatalf("Waiting: %s", fmtWaits(xc.Status().Waiting))
	}
	if st := xc.Status(); st.State != ViewIdle || len(xp.Status().Waiting) != 0 {
		t.Fatalf("causal view %s, plain view waits %v", st.State, xp.Status().Waiting)
	}
	mustReplicate(t, "pipe", x, z)
	readyIn(t, xc)
	if got := causal.names(); !slices.Equal(got, []string{entryName(alice.Key(), 0), entryName(bob.Key(), 0)}) {
		t.Fatalf("causal view order %v, want the question then the answer", got)
	}
	checkCausalOrder(t, causal.entries())
	if ws := xc.Status().Waiting; len(ws) != 0 {
		t.Fatalf("still waiting: %s", fmtWaits(ws))
	}
}

// A sparse replica lacks an entry that Bob's entry follows: that entry
// waits, the other feeds go on, Ready returns; the entry comes, and so does
// Bob's.
func TestCausalViewWaitsOnAnEntryNotHeldAndGoesOnWithOthers(t *testing.T) {
	x := newCore(t, nil)
	a, b := mustWriter(t, x, "a"), mustWriter(t, x, "b")
	appendN(t, a, 3, "a")
	appendN(t, b, 2, "b") // b 0 names a@2
	z := newCore(t, nil)
	za, err := z.AddFeed(a.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, za, a, 0, 2) // a 0..1, not a 2
	w := mustWriter(t, z, "w")
	appendN(t, w, 2, "w") // names a@1: held
	zb, err := z.AddFeed(b.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, zb, b, 0, 2)
	v := &causalLog{causal: true}
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	if v.has(b.Key(), 0) || !v.has(a.Key(), 1) || !v.has(w.Key(), 1) {
		t.Fatalf("the view has %v: want a 0..1 and w 0..1, not b", v.names())
	}
	ww := waitingOn(t, xv, b.Key())
	if ww.Seq != 0 || !bytes.Equal(ww.On.Feed, a.Key()) || ww.On.Seq != 2 || ww.Reason != "not held" {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	appendN(t, w, 1, "more") // names b@1: waits behind it
	other := rawFeed(t)
	appendRawBlocks(t, other, encodeBlock(nil, []byte("o")))
	addRaw(t, z, other, 0, 1)
	readyIn(t, xv)
	if v.has(w.Key(), 2) || !v.has(other.Key(), 0) {
		t.Fatalf("the view has %v: want a new feed's entry, and not w 2", v.names())
	}
	if ww := waitingOn(t, xv, w.Key()); ww.Seq != 2 || !bytes.Equal(ww.On.Feed, b.Key()) || !ww.Dead {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	mustPut(t, za, a, 2, 3)
	readyIn(t, xv)
	if !v.has(b.Key(), 1) || !v.has(w.Key(), 2) {
		t.Fatalf("b and w 2 were not given once a 2 came: %v; Waiting %s", v.names(), fmtWaits(xv.Status().Waiting))
	}
	checkCausalOrder(t, v.entries())
}

// rawFeed is a feed signed by the test, outside any database, whose blocks
// the test writes byte for byte.
func rawFeed(t *testing.T) *Feed {
	t.Helper()
	kp := mustKeyPair(t)
	return newFeed(t, NewMemStorage(), &FeedOptions{SecretKey: kp.SecretKey})
}

// addRaw gives z entries [start, end) of raw feed f.
func addRaw(t *testing.T, z *Core, f *Feed, start, end uint64) {
	t.Helper()
	r, err := z.AddFeed(f.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, f, start, end)
}

// Two writers name each other's future, a third follows one of them: the
// three stall, reported as a cycle; another feed goes on, Ready returns,
// and the database stays usable.
func TestCausalViewStallsOnlyACycleAndWhatFollowsIt(t *testing.T) {
	a, b, c := rawFeed(t), rawFeed(t), rawFeed(t)
	appendRawBlocks(t, a, encodeBlock([]Pos{{Feed: b.Key(), Seq: 0}}, []byte("a0")))
	appendRawBlocks(t, b, encodeBlock([]Pos{{Feed: a.Key(), Seq: 0}}, []byte("b0")))
	appendRawBlocks(t, c, encodeBlock(nil, []byte("c0")), encodeBlock([]Pos{{Feed: a.Key(), Seq: 0}}, []byte("c1")))
	z := newCore(t, nil)
	w := mustWriter(t, z, "w")
	appendN(t, w, 1, "w")
	for _, f := range []*Feed{a, b, c} {
		addRaw(t, z, f, 0, f.Len())
	}
	v := &causalLog{causal: true}
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	got := v.names()
	slices.Sort(got)
	want := []string{entryName(c.Key(), 0), entryName(w.Key(), 0)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("the view has %v, want c 0 and w 0", v.names())
	}
	for _, f := range []*Feed{a, b} {
		if ww := waitingOn(t, xv, f.Key()); ww.Reason != "cycle" || !ww.Dead {
			t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
		}
	}
	if ww := waitingOn(t, xv, c.Key()); ww.Seq != 1 || !bytes.Equal(ww.On.Feed, a.Key()) || !ww.Dead {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	if st := xv.Status(); st.State != ViewIdle || len(st.Waiting) != 3 {
		t.Fatalf("status %+v", st)
	}
	appendN(t, w, 2, "w") // names a, b and c: waits behind the cycle
	other := rawFeed(t)
	appendRawBlocks(t, other, encodeBlock(nil, []byte("o")))
	addRaw(t, z, other, 0, 1)
	readyIn(t, xv)
	if v.has(w.Key(), 1) || !v.has(other.Key(), 0) {
		t.Fatalf("the view has %v: want a new feed's entry, and not w 1", v.names())
	}
	if ww := waitingOn(t, xv, w.Key()); ww.Seq != 1 || !ww.Dead || !strings.Contains(ww.Reason, "cycle") {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	checkCausalOrder(t, v.entries())
}

// An entry names a length its feed does not have yet: it waits until the
// feed grows past it.
func TestCausalViewWaitsOnAFutureLength(t *testing.T) {
	a, b := rawFeed(t), rawFeed(t)
	appendRawBlocks(t, a, encodeBlock(nil, []byte("a0")), encodeBlock([]Pos{{Feed: b.Key(), Seq: 5}}, []byte("a1")))
	appendRawBlocks(t, b, encodeBlock(nil, []byte("b0")), encodeBlock(nil, []byte("b1")))
	z := newCore(t, nil)
	addRaw(t, z, a, 0, 2)
	addRaw(t, z, b, 0, 2)
	v := &causalLog{causal: true}
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	if v.has(a.Key(), 1) || !v.has(a.Key(), 0) || !v.has(b.Key(), 1) {
		t.Fatalf("the view has %v", v.names())
	}
	if ww := waitingOn(t, xv, a.Key()); ww.Seq != 1 || ww.On.Seq != 5 || ww.Reason != "past the feed's end" || !ww.Dead {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	var blocks [][]byte
	for i := 2; i < 6; i++ {
		blocks = append(blocks, encodeBlock(nil, fmt.Appendf(nil, "b%d", i)))
	}
	appendRawBlocks(t, b, blocks...)
	mustPut(t, z.Feed(b.Key()), b, 2, 6)
	readyIn(t, xv)
	if !v.has(a.Key(), 1) {
		t.Fatalf("a 1 not given once b 5 came: %v", v.names())
	}
	checkCausalOrder(t, v.entries())
}

// A malformed context is a dependency that never comes: the writer's
// entries stall from there.
func TestCausalViewStallsAtAMalformedContext(t *testing.T) {
	a := rawFeed(t)
	appendRawBlocks(t, a, encodeBlock(nil, []byte("a0")), []byte{0x7f, 'v'}, encodeBlock(nil, []byte("a2")))
	z := newCore(t, nil)
	addRaw(t, z, a, 0, 3)
	w := mustWriter(t, z, "w")
	appendN(t, w, 1, "w") // names a@2: stalls behind a 1
	v := &causalLog{causal: true}
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	if got := v.names(); !slices.Equal(got, []string{entryName(a.Key(), 0)}) {
		t.Fatalf("the view has %v, want a 0 alone", got)
	}
	if ww := waitingOn(t, xv, a.Key()); ww.Seq != 1 || ww.Reason != "malformed context" || !ww.Dead {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
	if ww := waitingOn(t, xv, w.Key()); !ww.Dead || !strings.Contains(ww.Reason, "malformed context") {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
}

// Hostile writers name 100,000 feeds the database does not hold (25,000
// per entry: a block's context holds at most about 29,000): they and what
// follows them stall; the rest goes on and the database stays usable.
func TestCausalViewStallsOnlyWhatFollowsAContextOf100000Feeds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 100,000 keys")
	}
	z := newCore(t, nil)
	w := mustWriter(t, z, "w")
	appendN(t, w, 3, "w") // before the hostile feeds: names none
	var hostile []*Feed
	for range 4 {
		h := rawFeed(t)
		ctx := make([]Pos, 25_000)
		for i := range ctx {
			k := make([]byte, 32)
			rand.Read(k)
			ctx[i] = Pos{Feed: k, Seq: uint64(i)}
		}
		appendRawBlocks(t, h, encodeBlock(normalizeContext(ctx, h.Key()), []byte("h")))
		addRaw(t, z, h, 0, 1)
		hostile = append(hostile, h)
	}
	d := rawFeed(t)
	appendRawBlocks(t, d, encodeBlock(nil, []byte("d0")), encodeBlock([]Pos{{Feed: hostile[0].Key(), Seq: 0}}, []byte("d1")))
	addRaw(t, z, d, 0, 2)
	v := &causalLog{causal: true}
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	if !v.has(w.Key(), 2) || !v.has(d.Key(), 0) || v.has(d.Key(), 1) {
		t.Fatalf("the view has %v", v.names())
	}
	for _, h := range hostile {
		if ww := waitingOn(t, xv, h.Key()); ww.Reason != "feed not held" || !ww.Dead {
			t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
		}
	}
	waitingOn(t, xv, d.Key())
	appendN(t, w, 5, "w") // names the hostile feeds: waits
	other := rawFeed(t)
	appendRawBlocks(t, other, encodeBlock(nil, []byte("o")))
	addRaw(t, z, other, 0, 1)
	readyIn(t, xv)
	if !v.has(other.Key(), 0) || v.has(w.Key(), 3) {
		t.Fatalf("the view has %v", v.names())
	}
	checkCausalOrder(t, v.entries())
}

// A causal view that stores its progress resumes where it was after the
// database reopens, and keeps the rule for what comes then.
func TestCausalViewResumesFromStoredProgress(t *testing.T) {
	x := newCore(t, nil)
	alice, bob := mustWriter(t, x, "alice"), mustWriter(t, x, "bob")
	appendN(t, alice, 2, "q")
	appendN(t, bob, 1, "a") // names alice@1
	appendN(t, alice, 1, "q")
	appendN(t, bob, 1, "a") // names alice@2
	dir := t.TempDir()
	o := &Options{SharedKey: x.SharedKey()}
	z, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	// z gets alice 0..1 and bob 0..1: bob 1 waits on alice 2.
	za, _ := z.AddFeed(alice.Key())
	zb, _ := z.AddFeed(bob.Key())
	mustPut(t, za, alice, 0, 2)
	mustPut(t, zb, bob, 0, 2)
	v := durableLog{&causalLog{causal: true}}
	readyIn(t, mustUse(t, z, "causal", 1, v))
	first := v.names()
	if len(first) != 3 || v.has(bob.Key(), 1) {
		t.Fatalf("before the restart the view has %v", first)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	z, err = Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	xv := mustUse(t, z, "causal", 1, v)
	readyIn(t, xv)
	if got := v.names(); len(got) != 3 {
		t.Fatalf("after the restart the view was given %v again", got[3:])
	}
	if ww := waitingOn(t, xv, bob.Key()); ww.Seq != 1 || ww.On.Seq != 2 {
		t.Fatalf("Waiting after the restart: %s", fmtWaits(xv.Status().Waiting))
	}
	mustPut(t, z.Feed(alice.Key()), alice, 2, 3)
	readyIn(t, xv)
	if got := v.names(); len(got) != 5 || got[3] != entryName(alice.Key(), 2) || got[4] != entryName(bob.Key(), 1) {
		t.Fatalf("after the restart: %v", got)
	}
	checkCausalOrder(t, v.entries())
}

// Stored progress that is not a prefix (stored while the view was not
// causal) makes a causal view start over.
func TestCausalViewRebuildsFromProgressThatIsNotAPrefix(t *testing.T) {
	src := rawFeed(t)
	for i := range 5 {
		appendRawBlocks(t, src, encodeBlock(nil, fmt.Appendf(nil, "v%d", i)))
	}
	dir := t.TempDir()
	z, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := z.AddFeed(src.Key())
	mustPut(t, r, src, 3, 5) // a hole at 0..2: a plain view indexes 3..4
	v := durableLog{&causalLog{}}
	readyIn(t, mustUse(t, z, "log", 1, v))
	z.Close()
	z, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	v.causal = true
	v.got = nil
	xv := mustUse(t, z, "log", 1, v)
	mustPut(t, z.Feed(src.Key()), src, 0, 3)
	readyIn(t, xv)
	if got := v.names(); len(got) != 5 || got[0] != entryName(src.Key(), 0) {
		t.Fatalf("the rebuilt causal view has %v", got)
	}
	if st := xv.Status(); st.Indexed != 5 {
		t.Fatalf("the rebuilt causal view counts %d entries indexed, want 5", st.Indexed)
	}
}

// The property: 3 to 5 writers on as many replicas append and exchange in
// random orders (sessions that take a random subset of the feeds, and
// sparse copies of random ranges); a causal view on each replica records
// what it is given, and the order is checked against the Deps and
// predecessor relation, each time.
func TestCausalViewPropertyRandomReplication(t *testing.T) {
	rounds := 6
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		seed := uint64(round) + 1
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := mrand.New(mrand.NewPCG(seed, 18))
			n := 3 + rng.IntN(3)
			first := newCore(t, nil)
			cores := []*Core{first}
			for len(cores) < n {
				cores = append(cores, newCore(t, &Options{SharedKey: first.SharedKey()}))
			}
			writers := make([]*Feed, n)
			views := make([]*causalLog, n)
			indexes := make([]*Index, n)
			for i, c := range cores {
				writers[i] = mustWriter(t, c, "w")
				views[i] = &causalLog{causal: true}
				indexes[i] = mustUse(t, c, "causal", 1, views[i])
			}
			for step := range 40 {
				i := rng.IntN(n)
				switch rng.IntN(3) {
				case 0:
					appendN(t, writers[i], 1+rng.IntN(3), fmt.Sprintf("s%d-", step))
				case 1: // a session that takes a random subset of i's feeds
					j := (i + 1 + rng.IntN(n-1)) % n
					take := map[string]bool{}
					for _, f := range cores[i].Feeds() {
						if rng.IntN(2) == 0 {
							take[string(f.Key())] = true
						}
					}
					opts := &ReplicateOptions{Accept: func(key []byte) bool { return take[string(key)] }}
					if ea, eb := replicatePair(t, "pipe", cores[i], cores[j], &ReplicateOptions{Accept: func([]byte) bool { return false }}, opts); ea != nil || eb != nil {
						t.Fatalf("replicate: %v / %v", ea, eb)
					}
				case 2: // a sparse copy of a random range of one feed
					j := (i + 1 + rng.IntN(n-1)) % n
					fs := cores[i].Feeds()
					f := fs[rng.IntN(len(fs))]
					if f.Len() == 0 {
						continue
					}
					s := rng.Uint64N(f.Len())
					e := s + 1 + rng.Uint64N(f.Len()-s)
					if !f.HasRange(s, e) {
						continue
					}
					r, err := cores[j].AddFeed(f.Key())
					if err != nil {
						t.Fatal(err)
					}
					if r.Writable() {
						continue
					}
					p, err := f.Proof(s, e, 0)
					if err != nil {
						t.Fatal(err)
					}
					if err := r.Put(p); err != nil {
						t.Fatalf("put: %v", err)
					}
				}
				if step%10 == 9 {
					for k := range cores {
						readyIn(t, indexes[k])
						checkCausalOrder(t, views[k].entries())
					}
				}
			}
			// Everything everywhere: every view gives every entry.
			for k := 1; k < n; k++ {
				mustReplicate(t, "pipe", cores[0], cores[k])
			}
			for k := 1; k < n; k++ {
				mustReplicate(t, "pipe", cores[0], cores[k])
			}
			total := 0
			for _, w := range writers {
				total += int(w.Len())
			}
			for k := range cores {
				readyIn(t, indexes[k])
				got := views[k].entries()
				checkCausalOrder(t, got)
				if len(got) != total {
					t.Fatalf("replica %d was given %d of %d entries; Waiting %s", k, len(got), total, fmtWaits(indexes[k].Status().Waiting))
				}
			}
		})
	}
}

// failingStore is a durableLog whose StoreState fails once, on its call
// number failAt.
type failingStore struct {
	durableLog
	calls, failAt int
}

func (v *failingStore) StoreState(s []byte) error {
	v.calls++
	if v.calls == v.failAt {
		return fmt.Errorf("store state: %w", ErrStorage)
	}
	return v.durableLog.StoreState(s)
}

// A batch cut before an entry that waits, whose progress then fails to be
// stored, is mapped again after Retry: the wait does not outlive the
// progress that went back.
func TestCausalViewMapsAgainABatchWhoseProgressWasNotStored(t *testing.T) {
	a := rawFeed(t)
	missing := bytes.Repeat([]byte{0x42}, 32)
	appendRawBlocks(t, a, encodeBlock(nil, []byte("a0")), encodeBlock([]Pos{{Feed: missing, Seq: 0}}, []byte("a1")))
	z := newCore(t, &Options{OnError: func(error) {}})
	addRaw(t, z, a, 0, 2)
	v := &failingStore{durableLog: durableLog{&causalLog{causal: true}}, failAt: 2}
	xv := mustUse(t, z, "causal", 1, v)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := xv.Ready(ctx); err == nil || !errors.Is(err, ErrStorage) {
		t.Fatalf("ready: %v, want the StoreState error", err)
	}
	if err := xv.Retry(); err != nil {
		t.Fatal(err)
	}
	readyIn(t, xv)
	if st := xv.Status(); st.Indexed != 1 || st.State != ViewIdle {
		t.Fatalf("after Retry: %+v", st)
	}
	if ww := waitingOn(t, xv, a.Key()); ww.Seq != 1 || ww.Reason != "feed not held" {
		t.Fatalf("Waiting: %s", fmtWaits(xv.Status().Waiting))
	}
}
