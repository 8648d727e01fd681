package kappa

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// entriesOf indexes every feed of c with a new view and returns the
// entries it mapped, by feed key and seq ("%x@%d").
func entriesOf(t *testing.T, c *Core) map[string]Entry {
	t.Helper()
	var mu sync.Mutex
	got := map[string]Entry{}
	name := fmt.Sprintf("entries%d", entriesViews.Add(1))
	x := mustUse(t, c, name, 1, viewFunc(func(es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			got[entryName(e.Key, e.Seq)] = e
		}
		return nil
	}))
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}

var entriesViews atomic.Int64

func entryName(key []byte, seq uint64) string { return fmt.Sprintf("%x@%d", key, seq) }

// mustEntry returns the entry seq of f's feed in es.
func mustEntry(t *testing.T, es map[string]Entry, f *Feed, seq uint64) Entry {
	t.Helper()
	e, ok := es[entryName(f.Key(), seq)]
	if !ok {
		t.Fatalf("the view has no entry %d of feed %x", seq, f.Key()[:4])
	}
	return e
}

// checkDeps checks that e's Deps are exactly want (sorted by key here).
func checkDeps(t *testing.T, what string, e Entry, want ...Pos) {
	t.Helper()
	slices.SortFunc(want, func(a, b Pos) int { return bytes.Compare(a.Feed, b.Feed) })
	if !slices.EqualFunc(e.Deps, want, func(a, b Pos) bool { return bytes.Equal(a.Feed, b.Feed) && a.Seq == b.Seq }) {
		t.Fatalf("%s: Deps %s, want %s", what, fmtDeps(e.Deps), fmtDeps(want))
	}
}

func fmtDeps(ps []Pos) string {
	if ps == nil {
		return "nil"
	}
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%x@%d", p.Feed[:4], p.Seq))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// The first entry of an Append call names the head the writer held of each
// other feed; the later entries of the call name nothing; and a writer that
// appends again without news records nothing.
func TestFirstEntryOfAppendNamesTheHeadsTheWriterHeld(t *testing.T) {
	c := newCore(t, nil)
	a, b := mustWriter(t, c, "a"), mustWriter(t, c, "b")
	appendN(t, a, 3, "a")    // a 0..2: b is empty, no context
	appendN(t, b, 2, "b")    // b 0..1: names a@2
	appendN(t, b, 1, "more") // b 2: nothing new
	appendN(t, a, 2, "a")    // a 3..4: names b@2
	es := entriesOf(t, c)
	checkDeps(t, "a 0", mustEntry(t, es, a, 0))
	checkDeps(t, "a 1", mustEntry(t, es, a, 1))
	checkDeps(t, "b 0", mustEntry(t, es, b, 0), Pos{a.Key(), 2})
	checkDeps(t, "b 1 (later in the call)", mustEntry(t, es, b, 1))
	checkDeps(t, "b 2 (no news)", mustEntry(t, es, b, 2))
	checkDeps(t, "a 3", mustEntry(t, es, a, 3), Pos{b.Key(), 2})
	checkDeps(t, "a 4 (later in the call)", mustEntry(t, es, a, 4))
	if v := mustGet(t, b, 0); v != "b0" {
		t.Fatalf("Get of an entry with a context: %q, want the value alone", v)
	}
	if e := mustEntry(t, es, b, 0); string(e.Value) != "b0" {
		t.Fatalf("Entry.Value of an entry with a context: %q", e.Value)
	}
	if vs, err := b.GetBatch(ctxT(t), 0, 2); err != nil || len(vs) != 2 || string(vs[0]) != "b0" || string(vs[1]) != "b1" {
		t.Fatalf("GetBatch over an entry with a context: %q, %v; want the values alone", vs, err)
	}
	if v, err := a.Head(ctxT(t)); err != nil || string(v) != "a1" {
		t.Fatalf("Head, an entry with a context: %q, %v; want the value alone", v, err)
	}
}

// The delta: a writer's context leaves out the feeds whose head it named
// before, and names those that changed since.
func TestContextOmitsFeedsWhoseHeadDidNotChange(t *testing.T) {
	c := newCore(t, nil)
	a, b, w := mustWriter(t, c, "a"), mustWriter(t, c, "b"), mustWriter(t, c, "w")
	appendN(t, a, 2, "a")
	appendN(t, b, 3, "b")
	appendN(t, w, 1, "w") // w 0: names b@2 (which follows a@1: reduced)
	appendN(t, a, 1, "a") // a 2
	appendN(t, w, 1, "w") // w 1: names a@2 only
	es := entriesOf(t, c)
	checkDeps(t, "w 0", mustEntry(t, es, w, 0), Pos{b.Key(), 2})
	checkDeps(t, "w 1", mustEntry(t, es, w, 1), Pos{a.Key(), 2})
}

// A head is the end of the contiguous prefix of a feed that the writer
// holds: a sparse replica's first missing entry bounds it.
func TestContextNamesTheContiguousPrefixOfASparseReplica(t *testing.T) {
	src := newFeed(t, NewMemStorage(), nil)
	mustAppend(t, src, "0", "1", "2", "3", "4")
	c := newCore(t, nil)
	r, err := c.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, src, 0, 2)
	mustPut(t, r, src, 3, 5)
	w := mustWriter(t, c, "w")
	appendN(t, w, 1, "w")
	checkDeps(t, "w 0", mustEntry(t, entriesOf(t, c), w, 0), Pos{src.Key(), 1})
}

