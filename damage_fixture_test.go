package kappa

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// damageFeed is one feed of a damageFixture, with what it acknowledged.
type damageFeed struct {
	slot   int               // its place in the manifest
	name   string            // the local writer's name, "" for a replica
	key    []byte            // its public key
	length uint64            // its signed length
	values [][]byte          // the writer's values, at least up to length
	blocks [][]byte          // its blocks up to length: the values with their causal contexts (format 4)
	held   []bool            // the entries below length stored here
	signed []uint64          // the lengths of its signature records, ascending
	sigs   map[uint64][]byte // the writer's signature of each of them

	// A replica's proofs from its writer at length: of blocks it holds,
	// reaching the roots of each of its older signed lengths (so that its
	// Put raises the length from any of them and adds no block; see
	// damageLengthProof), and of every block.
	lengthProof, fullProof *Proof
}

func (d *damageFeed) prefix() string { return feedPrefix(d.slot) }

// damageFixture is a closed database on a MemStorage: its files and its
// feeds.
type damageFixture struct {
	files map[string][]byte
	names []string // sorted
	feeds []*damageFeed
}

// restore returns a new MemStorage holding the fixture's files.
func (fx *damageFixture) restore() *MemStorage {
	s := NewMemStorage()
	for _, name := range fx.names {
		s.setFileBytes(name, fx.files[name])
	}
	return s
}

// damageCopy returns a new MemStorage holding the current content of every
// file of s (synced or not), as a clean shutdown now would leave them.
func damageCopy(s *MemStorage) *MemStorage {
	c := NewMemStorage()
	for _, name := range s.names() {
		b, _ := s.fileBytes(name)
		c.setFileBytes(name, b)
	}
	return c
}

// damageValue is the value a fixture writer appends at seq: short ones, an
// empty one every fourth, some longer.
func damageValue(who string, seq int) []byte {
	switch {
	case seq%4 == 3:
		return []byte{}
	case seq%5 == 4:
		return []byte(who + " " + strings.Repeat("long value ", 10+seq))
	}
	return fmt.Appendf(nil, "%s %d", who, seq)
}

// damageAppend appends the batches (sizes) to w, recording what w
// acknowledged, and calls after (if not nil) after each.
func damageAppend(tb testing.TB, w *Feed, who string, batches []int, values *[][]byte, after func()) {
	tb.Helper()
	for _, n := range batches {
		batch := make([][]byte, n)
		for i := range batch {
			batch[i] = damageValue(who, len(*values)+i)
		}
		seq, err := w.Append(batch...)
		if err != nil {
			tb.Fatal(err)
		}
		if seq != uint64(len(*values)) {
			tb.Fatalf("%s: append at %d, want %d", who, seq, len(*values))
		}
		*values = append(*values, batch...)
		if after != nil {
			after()
		}
	}
}

// damagePut stores blocks [start, end) of src, with a proof at src's
// current length, in the replica r.
func damagePut(tb testing.TB, src, r *Feed, start, end uint64) {
	tb.Helper()
	p, err := src.Proof(start, end, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		tb.Fatal(err)
	}
}

