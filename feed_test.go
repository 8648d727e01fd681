package kappa

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newFeed(t testing.TB, s Storage, opts *FeedOptions) *Feed {
	t.Helper()
	f, err := OpenFeed(s, "f/", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustAppend(t testing.TB, f *Feed, values ...string) uint64 {
	t.Helper()
	bs := make([][]byte, len(values))
	for i, v := range values {
		bs[i] = []byte(v)
	}
	seq, err := f.Append(bs...)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// mustFileBytes returns the content of a file in a MemStorage, failing the
// test at once if there is no such file.
func mustFileBytes(t testing.TB, s *MemStorage, name string) []byte {
	t.Helper()
	b, ok := s.fileBytes(name)
	if !ok {
		t.Fatalf("no file %s", name)
	}
	return b
}

func mustGet(t testing.TB, f *Feed, seq uint64) string {
	t.Helper()
	v, err := f.Get(context.Background(), seq)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

func TestAppendReturnsSequence(t *testing.T) {
	f := newFeed(t, NewMemStorage(), nil)
	for i, batch := range [][]string{{"a"}, {"b", "c"}, {"d"}, {}, {"e", "f", "g"}} {
		want := []uint64{0, 1, 3, 4, 4}[i]
		if got := mustAppend(t, f, batch...); got != want {
			t.Fatalf("append %v returned %d, want %d", batch, got, want)
		}
	}
	// Format 4: each block is its value and the byte 0x00 (no context).
	if f.Len() != 7 || f.ByteLen() != 14 {
		t.Fatalf("len %d bytes %d, want 7 14", f.Len(), f.ByteLen())
	}
	for i, want := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		if got := mustGet(t, f, uint64(i)); got != want {
			t.Errorf("get %d = %q, want %q", i, got, want)
		}
	}
}

func TestAppendBatchWritesOneSignature(t *testing.T) {
	s := NewMemStorage()
	f := newFeed(t, s, nil)
	mustAppend(t, f, "a", "b", "c")
	mustAppend(t, f, "d")
	sigs := mustFileBytes(t, s, "f/signatures")
	if n := (len(sigs) - headerSize) / sigRecordSize; n != 2 {
		t.Fatalf("two appends wrote %d signature records", n)
	}
}

func TestHeadOfEmptyFeedErrors(t *testing.T) {
	f := newFeed(t, NewMemStorage(), nil)
	if _, err := f.Head(context.Background()); !errors.Is(err, ErrEmpty) {
		t.Fatalf("head of empty feed: %v, want ErrEmpty", err)
	}
	mustAppend(t, f, "x", "y")
	if h, err := f.Head(context.Background()); err != nil || string(h) != "y" {
		t.Fatalf("head = %q, %v", h, err)
	}
}

func TestSignatureVerifiesAndEvilFeedDoesNot(t *testing.T) {
	kp := mustKeyPair(t)
	good := newFeed(t, NewMemStorage(), &FeedOptions{SecretKey: kp.SecretKey})
	evil := newFeed(t, NewMemStorage(), &FeedOptions{SecretKey: kp.SecretKey})
	mustAppend(t, good, "hello", "world")
	mustAppend(t, evil, "hello", "there")
	length, sig := good.Signature()
	if err := good.Verify(length, sig); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	if err := evil.Verify(length, sig); !errors.Is(err, ErrVerify) {
		t.Fatalf("good signature on evil feed: %v, want ErrVerify", err)
	}
	bad := bytes.Clone(sig)
	bad[0] ^= 1
	if err := good.Verify(length, bad); !errors.Is(err, ErrVerify) {
		t.Fatalf("flipped signature: %v, want ErrVerify", err)
	}
}

func TestOpenWithAnotherKeyFails(t *testing.T) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	other := mustKeyPair(t)
	for _, o := range []*FeedOptions{{Key: other.PublicKey}, {SecretKey: other.SecretKey}} {
		if _, err := OpenFeed(s, "f/", o); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("open with another key: %v, want ErrKeyMismatch", err)
		}
	}
}

func TestFeedFromKeyPairKeepsItAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	kp := mustKeyPair(t)
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFeed(s, "f/", &FeedOptions{SecretKey: kp.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, f, "one")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f = newFeed(t, s, nil)
	if !bytes.Equal(f.Key(), kp.PublicKey) || !f.Writable() {
		t.Fatalf("reopened key %x writable %v, want %x", f.Key(), f.Writable(), kp.PublicKey)
	}
	if got := mustGet(t, f, 0); got != "one" {
		t.Fatalf("get 0 = %q", got)
	}
	mustAppend(t, f, "two")
	if f.Len() != 2 {
		t.Fatalf("len %d", f.Len())
	}
}

func TestCloseFailsPendingGets(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	errc := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := r.Get(context.Background(), uint64(i))
			errc <- err
		}()
	}
	waitUntil(t, "two Gets waiting", func() bool { return r.waiting.Load() == 2 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("pending get after close: %v, want ErrClosed", err)
		}
	}
	if _, err := r.Get(context.Background(), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("get after close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

func TestContextCancelsWaitingGet(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := r.Get(ctx, 3)
		errc <- err
	}()
	waitUntil(t, "the Get waiting", func() bool { return r.waiting.Load() == 1 })
	cancel()
	if err := await(t, errc, "the Get"); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting get, context cancelled: %v", err)
	}
	ended, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	if _, err := r.Get(ended, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("get with an expired context: %v", err)
	}
}