// The context travels inside the block: a replica's view sees the same
// Deps as the writer's database.
func TestReplicaSeesTheSameDeps(t *testing.T) {
	x, y := sharedPair(t, nil)
	a, b := mustWriter(t, x, "a"), mustWriter(t, x, "b")
	appendN(t, a, 2, "a")
	appendN(t, b, 2, "b")
	appendN(t, a, 1, "a")
	mustReplicate(t, "pipe", x, y)
	ex, ey := entriesOf(t, x), entriesOf(t, y)
	if len(ey) != 5 || len(ex) != 5 {
		t.Fatalf("the writer's view has %d entries, the replica's %d, want 5", len(ex), len(ey))
	}
	for k, e := range ex {
		checkDeps(t, "replica's "+k, ey[k], e.Deps...)
	}
	checkDeps(t, "replica's b 0", mustEntry(t, ey, b, 0), Pos{a.Key(), 1})
	checkDeps(t, "replica's a 2", mustEntry(t, ey, a, 2), Pos{b.Key(), 1})
	// A writer at the replica names the feeds it got: a@2 alone, which
	// follows b@1 (reduced).
	z := mustWriter(t, y, "z")
	appendN(t, z, 1, "z")
	checkDeps(t, "z 0", mustEntry(t, entriesOf(t, y), z, 0), Pos{a.Key(), 2})
}