// damageLengthProof returns a proof at src's length of blocks r holds that
// determines every root of each length in signed below it: a proof that
// raises a replica's length must reach the roots it holds, and the replica
// may be back at any of those lengths after damage. It is the proof of one
// block if one will do, else of everything r holds, which must then be
// every entry.
func damageLengthProof(tb testing.TB, src, r *Feed, signed []uint64) *Proof {
	tb.Helper()
	reaches := func(p *Proof) bool {
		t, err := proofTree(p, newLeafHasher(), nil)
		if err != nil {
			tb.Fatal(err)
		}
		for _, l := range signed {
			if _, ok := t.unreachedRoot(l); l < p.Length && !ok {
				return false
			}
		}
		return true
	}
	for s := range r.Len() {
		if !r.Has(s) {
			continue
		}
		p, err := src.Proof(s, s+1, 0)
		if err != nil {
			tb.Fatal(err)
		}
		if reaches(p) {
			return p
		}
	}
	if !r.HasRange(0, r.Len()) {
		tb.Fatalf("no block the replica holds reaches the roots of %v", signed)
	}
	p, err := src.Proof(0, r.Len(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// damageKeyPair is the key pair of the fixture writer called name: fixed, so
// that fixtures built by different processes (fuzz workers) are the same
// bytes.
func damageKeyPair(tb testing.TB, name string) KeyPair {
	tb.Helper()
	seed := sha256.Sum256([]byte("kappa damage fixture " + name))
	kp, err := KeyPairFromSecret(seed[:])
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

// buildDamageFixture builds the database. The full one has two writers
// (alice, bob), a replica of carol that holds everything, a sparse replica
// of dave and a writer with no entry (erin); the small one has alice, dave's
// sparse replica and erin.
func buildDamageFixture(tb testing.TB, small bool) *damageFixture {
	tb.Helper()
	s := NewMemStorage()
	shared := sha256.Sum256([]byte("kappa damage fixture"))
	c, err := New(s, &Options{SharedKey: shared[:]})
	if err != nil {
		tb.Fatal(err)
	}
	remote, err := New(NewMemStorage(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer remote.Close()
	var feeds []*damageFeed
	writer := func(name string, batches []int) {
		w, err := c.WriterWithKeyPair(name, damageKeyPair(tb, name))
		if err != nil {
			tb.Fatal(err)
		}
		d := &damageFeed{slot: len(feeds), name: name, key: w.Key()}
		d.sigs = map[uint64][]byte{}
		damageAppend(tb, w, name, batches, &d.values, func() {
			l, sig := w.Signature()
			d.signed, d.sigs[l] = append(d.signed, l), sig
		})
		d.length = uint64(len(d.values))
		d.blocks = mustBlocks(tb, w, d.length)
		d.held = make([]bool, d.length)
		for i := range d.held {
			d.held[i] = true
		}
		feeds = append(feeds, d)
	}
	// replica replicates the remote writer who, appended in batches; after
	// append number k it stores the ranges puts[k] (none if absent).
	replica := func(who string, batches []int, puts map[int][][2]uint64) {
		src, err := remote.WriterWithKeyPair(who, damageKeyPair(tb, who))
		if err != nil {
			tb.Fatal(err)
		}
		r, err := c.AddFeed(src.Key())
		if err != nil {
			tb.Fatal(err)
		}
		d := &damageFeed{slot: len(feeds), key: src.Key(), sigs: map[uint64][]byte{}}
		k := 0
		damageAppend(tb, src, who, batches, &d.values, func() {
			for _, rg := range puts[k] {
				damagePut(tb, src, r, rg[0], rg[1])
			}
			if len(puts[k]) > 0 {
				l, sig := r.Signature()
				d.signed, d.sigs[l] = append(d.signed, l), sig
			}
			k++
		})
		d.length = r.Len()
		if d.length != src.Len() {
			tb.Fatalf("replica of %s has length %d, its writer %d", who, d.length, src.Len())
		}
		d.blocks = mustBlocks(tb, src, d.length)
		d.lengthProof = damageLengthProof(tb, src, r, d.signed)
		if d.fullProof, err = src.Proof(0, d.length, 0); err != nil {
			tb.Fatal(err)
		}
		d.held = make([]bool, d.length)
		for i := range d.held {
			d.held[i] = r.Has(uint64(i))
		}
		feeds = append(feeds, d)
	}
	if small {
		writer("alice", []int{1, 2, 1})
		replica("dave", []int{3, 2, 3}, map[int][][2]uint64{1: {{1, 3}}, 2: {{4, 5}, {6, 7}}}) // 4 reaches the roots of 5
	} else {
		writer("alice", []int{1, 3, 1, 2})
		writer("bob", []int{2, 1})
		replica("carol", []int{2, 3, 4}, map[int][][2]uint64{0: {{0, 2}}, 1: {{2, 5}}, 2: {{5, 9}}})
		replica("dave", []int{3, 2, 3}, map[int][][2]uint64{1: {{1, 3}}, 2: {{4, 5}, {6, 7}}}) // 4 reaches the roots of 5
	}
	writer("erin", nil) // a writer with no entry yet
	if err := c.Close(); err != nil {
		tb.Fatal(err)
	}
	fx := &damageFixture{files: map[string][]byte{}, names: s.names(), feeds: feeds}
	for _, name := range fx.names {
		fx.files[name], _ = s.fileBytes(name)
	}
	// The fixture must be what the test believes it is.
	res := checkDamagedDB(fx, fx.restore(), damageCheck{})
	if len(res.problems) > 0 || res.outcome != outcomeClean {
		tb.Fatalf("undamaged fixture (outcome %v): %s", res.outcome, strings.Join(res.problems, "; "))
	}
	return fx
}

var (
	damageFixtureOnce [2]sync.Once
	damageFixtureVal  [2]*damageFixture
)

// getDamageFixture builds each fixture once per process; the fixture is
// only read afterwards.
func getDamageFixture(tb testing.TB, small bool) *damageFixture {
	i := 0
	if small {
		i = 1
	}
	damageFixtureOnce[i].Do(func() { damageFixtureVal[i] = buildDamageFixture(tb, small) })
	if damageFixtureVal[i] == nil {
		tb.Fatal("fixture failed to build")
	}
	return damageFixtureVal[i]
}