func TestGetWaitsForPut(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	mustAppend(t, w, "a", "b", "c")
	got := make(chan string, 1)
	go func() {
		v, err := r.Get(context.Background(), 2)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(v)
	}()
	waitUntil(t, "the Get waiting", func() bool { return r.waiting.Load() == 1 })
	p, err := w.Proof(2, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	if v := await(t, got, "the Get"); v != "c" {
		t.Fatalf("waiting get returned %q", v)
	}
	if r.Has(0) || !r.Has(2) || r.Len() != 3 || r.Downloaded() != 1 {
		t.Fatalf("replica has0=%v has2=%v len=%d downloaded=%d", r.Has(0), r.Has(2), r.Len(), r.Downloaded())
	}
}

func TestGetBatch(t *testing.T) {
	f := newFeed(t, NewMemStorage(), nil)
	var want []string
	for i := range 50 {
		v := fmt.Sprintf("value-%d-%s", i, bytes.Repeat([]byte{'x'}, i))
		want = append(want, v)
		mustAppend(t, f, v)
	}
	for _, r := range [][2]uint64{{0, 50}, {0, 1}, {7, 33}, {49, 50}, {10, 10}} {
		got, err := f.GetBatch(context.Background(), r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(got)) != r[1]-r[0] {
			t.Fatalf("batch %v returned %d values", r, len(got))
		}
		for i, v := range got {
			if string(v) != want[r[0]+uint64(i)] {
				t.Fatalf("batch %v [%d] = %q", r, i, v)
			}
		}
	}
	if _, err := f.GetBatch(context.Background(), 40, 51); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("batch past the end: %v", err)
	}
}

func TestReplicaFromProofsEqualsOriginal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	w := newFeed(t, NewMemStorage(), nil)
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	for range 30 {
		n := 1 + rng.IntN(7)
		vals := make([][]byte, n)
		for i := range vals {
			vals[i] = []byte(fmt.Sprintf("%d", rng.Uint64()))
		}
		if _, err := w.Append(vals...); err != nil {
			t.Fatal(err)
		}
	}
	// Fetch in random ranges, in random order, some with the replica's own
	// length as what it already trusts.
	length := w.Len()
	var ranges [][2]uint64
	for s := uint64(0); s < length; {
		e := min(length, s+1+uint64(rng.IntN(9)))
		ranges = append(ranges, [2]uint64{s, e})
		s = e
	}
	rng.Shuffle(len(ranges), func(i, j int) { ranges[i], ranges[j] = ranges[j], ranges[i] })
	for _, rg := range ranges {
		p, err := w.Proof(rg[0], rg[1], r.Len())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err != nil {
			t.Fatalf("put %v (signed %v): %v", rg, p.Signature != nil, err)
		}
	}
	if r.Len() != w.Len() || r.ByteLen() != w.ByteLen() || r.Downloaded() != w.Len() {
		t.Fatalf("replica len %d bytes %d downloaded %d, original %d %d", r.Len(), r.ByteLen(), r.Downloaded(), w.Len(), w.ByteLen())
	}
	for i := range length {
		if a, b := mustGet(t, w, i), mustGet(t, r, i); a != b {
			t.Fatalf("entry %d: %q vs %q", i, a, b)
		}
	}
	l, sig := r.Signature()
	if err := w.Verify(l, sig); err != nil {
		t.Fatalf("replica's signature: %v", err)
	}
	// The replica can serve a third feed.
	c := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	p, err := r.Proof(0, length, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(p); err != nil {
		t.Fatal(err)
	}
	if c.Downloaded() != length {
		t.Fatalf("third feed has %d", c.Downloaded())
	}
}