// appendRawBlocks appends blocks as they are to f, a writable feed opened
// alone (whose appends record no context): a writer that encodes contexts
// its own way, or wrongly.
func appendRawBlocks(t *testing.T, f *Feed, blocks ...[]byte) {
	t.Helper()
	if f.cfg.context != nil {
		t.Fatal("appendRawBlocks: the feed records contexts")
	}
	var batch []*appendReq
	for _, b := range blocks {
		batch = append(batch, &appendReq{values: [][]byte{nil}, prefix: b})
	}
	f.writeMu.Lock()
	f.commitWriteLocked(batch)
	f.writeMu.Unlock()
	for _, r := range batch {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// A block whose context breaks a rule is a malformed block: stored, served
// and replicated as any (it is validly signed), its Value what follows a
// prefix that fits (else the whole block), its Deps nil.
func TestMalformedContextIsStoredAndServed(t *testing.T) {
	kp := mustKeyPair(t)
	src := newFeed(t, NewMemStorage(), &FeedOptions{SecretKey: kp.SecretKey})
	other := bytes.Repeat([]byte{0x77}, 32)
	low, high := bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0xee}, 32)
	pair := func(key []byte, seq byte) []byte { return append(bytes.Clone(key), seq) }
	cases := []struct {
		name  string
		block []byte
		value string
	}{
		{"keys out of order", slices.Concat([]byte{67, 2}, pair(high, 0), pair(low, 0), []byte("v1")), "v1"},
		{"names its own feed", slices.Concat([]byte{34, 1}, pair(kp.PublicKey, 3), []byte("v2")), "v2"},
		{"n past the end", []byte{0x7f, 'v', '3'}, "\x7fv3"},
		{"count 0", []byte{1, 0, 'v', '4'}, "v4"},
		{"bytes after the last pair", slices.Concat([]byte{35, 1}, pair(other, 1), []byte{9}, []byte("v5")), "v5"},
		{"seq not in its shortest encoding", slices.Concat([]byte{35, 1}, other, []byte{0x81, 0x00}, []byte("v6")), "v6"},
		{"empty block", []byte{}, ""},
	}
	for _, tc := range cases {
		appendRawBlocks(t, src, tc.block)
	}
	good := encodeBlock([]Pos{{other, 5}}, []byte("ok"))
	appendRawBlocks(t, src, good)

	x, y := sharedPair(t, nil)
	r, err := x.AddFeed(src.Key())
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, src, 0, src.Len())
	mustReplicate(t, "pipe", x, y) // x serves the malformed blocks to y
	for _, c := range []*Core{x, y} {
		f := c.Feed(src.Key())
		if f == nil || f.NextMissing(0) != src.Len() {
			t.Fatalf("the feed is not held whole")
		}
		es := entriesOf(t, c)
		for i, tc := range cases {
			e := mustEntry(t, es, f, uint64(i))
			if string(e.Value) != tc.value || e.Deps != nil {
				t.Fatalf("%s: Value %q Deps %s, want %q and nil", tc.name, e.Value, fmtDeps(e.Deps), tc.value)
			}
			if v := mustGet(t, f, uint64(i)); v != tc.value {
				t.Fatalf("%s: Get %q, want %q", tc.name, v, tc.value)
			}
			if b := mustBlocks(t, f, uint64(i+1))[i]; !bytes.Equal(b, tc.block) {
				t.Fatalf("%s: stored block %x, the writer's %x", tc.name, b, tc.block)
			}
		}
		e := mustEntry(t, es, f, uint64(len(cases)))
		checkDeps(t, "the well-formed block", e, Pos{other, 5})
		if string(e.Value) != "ok" {
			t.Fatalf("the well-formed block's value %q", e.Value)
		}
	}
}

// The value encoding applies to the value: a JSON database takes a JSON
// value whose block starts with a binary context, and its views decode it.
func TestJSONEncodingChecksTheValueNotTheContext(t *testing.T) {
	var mu sync.Mutex
	var errs []error
	c := newCore(t, &Options{ValueEncoding: JSON, OnError: func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}})
	a, b := mustWriter(t, c, "a"), mustWriter(t, c, "b")
	appendJSON(t, a, 1)
	appendJSON(t, b, 2) // its block: a context naming a@0, then "2"
	if blocks := mustBlocks(t, b, 1); isJSON(blocks[0]) {
		t.Fatalf("the block %q is JSON: it should start with a context", blocks[0])
	}
	v := &sumView{}
	x := mustUse(t, c, "sum", 1, v)
	if err := x.Ready(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if v.Sum() != 3 || len(errs) > 0 {
		t.Fatalf("sum %d, errors %v; want 3 and none", v.Sum(), errs)
	}
	if _, err := b.Append([]byte("{not json")); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("append of a value that is not JSON: %v, want ErrInvalidValue", err)
	}
}

func isJSON(b []byte) bool { return JSON.check(b) == nil }

// A commit that recorded a context and failed is forgotten: the writer's
// next context names those heads again.
func TestFailedAppendForgetsTheContextItRecorded(t *testing.T) {
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, b := mustWriter(t, c, "a"), mustWriter(t, c, "b")
	appendN(t, a, 1, "a")
	appendN(t, b, 1, "b") // b's files exist: the next write is the append's
	appendN(t, a, 1, "a")
	s.failNextWrite(errors.New("injected"))
	if _, err := b.Append([]byte("lost")); err == nil {
		t.Fatal("append did not fail")
	}
	appendN(t, b, 1, "again")
	checkDeps(t, "b 1", mustEntry(t, entriesOf(t, c), b, 1), Pos{a.Key(), 1})
}