func TestPutRejectsBadProofs(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	for i := range 10 {
		mustAppend(t, w, fmt.Sprint("v", i))
	}
	other := newFeed(t, NewMemStorage(), nil)
	mustAppend(t, other, "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9")
	otherProof, err := other.Proof(2, 5, 0)
	if err != nil {
		t.Fatal(err)
	}

	// A proof whose hashes still lead to roots fails on the signature over
	// those roots; one that is malformed or contradicts itself fails as a
	// bad proof.
	cases := []struct {
		name   string
		mangle func(p *Proof) *Proof
		want   error
	}{
		{"changed block", func(p *Proof) *Proof { p.Blocks[0] = []byte("evil"); return p }, ErrBadSignature},
		{"changed node", func(p *Proof) *Proof { p.Nodes[0].Hash[3] ^= 1; return p }, ErrBadSignature},
		{"changed size", func(p *Proof) *Proof { p.Nodes[0].Size++; return p }, ErrBadSignature},
		{"bad signature", func(p *Proof) *Proof { p.Signature[5] ^= 1; return p }, ErrBadSignature},
		{"short signature", func(p *Proof) *Proof { p.Signature = p.Signature[:10]; return p }, ErrBadSignature},
		{"no signature", func(p *Proof) *Proof { p.Signature = nil; return p }, ErrBadProof},
		{"missing node", func(p *Proof) *Proof { p.Nodes = p.Nodes[1:]; return p }, ErrBadProof},
		{"extra node", func(p *Proof) *Proof { p.Nodes = append(p.Nodes, p.Nodes[0]); return p }, ErrBadProof},
		{"wrong start", func(p *Proof) *Proof { p.Start++; return p }, ErrBadProof},
		{"length too small", func(p *Proof) *Proof { p.Length = 4; return p }, ErrBadProof},
		{"length zero", func(p *Proof) *Proof { p.Length = 0; return p }, ErrBadProof},
		{"huge length", func(p *Proof) *Proof { p.Length = 1 << 63; return p }, ErrBadProof},
		{"another writer's proof", func(*Proof) *Proof { return otherProof }, ErrBadSignature},
		{"nil", func(*Proof) *Proof { return nil }, ErrBadProof},
		// A peer's fault, like the rest (PROTOCOL.md §3): it ends a
		// session as a bad proof, and says why.
		{"block too large", func(p *Proof) *Proof { p.Blocks[0] = make([]byte, maxBlockBytes+1); return p }, ErrBlockTooLarge},
		{"block too large is a bad proof", func(p *Proof) *Proof { p.Blocks[0] = make([]byte, maxBlockBytes+1); return p }, ErrBadProof},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewMemStorage()
			r := newFeed(t, s, &FeedOptions{Key: w.Key()})
			p, err := w.Proof(2, 5, 0)
			if err != nil {
				t.Fatal(err)
			}
			before := s.names()
			sizes := map[string]int{}
			for _, n := range before {
				sizes[n] = len(mustFileBytes(t, s, n))
			}
			if err := r.Put(c.mangle(p)); !errors.Is(err, c.want) || !errors.Is(err, ErrVerify) {
				t.Fatalf("put: %v, want %v (an ErrVerify)", err, c.want)
			}
			for _, n := range before {
				if b := mustFileBytes(t, s, n); len(b) != sizes[n] {
					t.Errorf("rejected put changed %s", n)
				}
			}
			if r.Len() != 0 || r.Has(2) {
				t.Fatalf("rejected put changed the replica: len %d", r.Len())
			}
		})
	}
}

func TestBadInputReturnsErrors(t *testing.T) {
	s := NewMemStorage()
	if _, err := OpenFeed(s, "a/", &FeedOptions{Key: make([]byte, 31)}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("short public key: %v", err)
	}
	if _, err := OpenFeed(s, "b/", &FeedOptions{SecretKey: make([]byte, 63)}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("short secret key: %v", err)
	}
	f := newFeed(t, s, nil)
	mustAppend(t, f, "a")
	if _, err := f.Append([]byte("ok"), nil); !errors.Is(err, ErrInvalidValue) {
		t.Errorf("nil value: %v", err)
	}
	if f.Len() != 1 {
		t.Errorf("a refused append changed the length to %d", f.Len())
	}
	if _, err := f.Append(make([]byte, MaxBlockSize+1)); !errors.Is(err, ErrBlockTooLarge) {
		t.Errorf("huge value: %v", err)
	}
	if _, err := f.Get(context.Background(), 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("get past the end: %v", err)
	}
	if _, err := f.Get(context.Background(), 1<<63); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("get far past the end: %v", err)
	}
	if _, err := f.GetBatch(context.Background(), 5, 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("reversed batch: %v", err)
	}
	if _, err := f.Proof(0, 2, 0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("proof past the end: %v", err)
	}
	if err := f.Verify(0, nil); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("verify of length 0: %v, want ErrOutOfRange", err)
	}
	if err := f.Put(&Proof{Length: 1}); !errors.Is(err, ErrNotWritable) {
		t.Errorf("put into a writer: %v", err)
	}
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: f.Key()})
	if _, err := r.Append([]byte("x")); !errors.Is(err, ErrNotWritable) {
		t.Errorf("append to a replica: %v", err)
	}
	if _, err := r.Head(context.Background()); !errors.Is(err, ErrEmpty) {
		t.Errorf("head of empty replica: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Get(context.Background(), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("get after close: %v", err)
	}
	if _, err := f.Proof(0, 1, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("proof after close: %v", err)
	}
}

func TestDamagedDataIsReportedWithFileAndOffset(t *testing.T) {
	s := NewMemStorage()
	f := newFeed(t, s, nil)
	mustAppend(t, f, "first", "second", "third")
	b := mustFileBytes(t, s, "f/data")
	at := dataPos(1, uint64(bareBlockLen([]byte("first")))) // format 4: each block is 0x00 ‖ value
	b[at+dataLenLen+2] ^= 0xff                              // inside "second"
	s.setFileBytes("f/data", b)
	_, err := f.Get(context.Background(), 1)
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get of damaged entry: %v, want *CorruptError", err)
	}
	if ce.File != "f/data" || ce.Offset != at {
		t.Fatalf("corrupt error names %s at %d", ce.File, ce.Offset)
	}
	if _, err := f.GetBatch(context.Background(), 0, 3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("batch over damaged entry: %v", err)
	}
	if got := mustGet(t, f, 2); got != "third" {
		t.Fatalf("undamaged entry: %q", got)
	}
}

var seedFlag = flag.Int64("kappa.seed", 0, "random seed for the model and simulated crash tests (0: from the clock)")

// testSeed returns the -kappa.seed flag, or a seed from the clock.
func testSeed() int64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	return time.Now().UnixNano()
}