// A context that would push a block past MaxBlockSize and its bound fails
// the Append call, which appends nothing; a value of MaxBlockSize with the
// largest context is appended and read back.
func TestAppendRefusesAContextOverItsBound(t *testing.T) {
	f := newFeed(t, NewMemStorage(), nil)
	n := maxContextBytes/(32+3) + 1 // each pair: a key and a 3-byte seq
	f.cfg.context = func(*Feed) []Pos {
		ctx := make([]Pos, n)
		for i := range ctx {
			key := make([]byte, 32)
			binary.BigEndian.PutUint64(key, uint64(i)+1)
			ctx[i] = Pos{key, 1 << 20}
		}
		return ctx
	}
	lost := 0 // a Core's provider remembers what it named: it must forget
	f.cfg.contextLost = func(*Feed) { lost++ }
	if _, err := f.Append([]byte("v")); !errors.Is(err, ErrBlockTooLarge) {
		t.Fatalf("append with a context of %d feeds: %v, want ErrBlockTooLarge", n, err)
	}
	if f.Len() != 0 || lost != 1 {
		t.Fatalf("length %d after a refused append, context lost %d times (want once)", f.Len(), lost)
	}
	n--
	big := bytes.Repeat([]byte{'v'}, MaxBlockSize)
	if _, err := f.Append(big); err != nil {
		t.Fatalf("append with a context of %d feeds: %v", n, err)
	}
	f.cfg.context = nil
	if v, err := f.Get(ctxT(t), 0); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("get of the largest value with the largest context: %d bytes, %v", len(v), err)
	}
	if got := f.ByteLen(); got <= MaxBlockSize+maxContextBytes-64 || got > maxBlockBytes {
		t.Fatalf("the block is %d bytes: not near the largest, %d", got, maxBlockBytes)
	}
}

// A database of format 3 is refused on open, naming both versions.
func TestFormat3DatabaseIsRefused(t *testing.T) {
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, mustWriter(t, c, "w"), 1, "v")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := s.fileBytes(fileDB)
	b = bytes.Clone(b)
	binary.BigEndian.PutUint32(b[dbVersionAt:], 3)
	binary.BigEndian.PutUint32(b[dbCRCOff:], crc32.Checksum(b[:dbCRCOff], castagnoli))
	s.setFileBytes(fileDB, b)
	_, err = New(s, nil)
	if err == nil || !strings.Contains(err.Error(), "format version 3") || !strings.Contains(err.Error(), "format version 4") {
		t.Fatalf("open of a format-3 database: %v, want an error naming versions 3 and 4", err)
	}
}

// withoutContexts makes c's writers record no causal context, as a
// database of format 3 did: for tests and benchmark fixtures of many local
// writers, where each writer's first append would look at the heads of all
// those before it (quadratic in the number of writers: reduced, the context
// is one head, but finding it reads every head, and each writer remembers
// what it named of each feed; 10,000 writers take minutes rather than
// seconds) and measure that rather than what they are about. Call it
// before the first append.
func withoutContexts(c *Core) {
	c.feedCfg.context, c.feedCfg.contextLost = nil, nil
}

// Writers appending at the same time each record contexts of their own:
// every Pos names another feed's existing entry, and what a writer names
// of a feed only grows.
func TestConcurrentWritersRecordSaneContexts(t *testing.T) {
	c := newCore(t, &Options{NoSync: true})
	ws := make([]*Feed, 4)
	for i := range ws {
		ws[i] = mustWriter(t, c, fmt.Sprint("w", i))
	}
	const each = 50
	var wg sync.WaitGroup
	errs := make(chan error, len(ws))
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := w.Append([]byte(fmt.Sprint(i))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	es := entriesOf(t, c)
	named := 0
	for _, w := range ws {
		last := map[string]uint64{}
		for seq := range uint64(each) {
			for _, p := range mustEntry(t, es, w, seq).Deps {
				g := c.Feed(p.Feed)
				if g == nil || g == w || p.Seq >= g.Len() {
					t.Fatalf("feed %x entry %d names %x@%d", w.Key()[:4], seq, p.Feed[:4], p.Seq)
				}
				if s, ok := last[string(p.Feed)]; ok && p.Seq <= s {
					t.Fatalf("feed %x entry %d names %x@%d after @%d", w.Key()[:4], seq, p.Feed[:4], p.Seq, s)
				}
				last[string(p.Feed)] = p.Seq
				named++
			}
		}
	}
	if named == 0 {
		t.Fatal("no entry names another")
	}
}