// TestFeedModel runs random appends, reads, batch reads and reopens against
// a plain slice. To replay a failure: go test -run TestFeedModel
// -kappa.seed=N, with the seed it logged.
func TestFeedModel(t *testing.T) {
	seed := testSeed()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	s := NewMemStorage()
	f, err := OpenFeed(s, "m/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { f.Close() }()
	var model []string
	ops := 2000
	if testing.Short() {
		ops = 500
	}
	for op := range ops {
		switch k := rng.IntN(10); {
		case k < 4:
			n := rng.IntN(5)
			vals := make([][]byte, n)
			for i := range vals {
				vals[i] = bytes.Repeat([]byte{byte('a' + rng.IntN(26))}, rng.IntN(300))
			}
			seq, err := f.Append(vals...)
			if err != nil {
				t.Fatalf("seed %d op %d: %v", seed, op, err)
			}
			if seq != uint64(len(model)) {
				t.Fatalf("seed %d op %d: seq %d, want %d", seed, op, seq, len(model))
			}
			for _, v := range vals {
				model = append(model, string(v))
			}
		case k < 7 && len(model) > 0:
			i := rng.IntN(len(model))
			if got := mustGet(t, f, uint64(i)); got != model[i] {
				t.Fatalf("seed %d op %d: get %d wrong", seed, op, i)
			}
		case k == 7 && len(model) > 0:
			// A sequential scan, which Get serves from its read-ahead.
			a := rng.IntN(len(model))
			for i := a; i < len(model) && i < a+600; i++ {
				if got := mustGet(t, f, uint64(i)); got != model[i] {
					t.Fatalf("seed %d op %d: scan at %d wrong", seed, op, i)
				}
			}
		case k < 9 && len(model) > 0:
			a := rng.IntN(len(model))
			b := a + rng.IntN(len(model)-a+1)
			got, err := f.GetBatch(context.Background(), uint64(a), uint64(b))
			if err != nil {
				t.Fatalf("seed %d op %d: %v", seed, op, err)
			}
			for i, v := range got {
				if string(v) != model[a+i] {
					t.Fatalf("seed %d op %d: batch [%d,%d) wrong at %d", seed, op, a, b, i)
				}
			}
		default:
			if err := f.Close(); err != nil {
				t.Fatalf("seed %d op %d: close: %v", seed, op, err)
			}
			if f, err = OpenFeed(s, "m/", nil); err != nil {
				t.Fatalf("seed %d op %d: reopen: %v", seed, op, err)
			}
			if f.Len() != uint64(len(model)) {
				t.Fatalf("seed %d op %d: reopened len %d, want %d", seed, op, f.Len(), len(model))
			}
			// Proofs of random ranges read stored parents: a replica
			// accepts them only if every stored node is right.
			for range 3 {
				if len(model) == 0 {
					break
				}
				a := rng.IntN(len(model))
				b := a + 1 + rng.IntN(len(model)-a)
				p, err := f.Proof(uint64(a), uint64(b), 0)
				if err != nil {
					t.Fatalf("seed %d op %d: proof [%d,%d): %v", seed, op, a, b, err)
				}
				r, err := OpenFeed(NewMemStorage(), "r/", &FeedOptions{Key: f.Key()})
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Put(p); err != nil {
					t.Fatalf("seed %d op %d: replica refused proof [%d,%d): %v", seed, op, a, b, err)
				}
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// countingStorage counts writes per file name.
type countingStorage struct {
	*MemStorage
	mu     sync.Mutex
	writes map[string]int
}

func (c *countingStorage) Open(name string, create bool) (File, error) {
	f, err := c.MemStorage.Open(name, create)
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, name: name, c: c}, nil
}

type countingFile struct {
	File
	name string
	c    *countingStorage
}

func (f *countingFile) WriteAt(p []byte, off int64) (int, error) {
	f.c.mu.Lock()
	f.c.writes[f.name]++
	f.c.mu.Unlock()
	return f.File.WriteAt(p, off)
}

func TestSingleAppendWritesEachFileOnce(t *testing.T) {
	s := &countingStorage{MemStorage: NewMemStorage(), writes: map[string]int{}}
	f := newFeed(t, s, &FeedOptions{NoSync: true})
	mustAppend(t, f, "warm up")
	const n = 1000
	clear(s.writes)
	for i := range n {
		mustAppend(t, f, fmt.Sprint(i))
	}
	// Now and then an append completes a parent too far left to join its
	// run (about one in 64); every other append writes data, tree and
	// signature once each.
	if s.writes["f/data"] != n || s.writes["f/signatures"] != n || s.writes["f/tree"] > n+n/16 {
		t.Fatalf("%d appends wrote %v", n, s.writes)
	}
	for i := range uint64(n) {
		if a, b := mustGet(t, f, 1+i), fmt.Sprint(i); a != b {
			t.Fatalf("entry %d = %q", 1+i, a)
		}
	}
	p, err := f.Proof(3, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: f.Key()})
	if err := r.Put(p); err != nil {
		t.Fatalf("proof over parents written by extended runs: %v", err)
	}
}

// holdSyncStorage holds the first Sync of the file called name until
// released: a commit in progress, for appends to queue behind.
type holdSyncStorage struct {
	*MemStorage
	name    string
	armed   atomic.Bool // set once the feed is open
	once    sync.Once
	held    chan struct{} // closed when the Sync is held
	release chan struct{}
}

func (s *holdSyncStorage) Open(name string, create bool) (File, error) {
	f, err := s.MemStorage.Open(name, create)
	if err != nil || name != s.name {
		return f, err
	}
	return &holdSyncFile{File: f, s: s}, nil
}

type holdSyncFile struct {
	File
	s *holdSyncStorage
}

func (f *holdSyncFile) Sync() error {
	if !f.s.armed.Load() {
		return f.File.Sync()
	}
	f.s.once.Do(func() {
		close(f.s.held)
		<-f.s.release
	})
	return f.File.Sync()
}

// queued returns the number of Append calls waiting for the next commit.
func (f *Feed) queued() int {
	q := f.queue.Load()
	if q == nil {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.reqs)
}

func TestConcurrentAppendsAreCoalescedAndOrdered(t *testing.T) {
	// Appends that arrive while a commit syncs share the next one: one
	// signature record for all of them.
	hs := &holdSyncStorage{MemStorage: NewMemStorage(), name: "f/journal", held: make(chan struct{}), release: make(chan struct{})}
	f := newFeed(t, hs, nil)
	hs.armed.Store(true)
	first := make(chan error, 1)
	go func() {
		_, err := f.Append([]byte("first"))
		first <- err
	}()
	deadline := time.After(60 * time.Second)
	select {
	case <-hs.held:
	case <-deadline:
		t.Fatal("the first append never synced its journal")
	}
	const queued = 16
	done := make(chan error, queued)
	for i := range queued {
		go func() {
			_, err := f.Append([]byte(fmt.Sprint("queued ", i)))
			done <- err
		}()
	}
	for f.queued() < queued {
		select {
		case <-deadline:
			t.Fatalf("%d appends queued, want %d", f.queued(), queued)
		default:
			runtime.Gosched()
		}
	}
	close(hs.release)
	for range queued {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	sigs := mustFileBytes(t, hs.MemStorage, "f/signatures")
	if records := (len(sigs) - headerSize) / sigRecordSize; records != 2 {
		t.Fatalf("%d signature records for %d appends queued behind one commit, want 2", records, queued+1)
	}
	if f.Len() != queued+1 {
		t.Fatalf("len %d, want %d", f.Len(), queued+1)
	}

	// Many writers: each value lands where its Append said.
	f = newFeed(t, NewMemStorage(), nil)
	const writers, each = 8, 50
	errc := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range each {
				v := fmt.Sprintf("%d/%d", w, i)
				seq, err := f.Append([]byte(v))
				if err != nil {
					errc <- err
					return
				}
				got, err := f.Get(context.Background(), seq)
				if err != nil || string(got) != v {
					errc <- fmt.Errorf("seq %d holds %q, want %q (%v)", seq, got, v, err)
					return
				}
			}
			errc <- nil
		}()
	}
	for range writers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if f.Len() != writers*each {
		t.Fatalf("len %d", f.Len())
	}
}

func TestDamageUnderASyncedSignatureIsReportedNotCut(t *testing.T) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "f/", nil)
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, f, "a", "b", "c", "d")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	tree := mustFileBytes(t, s, "f/tree")
	tree[headerSize+3*nodeSize+5] ^= 1 // inside the root, node 3
	s.setFileBytes("f/tree", tree)
	_, err = OpenFeed(s, "f/", nil)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.File != "f/tree" {
		t.Fatalf("open over a damaged root: %v, want a *CorruptError for f/tree", err)
	}
	if b := mustFileBytes(t, s, "f/data"); int64(len(b)) != dataPos(4, 8) { // format 4: four blocks 0x00 ‖ one byte
		t.Fatalf("the data was cut to %d bytes", len(b))
	}
}

func TestTreeRecordCopiedElsewhereIsDetected(t *testing.T) {
	s := NewMemStorage()
	f := newFeed(t, s, nil)
	mustAppend(t, f, "first", "second")
	tree := mustFileBytes(t, s, "f/tree")
	// Put leaf 1's record (entry "second") in leaf 0's place.
	copy(tree[headerSize:headerSize+nodeSize], tree[headerSize+2*nodeSize:headerSize+3*nodeSize])
	s.setFileBytes("f/tree", tree)
	if v, err := f.Get(context.Background(), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get of entry 0 returned %q, %v; want ErrCorrupt", v, err)
	}
}

// A feed opened from storage holds its data, tree and signatures files
// closed until first used. Its first readers and writers, racing each
// other and Close, open them once, see what was stored, and after Close
// fail with ErrClosed.
func TestReopenedFeedOpensItsFilesOnFirstUse(t *testing.T) {
	for _, kind := range []string{"dir", "mem"} {
		t.Run(kind, func(t *testing.T) {
			var s Storage = NewMemStorage()
			if kind == "dir" {
				d, err := OpenDir(t.TempDir(), &DirOptions{NoSync: true})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
				s = d
			}
			w, err := OpenFeed(s, "f/", &FeedOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				mustAppend(t, w, fmt.Sprint(i))
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			for round := range 20 {
				f, err := OpenFeed(s, "f/", &FeedOptions{NoSync: true})
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for g := range 4 {
					wg.Go(func() {
						vals, err := f.GetBatch(context.Background(), 0, 20)
						if err != nil {
							if round%2 == 1 && errors.Is(err, ErrClosed) {
								return // Close won the race
							}
							t.Errorf("round %d reader %d: %v", round, g, err)
							return
						}
						for i, v := range vals {
							if string(v) != fmt.Sprint(i) {
								t.Errorf("round %d: entry %d is %q", round, i, v)
							}
						}
					})
				}
				if round%2 == 1 {
					f.Close() // while the readers open the files
				}
				wg.Wait()
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				if _, err := f.Get(context.Background(), 0); !errors.Is(err, ErrClosed) {
					t.Fatalf("round %d: Get after Close: %v, want ErrClosed", round, err)
				}
			}
			f, err := OpenFeed(s, "f/", &FeedOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			mustAppend(t, f, "20") // the first use is a write
			if v, err := f.Get(context.Background(), 20); err != nil || string(v) != "20" {
				t.Fatalf("entry 20: %q, %v", v, err)
			}
		})
	}
}

// A feed opened from storage does not hold its roots, signature or secret
// key until it uses them. Its first appends, proofs and signature reads,
// racing each other, read them from the files: the writer goes on from
// where it was, and a replica reopened the same way serves proofs that
// verify.
func TestReopenedFeedReadsItsSignedStateOnFirstUse(t *testing.T) {
	s := NewMemStorage()
	w := newFeed(t, s, nil)
	mustAppend(t, w, "a", "b", "c")
	r, err := OpenFeed(s, "r/", &FeedOptions{Key: w.Key()})
	if err != nil {
		t.Fatal(err)
	}
	if err := replicate(w, r, 2); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r.Close()

	for round := range 10 {
		w, err := OpenFeed(s, "f/", nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := OpenFeed(s, "r/", &FeedOptions{Key: w.Key()})
		if err != nil {
			t.Fatal(err)
		}
		start := w.Len()
		var wg sync.WaitGroup
		for g := range 3 {
			wg.Go(func() {
				if _, err := w.Append([]byte(fmt.Sprint(round, g))); err != nil {
					t.Errorf("append: %v", err)
				}
			})
			wg.Go(func() {
				length, sig := w.Signature()
				if err := w.Verify(length, sig); err != nil {
					t.Errorf("signature of length %d: %v", length, err)
				}
			})
			wg.Go(func() {
				p, err := r.Proof(0, 3, 0)
				if err != nil {
					t.Errorf("replica proof: %v", err)
					return
				}
				fresh, err := OpenFeed(NewMemStorage(), "x/", &FeedOptions{Key: w.Key()})
				if err != nil {
					t.Error(err)
					return
				}
				defer fresh.Close()
				if err := fresh.Put(p); err != nil {
					t.Errorf("put of a reopened replica's proof: %v", err)
				}
			})
		}
		wg.Wait()
		if got := w.Len(); got != start+3 {
			t.Fatalf("round %d: length %d after 3 appends at %d", round, got, start)
		}
		// The appends extended the signed tree: a new replica verifies it.
		check, err := OpenFeed(NewMemStorage(), "x/", &FeedOptions{Key: w.Key()})
		if err != nil {
			t.Fatal(err)
		}
		if err := replicate(w, check, 5); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		check.Close()
		w.Close()
		r.Close()
	}
}

// A writer's roots and secret key are read again on its first append after
// opening (one with values): damage to them since then fails the append
// with ErrCorrupt, and appends nothing.
func TestAppendAfterDamageSinceOpenFails(t *testing.T) {
	for _, file := range []string{"f/tree", "f/key", "f/signatures"} {
		t.Run(file, func(t *testing.T) {
			s := NewMemStorage()
			w := newFeed(t, s, nil)
			mustAppend(t, w, "a", "b", "c")
			w.Close()
			w = newFeed(t, s, nil)
			b := mustFileBytes(t, s, file)
			switch file {
			case "f/tree":
				b[headerSize+4*nodeSize] ^= 1 // node 4, a root of length 3
			case "f/key":
				b[keySecretOff] ^= 1
			case "f/signatures":
				b[len(b)-sigRecordSize+10] ^= 1
			}
			s.setFileBytes(file, b)
			// An empty append reads nothing: it returns the length.
			if seq, err := w.Append(); err != nil || seq != 3 {
				t.Fatalf("empty append after damage to %s: %d, %v; want 3, nil", file, seq, err)
			}
			if _, err := w.Append([]byte("d")); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("append after damage to %s: %v, want ErrCorrupt", file, err)
			}
			if got := w.Len(); got != 3 {
				t.Fatalf("length %d after a failed append, want 3", got)
			}
		})
	}
}

// TestPutPastWhatFilesAddressIsErrFull: a signed proof of a length the
// protocol allows (up to 2^60) but past 2^56, where a tree node's place in
// its file would not fit a file offset, is refused with ErrFull (not a
// peer's fault: no ErrVerify) and writes nothing.
func TestPutPastWhatFilesAddressIsErrFull(t *testing.T) {
	pub, sec, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, length := range []uint64{maxStoredLength + 1, 1 << 57, 3 << 57, maxTreeLength} {
		t.Run(fmt.Sprint(length), func(t *testing.T) {
			p := longProof(t, sec, length)
			// On a directory: a MemStorage would hold a file of the size a
			// write past a wrapped offset asks for, and could run out of
			// memory where this test should fail.
			dir := t.TempDir()
			s, err := OpenDir(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			r := newFeed(t, s, &FeedOptions{Key: pub})
			sizes := func() map[string]int64 {
				m := map[string]int64{}
				filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
					if err == nil && !d.IsDir() {
						if fi, err := d.Info(); err == nil {
							m[path] = fi.Size()
						}
					}
					return nil
				})
				return m
			}
			before := sizes()
			if err := r.Put(p); !errors.Is(err, ErrFull) || errors.Is(err, ErrVerify) {
				t.Fatalf("put at length %d: %v, want ErrFull and no ErrVerify", length, err)
			}
			if after := sizes(); !maps.Equal(before, after) {
				t.Errorf("refused put changed the files: %v, then %v", before, after)
			}
			if r.Len() != 0 || r.Has(0) {
				t.Fatalf("refused put changed the replica: len %d", r.Len())
			}
		})
	}
}

// longProof returns the proof of entry 0 of a feed of length entries,
// signed with sec: the entry's block and, beside it, made-up subtrees of
// one byte an entry.
func longProof(t testing.TB, sec ed25519.PrivateKey, length uint64) *Proof {
	t.Helper()
	p := &Proof{Blocks: [][]byte{{0, 'x'}}, Length: length}
	for _, i := range proofIndexes(nil, 0, 1, length) {
		lo, hi := flatBlocks(i)
		p.Nodes = append(p.Nodes, Node{Index: i, Hash: sha256.Sum256(binary.BigEndian.AppendUint64(nil, i)), Size: hi - lo})
	}
	tree, err := proofTree(p, newLeafHasher(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Signature = signRoots(sec, treeHash(tree.roots), length)
	return p
}
