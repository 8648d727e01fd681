package kappa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Native fuzz targets. Each builds a real feed once per process from a fixed
// key pair (so that inputs saved under testdata/fuzz stay meaningful), seeds
// the corpus with real proofs or real files of it, and checks properties of
// what the library does with the fuzzer's mutations.

// fuzzSecret is the writer key pair of every fuzz target.
func fuzzSecret() []byte {
	// Format 4's own key: seeds saved under format 3 hold proofs that the
	// format 3 key ("kappa fuzz writer") signed over blocks without the
	// context prefix; under this key they are forgeries, as the fuzz
	// targets assume every input but the writer's own proofs is.
	seed := sha256.Sum256([]byte("kappa fuzz writer, format 4"))
	return seed[:]
}

// fuzzValue is the value the fuzz writer appends at seq: some empty, most
// short, a few a few hundred bytes.
func fuzzValue(seq uint64) []byte {
	switch seq % 5 {
	case 3:
		return []byte{}
	case 4:
		return bytes.Repeat([]byte{byte('A' + seq%26)}, 200+int(seq))
	}
	return []byte(fmt.Sprintf("value %d", seq))
}

// fuzzBatches are the sizes of the writer's appends; every prefix sum is a
// length the writer signed.
var fuzzBatches = []int{1, 2, 3, 1, 5, 1, 4}

// fuzzWriter is a writer feed holding the fuzzBatches appends, with the
// proofs it signed after each append.
type fuzzWriter struct {
	feed    *Feed
	storage *MemStorage
	values  [][]byte
	blocks  [][]byte            // the blocks stored: 0x00 ‖ value (format 4; a feed alone records no context)
	signed  []uint64            // lengths with a signature, ascending
	proofs  map[uint64][]*Proof // by length: proofs made at that length
}

var (
	fuzzWriterOnce sync.Once
	fuzzWriterVal  *fuzzWriter
	fuzzWriterErr  error
)

// getFuzzWriter builds the shared writer once per process. It is only read
// afterwards (Get, Proof, readNode), which is safe for concurrent use.
func getFuzzWriter(tb testing.TB) *fuzzWriter {
	fuzzWriterOnce.Do(func() { fuzzWriterVal, fuzzWriterErr = buildFuzzWriter() })
	if fuzzWriterErr != nil {
		tb.Fatal(fuzzWriterErr)
	}
	return fuzzWriterVal
}

func buildFuzzWriter() (*fuzzWriter, error) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "w/", &FeedOptions{SecretKey: fuzzSecret()})
	if err != nil {
		return nil, err
	}
	w := &fuzzWriter{feed: f, storage: s, proofs: map[uint64][]*Proof{}}
	for _, n := range fuzzBatches {
		batch := make([][]byte, n)
		for i := range batch {
			batch[i] = fuzzValue(uint64(len(w.values) + i))
		}
		if _, err := f.Append(batch...); err != nil {
			return nil, err
		}
		w.values = append(w.values, batch...)
		for _, v := range batch {
			w.blocks = append(w.blocks, encodeBlock(nil, v))
		}
		length := uint64(len(w.values))
		w.signed = append(w.signed, length)
		// Proofs of every shape: empty ranges at the edges and inside,
		// single blocks, short runs, everything.
		var ranges [][2]uint64
		for s := uint64(0); s <= length; s++ {
			ranges = append(ranges, [2]uint64{s, s})
			if s < length {
				ranges = append(ranges, [2]uint64{s, s + 1})
			}
			if s+3 <= length {
				ranges = append(ranges, [2]uint64{s, s + 3})
			}
		}
		ranges = append(ranges, [2]uint64{0, length})
		for _, rg := range ranges {
			p, err := f.Proof(rg[0], rg[1], 0)
			if err != nil {
				return nil, err
			}
			w.proofs[length] = append(w.proofs[length], p)
		}
	}
	return w, nil
}

func (w *fuzzWriter) len() uint64 { return uint64(len(w.values)) }

// fuzzEncodeBlocks is the inverse of fuzzDecodeBlocks.
func fuzzEncodeBlocks(blocks [][]byte) []byte {
	var out []byte
	for _, b := range blocks {
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out
}

// fuzzDecodeBlocks splits b into blocks, each a uvarint length and that
// many bytes; a length past the end takes the rest.
func fuzzDecodeBlocks(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 {
			return append(out, b)
		}
		b = b[k:]
		n = min(n, uint64(len(b)))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

const fuzzNodeRecord = 8 + 32 + 8

// fuzzEncodeNodes is the inverse of fuzzDecodeNodes.
func fuzzEncodeNodes(nodes []Node) []byte {
	var out []byte
	for _, n := range nodes {
		out = binary.BigEndian.AppendUint64(out, n.Index)
		out = append(out, n.Hash[:]...)
		out = binary.BigEndian.AppendUint64(out, n.Size)
	}
	return out
}

// fuzzDecodeNodes reads 48-byte records: index, hash, size. A partial
// record at the end is dropped.
func fuzzDecodeNodes(b []byte) []Node {
	var out []Node
	for ; len(b) >= fuzzNodeRecord; b = b[fuzzNodeRecord:] {
		var n Node
		n.Index = binary.BigEndian.Uint64(b)
		copy(n.Hash[:], b[8:40])
		n.Size = binary.BigEndian.Uint64(b[40:])
		out = append(out, n)
	}
	return out
}

// fuzzPreProof returns the genuine proof that FuzzPut applies to its
// replica before the fuzzed one, selected by pre (0: none).
// proofOf returns the writer's proof of [start, end) at length.
func (w *fuzzWriter) proofOf(length, start, end uint64) *Proof {
	for _, p := range w.proofs[length] {
		if p.Start == start && p.Start+uint64(len(p.Blocks)) == end {
			return p
		}
	}
	panic(fmt.Sprintf("no proof of [%d, %d) at %d", start, end, length))
}

func (w *fuzzWriter) preProof(pre uint8) *Proof {
	if pre == 0 {
		return nil
	}
	// Cycle through a few states: knows a length only, holds some
	// blocks, holds everything at an older length, holds everything.
	choices := []struct{ length, start, end uint64 }{
		{3, 0, 0}, {6, 2, 5}, {7, 6, 7}, {12, 0, 12}, {17, 9, 12}, {17, 0, 17}, {1, 0, 1},
	}
	c := choices[int(pre-1)%len(choices)]
	for _, p := range w.proofs[c.length] {
		if p.Start == c.start && p.Start+uint64(len(p.Blocks)) == c.end {
			return p
		}
	}
	panic(fmt.Sprintf("no proof of [%d, %d) at %d", c.start, c.end, c.length))
}

// fuzzFeedState is what a rejected Put must leave unchanged.
type fuzzFeedState struct {
	length uint64
	files  map[string][]byte
}

func fuzzSnapshot(f *Feed, s *MemStorage) fuzzFeedState {
	st := fuzzFeedState{length: f.Len(), files: map[string][]byte{}}
	for _, name := range s.names() {
		st.files[name], _ = s.fileBytes(name)
	}
	return st
}

// checkReplicaNodes checks that every node the replica stores is the
// writer's node of that index: a replica must never keep a node that no
// valid proof could have given it.
func checkReplicaNodes(t *testing.T, w *fuzzWriter, r *Feed, s *MemStorage, where string) {
	t.Helper()
	tree, _ := s.fileBytes("r/" + fileTree)
	for i := uint64(0); headerSize+int64(i+1)*nodeSize <= int64(len(tree)); i++ {
		got, err := r.readNode(i)
		if errors.Is(err, errNoNode) {
			continue
		}
		if err != nil {
			t.Fatalf("%s: replica node %d: %v", where, i, err)
		}
		if i >= 2*w.len()-1 {
			t.Fatalf("%s: replica stores node %d past the writer's tree", where, i)
		}
		want, err := w.feed.readNode(i)
		if err != nil {
			t.Fatalf("%s: writer node %d: %v", where, i, err)
		}
		if got != want {
			t.Fatalf("%s: replica node %d is %x size %d offset %d, writer's is %x size %d offset %d",
				where, i, got.Hash[:4], got.Size, got.Offset, want.Hash[:4], want.Size, want.Offset)
		}
	}
}

// checkReplicaBlocks checks that every block the replica reports present
// reads back as the writer's value, by Get and by GetBatch.
func checkReplicaBlocks(t *testing.T, w *fuzzWriter, r *Feed, where string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	length := r.Len()
	if length > w.len() {
		t.Fatalf("%s: replica length %d past the writer's %d", where, length, w.len())
	}
	var want uint64
	for i := range length {
		want += uint64(len(w.blocks[i])) // format 4: blocks, not values
	}
	if r.ByteLen() != want {
		t.Fatalf("%s: replica byte length %d, writer's at %d is %d", where, r.ByteLen(), length, want)
	}
	var present uint64
	for seq := range length {
		if !r.Has(seq) {
			continue
		}
		present++
		v, err := r.Get(ctx, seq)
		if err != nil {
			t.Fatalf("%s: get %d: %v", where, seq, err)
		}
		if !bytes.Equal(v, w.values[seq]) {
			t.Fatalf("%s: entry %d is %q, writer's is %q", where, seq, v, w.values[seq])
		}
		end := r.NextMissing(seq)
		vs, err := r.GetBatch(ctx, seq, end)
		if err != nil {
			t.Fatalf("%s: get [%d, %d): %v", where, seq, end, err)
		}
		for k, v := range vs {
			if !bytes.Equal(v, w.values[seq+uint64(k)]) {
				t.Fatalf("%s: batch entry %d is %q", where, seq+uint64(k), v)
			}
		}
	}
	if r.Downloaded() != present {
		t.Fatalf("%s: Downloaded %d, Has counts %d", where, r.Downloaded(), present)
	}
	if length > 0 {
		l, sig := r.Signature()
		if err := w.feed.Verify(l, sig); err != nil {
			t.Fatalf("%s: replica's signature: %v", where, err)
		}
	}
}

// FuzzPut feeds a replica proofs built from fuzz input: a start, a length,
// blocks, nodes and a signature, seeded with real proofs of a real writer
// (and pre selecting a genuine proof the replica already took, so that
// unsigned proofs have something to meet). Only the writer signs, so:
//   - Put never panics;
//   - a Put that succeeds stored authentic data: every block it carried is
//     the writer's, is present and reads back by Get and GetBatch, and
//     every node the replica now stores is the writer's node;
//   - a Put that fails wraps ErrVerify or ErrBlockTooLarge and changes no
//     file and not the length, or finds a fork (ErrForked, with evidence)
//     only in a proof the writer's key signed;
//   - either way the replica still accepts the writer's full proof and then
//     holds the writer's feed.
func FuzzPut(f *testing.F) {
	w := getFuzzWriter(f)
	lengths := w.signed
	for li, length := range lengths {
		for pi, p := range w.proofs[length] {
			pre := uint8(0)
			if pi%3 == 1 {
				pre = uint8(1 + (li+pi)%7)
			}
			f.Add(p.Start, p.Length, fuzzEncodeBlocks(p.Blocks), fuzzEncodeNodes(p.Nodes), p.Signature, true, pre, uint64(0), uint8(0), uint8(0))
		}
	}
	// Unsigned proofs against a length the replica holds.
	for pre := uint8(1); pre <= 7; pre++ {
		pp := w.preProof(pre)
		for _, rg := range [][2]uint64{{0, 1}, {0, pp.Length}, {pp.Length - 1, pp.Length}, {1, 1}} {
			if rg[0] > rg[1] || rg[1] > pp.Length {
				continue
			}
			p, err := w.feed.Proof(rg[0], rg[1], pp.Length)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(p.Start, p.Length, fuzzEncodeBlocks(p.Blocks), fuzzEncodeNodes(p.Nodes), p.Signature, p.Signature != nil, pre, uint64(0), uint8(0), uint8(0))
		}
	}
	f.Fuzz(func(t *testing.T, start, length uint64, blocks, nodes, sig []byte, signed bool, pre uint8, shift uint64, from, to uint8) {
		p := fuzzedProof(start, length, blocks, nodes, sig, signed, shift, from, to)
		s := NewMemStorage()
		r, err := OpenFeed(s, "r/", &FeedOptions{Key: w.feed.Key(), NoSync: pre%2 == 1})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if pp := w.preProof(pre % 8); pp != nil {
			if err := r.Put(pp); err != nil {
				t.Fatalf("genuine proof: %v", err)
			}
		}
		before := fuzzSnapshot(r, s)
		putErr := r.Put(p)
		switch {
		case putErr == nil:
			checkAcceptedPut(t, w, r, p, before)
		case errors.Is(putErr, ErrForked):
			checkForkedPut(t, w, r, p, putErr)
			return // a forked feed is no longer replicated
		default:
			checkRejectedPut(t, r, s, p, before, putErr)
		}
		checkReplicaNodes(t, w, r, s, "after fuzzed put")
		checkReplicaBlocks(t, w, r, "after fuzzed put")

		// Nothing a peer sends may keep the replica from the true feed.
		full := w.proofs[w.len()][len(w.proofs[w.len()])-1]
		if err := r.Put(full); err != nil {
			t.Fatalf("genuine full proof after fuzzed put (which returned %v): %v", putErr, err)
		}
		if r.Len() != w.len() || r.Downloaded() != w.len() {
			t.Fatalf("after the full proof: length %d downloaded %d", r.Len(), r.Downloaded())
		}
		checkReplicaBlocks(t, w, r, "after full proof")
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// fuzzedProof builds FuzzPut's proof from its fuzz input: shift moves that
// many bytes from the size of node from to that of node to, and a signed
// proof carries sig (empty, not nil, if sig is nil).
func fuzzedProof(start, length uint64, blocks, nodes, sig []byte, signed bool, shift uint64, from, to uint8) *Proof {
	p := &Proof{Start: start, Length: length, Blocks: fuzzDecodeBlocks(blocks), Nodes: fuzzDecodeNodes(nodes)}
	// Hashes commit to the sum of sizes under a parent: try moving
	// bytes from one node's size to another's.
	if n := len(p.Nodes); n > 0 && shift != 0 {
		p.Nodes[int(from)%n].Size -= shift
		p.Nodes[int(to)%n].Size += shift
	}
	if signed {
		p.Signature = sig
		if p.Signature == nil {
			p.Signature = []byte{}
		}
	}
	return p
}

// checkAcceptedPut checks a fuzzed proof the replica took: every block it
// carried is the writer's and is now present, a signed proof raised the
// length to its own (if longer), and an unsigned one left it unchanged.
func checkAcceptedPut(t *testing.T, w *fuzzWriter, r *Feed, p *Proof, before fuzzFeedState) {
	t.Helper()
	for k, b := range p.Blocks {
		seq := p.Start + uint64(k)
		if seq >= w.len() || !bytes.Equal(b, w.blocks[seq]) {
			t.Fatalf("put accepted block %d %q, the writer's is %q", seq, b, w.blocks[min(seq, w.len()-1)])
		}
		if !r.Has(seq) {
			t.Fatalf("put accepted block %d but the replica lacks it", seq)
		}
	}
	if want := max(before.length, p.Length); p.Signature != nil && r.Len() != want {
		t.Fatalf("signed put of length %d: replica length %d -> %d", p.Length, before.length, r.Len())
	}
	if p.Signature == nil && r.Len() != before.length {
		t.Fatalf("unsigned put changed the length %d -> %d", before.length, r.Len())
	}
}

// checkForkedPut checks a fuzzed proof that found a fork: the replica is
// forked, the proof was signed, and the error carries evidence that
// verifies under the writer's key.
func checkForkedPut(t *testing.T, w *fuzzWriter, r *Feed, p *Proof, putErr error) {
	t.Helper()
	// Only the writer's key can sign a history: a fork needs a
	// signature of it over another history. The fuzzer finds some
	// in the seed corpus, where this deterministic key signed the
	// same values as format 3 blocks (without format 4's prefix).
	var fe *ForkError
	if !errors.As(putErr, &fe) || fe.Evidence == nil || !r.Forked() || p.Signature == nil {
		t.Fatalf("put failed with %v: a fork without a signed proof or evidence", putErr)
	}
	if err := fe.Evidence.Verify(); err != nil || !bytes.Equal(fe.Evidence.Key, w.feed.Key()) {
		t.Fatalf("put found a fork the evidence does not prove: %v (%v)", putErr, err)
	}
}

// checkRejectedPut checks a fuzzed proof the replica refused: the error
// wraps ErrVerify or ErrBlockTooLarge (or errNoLink, for a signed proof past
// a non-zero length), and neither the length nor any file changed.
func checkRejectedPut(t *testing.T, r *Feed, s *MemStorage, p *Proof, before fuzzFeedState, putErr error) {
	t.Helper()
	noLink := errors.Is(putErr, errNoLink) && p.Signature != nil && p.Length > before.length && before.length > 0
	if !errors.Is(putErr, ErrVerify) && !errors.Is(putErr, ErrBlockTooLarge) && !noLink {
		t.Fatalf("put failed with %v, want ErrVerify or ErrBlockTooLarge, or errNoLink for a signed proof past the length", putErr)
	}
	after := fuzzSnapshot(r, s)
	if after.length != before.length {
		t.Fatalf("rejected put changed the length %d -> %d", before.length, after.length)
	}
	for name, b := range before.files {
		if !bytes.Equal(after.files[name], b) {
			t.Fatalf("rejected put changed %s", name)
		}
	}
	if len(after.files) != len(before.files) {
		t.Fatalf("rejected put created files")
	}
}

// fuzzScenario is a stored feed that FuzzOpenFeed damages.
type fuzzScenario struct {
	name   string
	opts   *FeedOptions
	files  map[string][]byte
	names  []string
	signed []uint64 // lengths it may recover to, besides 0
}

const fuzzPrefix = "f/"

var (
	fuzzScenariosOnce sync.Once
	fuzzScenariosVal  []*fuzzScenario
	fuzzScenariosErr  error
)

func getFuzzScenarios(tb testing.TB) []*fuzzScenario {
	w := getFuzzWriter(tb)
	fuzzScenariosOnce.Do(func() { fuzzScenariosVal, fuzzScenariosErr = buildFuzzScenarios(w) })
	if fuzzScenariosErr != nil {
		tb.Fatal(fuzzScenariosErr)
	}
	return fuzzScenariosVal
}

func buildFuzzScenarios(w *fuzzWriter) ([]*fuzzScenario, error) {
	var out []*fuzzScenario
	snapshot := func(name string, s *MemStorage, opts *FeedOptions, signed []uint64) {
		sc := &fuzzScenario{name: name, opts: opts, files: map[string][]byte{}, signed: signed}
		for _, n := range s.names() {
			sc.files[n], _ = s.fileBytes(n)
			sc.names = append(sc.names, n)
		}
		out = append(out, sc)
	}

	// 0: the writer, appended in batches (opened with nil options, as the
	// key file holds the secret key).
	s := NewMemStorage()
	f, err := OpenFeed(s, fuzzPrefix, &FeedOptions{SecretKey: fuzzSecret()})
	if err != nil {
		return nil, err
	}
	for _, length := range w.signed {
		if _, err := f.Append(w.values[f.Len():length]...); err != nil {
			return nil, err
		}
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("writer", s, nil, w.signed)

	// 1: a replica with holes, grown through several signed lengths and an
	// unsigned proof.
	s = NewMemStorage()
	opts := &FeedOptions{Key: w.feed.Key()}
	if f, err = OpenFeed(s, fuzzPrefix, opts); err != nil {
		return nil, err
	}
	var signed []uint64
	for _, p := range []*Proof{w.preProof(2), w.preProof(3), w.proofOf(17, 6, 7), w.preProof(5)} {
		// (The proof of block 6 at 17 reaches the roots of 7, so it
		// raises the length to 17; that of [9, 12) does not.)
		if err := f.Put(p); err != nil {
			return nil, err
		}
		if len(signed) == 0 || signed[len(signed)-1] != p.Length {
			signed = append(signed, p.Length)
		}
	}
	p, err := w.feed.Proof(0, 1, f.Len())
	if err != nil {
		return nil, err
	}
	if err := f.Put(p); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("replica", s, opts, signed)

	// 2: a writer with no entries.
	s = NewMemStorage()
	if f, err = OpenFeed(s, fuzzPrefix, &FeedOptions{SecretKey: fuzzSecret()}); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("empty writer", s, nil, nil)

	// 3: a replica that knows a length but holds no block.
	s = NewMemStorage()
	if f, err = OpenFeed(s, fuzzPrefix, opts); err != nil {
		return nil, err
	}
	if err := f.Put(w.preProof(1)); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	snapshot("blockless replica", s, opts, []uint64{w.preProof(1).Length})
	return out, nil
}

// restore returns a new storage holding the scenario's files.
func (sc *fuzzScenario) restore() *MemStorage {
	s := NewMemStorage()
	for _, n := range sc.names {
		s.setFileBytes(n, sc.files[n])
	}
	return s
}

// intact reports whether s holds exactly the scenario's files.
func (sc *fuzzScenario) intact(s *MemStorage) bool {
	names := s.names()
	if len(names) != len(sc.names) {
		return false
	}
	for _, n := range names {
		b, _ := s.fileBytes(n)
		if want, ok := sc.files[n]; !ok || !bytes.Equal(b, want) {
			return false
		}
	}
	return true
}

// checkDamagedOpen opens the (maybe damaged) storage of a scenario and
// checks that it either refuses with ErrCorrupt or ErrKeyMismatch or opens
// consistently: a signed length, the writer's byte length, and every
// present entry either the writer's value or ErrCorrupt, never other
// bytes. A writable feed must then take an append that survives a reopen;
// a replica must answer the writer's full proof sanely.
func checkDamagedOpen(t *testing.T, w *fuzzWriter, sc *fuzzScenario, s *MemStorage) {
	intact := sc.intact(s)
	f, err := OpenFeed(s, fuzzPrefix, sc.opts)
	if err != nil {
		if intact {
			t.Fatalf("%s: undamaged feed does not open: %v", sc.name, err)
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("%s: open failed with %v, want ErrCorrupt or ErrKeyMismatch", sc.name, err)
		}
		return
	}
	defer f.Close()
	fc := &damagedFeedCheck{t: t, w: w, sc: sc, s: s, f: f, length: f.Len()}
	fc.checkOpenedState(intact)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fc.ctx = ctx
	fc.checkPresentEntries()
	fc.checkVerifyAgreesWithReads()
	fc.checkViewReads()
	fc.checkServedProofs()
	if f.Writable() {
		fc.checkAppendSurvivesReopen()
		return
	}
	fc.checkFullProof()
}

// damagedFeedCheck is a feed that checkDamagedOpen opened from a scenario's
// maybe damaged storage, with what its steps share.
type damagedFeedCheck struct {
	t      *testing.T
	w      *fuzzWriter
	sc     *fuzzScenario
	s      *MemStorage
	f      *Feed
	length uint64 // at open
	ctx    context.Context
}

// checkValue checks that a read of entry seq returned the writer's value or
// failed with ErrCorrupt.
func (fc *damagedFeedCheck) checkValue(what string, seq uint64, v []byte, err error) {
	t := fc.t
	t.Helper()
	switch {
	case err != nil && !errors.Is(err, ErrCorrupt):
		t.Fatalf("%s: %s %d: %v, want the value or ErrCorrupt", fc.sc.name, what, seq, err)
	case err == nil && !bytes.Equal(v, fc.w.values[seq]):
		t.Fatalf("%s: %s %d returned %q, the writer wrote %q", fc.sc.name, what, seq, v, fc.w.values[seq])
	}
}

// checkOpenedState checks the state the feed opened with: the scenario's
// length if undamaged, else a length the writer signed; the writer's key if
// it holds entries; the writer's byte length at that length; and the
// writer's signature of it.
func (fc *damagedFeedCheck) checkOpenedState(intact bool) {
	t, w, sc, f, length := fc.t, fc.w, fc.sc, fc.f, fc.length
	switch {
	case intact && length != lastOr(sc.signed, 0):
		t.Fatalf("%s: undamaged feed opens with length %d", sc.name, length)
	case length != 0 && !containsU64(w.signed, length):
		// Any length the writer signed will do: damage may put one of its
		// signature records (from the seed corpus) in a replica's file.
		t.Fatalf("%s: opened with length %d, which the writer never signed (%v)", sc.name, length, w.signed)
	}
	if !bytes.Equal(f.Key(), w.feed.Key()) && length > 0 {
		t.Fatalf("%s: opened with another key and length %d", sc.name, length)
	}
	var byteLen uint64
	for i := range length {
		byteLen += uint64(len(w.blocks[i])) // format 4: blocks, not values
	}
	if f.ByteLen() != byteLen {
		t.Fatalf("%s: byte length %d at length %d, want %d", sc.name, f.ByteLen(), length, byteLen)
	}
	if length > 0 {
		l, sig := f.Signature()
		if err := w.feed.Verify(l, sig); err != nil {
			t.Fatalf("%s: signature of length %d: %v", sc.name, l, err)
		}
	}
}

// checkPresentEntries checks that NextPresent agrees with Has, that every
// present entry reads back (see checkValue) by Get and GetBatch, that one
// that fails to read is no longer present, and that Downloaded counts the
// entries still present after the reads.
func (fc *damagedFeedCheck) checkPresentEntries() {
	t, sc, f, length := fc.t, fc.sc, fc.f, fc.length
	var present uint64
	for seq := uint64(0); seq < length; seq++ {
		if f.NextPresent(seq) != seq {
			if f.Has(seq) {
				t.Fatalf("%s: NextPresent(%d) = %d but Has(%d)", sc.name, seq, f.NextPresent(seq), seq)
			}
			continue
		}
		if !f.Has(seq) {
			t.Fatalf("%s: NextPresent(%d) = %d but not Has", sc.name, seq, seq)
		}
		present++
		v, err := f.Get(fc.ctx, seq)
		fc.checkValue("get", seq, v, err)
		if err != nil && f.Has(seq) {
			t.Fatalf("%s: get %d: %v, but the entry is still present", sc.name, seq, err)
		}
		end := max(seq+1, f.NextMissing(seq))
		vs, err := f.GetBatch(fc.ctx, seq, end)
		if err != nil {
			fc.checkValue("get batch from", seq, nil, err)
		} else if uint64(len(vs)) != end-seq {
			t.Fatalf("%s: get [%d, %d) returned %d entries", sc.name, seq, end, len(vs))
		}
		for k, v := range vs {
			fc.checkValue("batch entry", seq+uint64(k), v, nil)
		}
	}
	// Entries the reads found damaged are no longer present.
	present = 0
	for seq := uint64(0); seq < length; seq++ {
		if f.Has(seq) {
			present++
		}
	}
	if f.Downloaded() != present {
		t.Fatalf("%s: Downloaded %d, present %d", sc.name, f.Downloaded(), present)
	}
}

// checkVerifyAgreesWithReads checks that Verify finds damaged exactly the
// entries the reads did (a leaf that does not follow the one before it only
// in a range, as GetBatch's).
func (fc *damagedFeedCheck) checkVerifyAgreesWithReads() {
	t, sc, f := fc.t, fc.sc, fc.f
	var marked, reported []uint64
	for seq := uint64(0); seq < fc.length; seq++ {
		if f.isDamaged(seq) {
			marked = append(marked, seq)
		}
	}
	if _, err := f.verify(fc.ctx, func(d Damage) {
		if d.Entry && !strings.Contains(d.Err.Error(), "not contiguous") {
			reported = append(reported, d.Seq)
		}
	}); err != nil {
		t.Fatalf("%s: verify: %v", sc.name, err)
	}
	if !slices.Equal(marked, reported) {
		t.Fatalf("%s: the reads found entries %v damaged, verify %v", sc.name, marked, reported)
	}
}

// checkViewReads checks a view's reads: from entry 0 through the data file
// alone, in batches that end before the feed does and at its end, each
// entry the writer's value or ErrCorrupt, a batch ending early only at an
// entry marked damaged.
func (fc *damagedFeedCheck) checkViewReads() {
	t, sc, f := fc.t, fc.sc, fc.f
	if fc.length == 0 || !f.HasRange(0, 1) {
		return
	}
	for _, end := range []uint64{1, (f.NextMissing(0) + 1) / 2, f.NextMissing(0)} {
		vs, err := f.scanBatch(0, end, true)
		if err != nil {
			fc.checkValue("view read up to", end, nil, err)
		} else if n := uint64(len(vs)); n != end && !f.isDamaged(n) {
			// Damage ends a view's batch early, at an entry
			// marked damaged.
			t.Fatalf("%s: view read of [0, %d) returned %d entries", sc.name, end, len(vs))
		}
		for k, b := range vs {
			fc.checkValue("view entry", uint64(k), blockValue(b), nil) // scanBatch returns blocks (format 4)
		}
	}
}

// checkServedProofs checks that a proof the damaged feed serves is refused
// with ErrCorrupt, or is true, or is refused by a peer with ErrVerify.
func (fc *damagedFeedCheck) checkServedProofs() {
	t, w, sc, f, length := fc.t, fc.w, fc.sc, fc.f, fc.length
	for _, rg := range [][2]uint64{{0, length}, {length / 2, length/2 + 1}, {length / 3, length / 3}, {length - 1, length}} {
		if length == 0 || !f.HasRange(rg[0], rg[1]) {
			continue
		}
		p, err := f.Proof(rg[0], rg[1], 0)
		if err != nil {
			// A replica may lack a node the proof needs (it holds only
			// the nodes its proofs carried): ErrOutOfRange. A writer
			// lacks one only if damaged: ErrCorrupt.
			if !errors.Is(err, ErrCorrupt) && (f.Writable() || !errors.Is(err, ErrOutOfRange)) {
				t.Fatalf("%s: proof of %v: %v, want ErrCorrupt", sc.name, rg, err)
			}
			continue
		}
		rs := NewMemStorage()
		r, err := OpenFeed(rs, "r/", &FeedOptions{Key: w.feed.Key()})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Put(p); err == nil {
			checkReplicaBlocks(t, w, r, fmt.Sprintf("%s: replica of damaged feed's proof of %v", sc.name, rg))
		} else if !errors.Is(err, ErrVerify) {
			t.Fatalf("%s: put of the damaged feed's proof of %v: %v", sc.name, rg, err)
		}
		r.Close()
	}
}

// checkAppendSurvivesReopen checks that a writer opened from damaged files
// appends at its length, reads the entry back, and still has it after a
// reopen.
func (fc *damagedFeedCheck) checkAppendSurvivesReopen() {
	t, sc, f, length := fc.t, fc.sc, fc.f, fc.length
	v := []byte("appended after damage")
	seq, err := f.Append(v)
	if err != nil {
		t.Fatalf("%s: append after open: %v", sc.name, err)
	}
	if seq != length {
		t.Fatalf("%s: append at %d, length was %d", sc.name, seq, length)
	}
	if got, err := f.Get(fc.ctx, seq); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("%s: appended entry reads %q, %v", sc.name, got, err)
	}
	key := f.Key()
	if err := f.Close(); err != nil {
		t.Fatalf("%s: close: %v", sc.name, err)
	}
	f2, err := OpenFeed(fc.s, fuzzPrefix, &FeedOptions{Key: key})
	if err != nil {
		t.Fatalf("%s: reopen after append: %v", sc.name, err)
	}
	defer f2.Close()
	if f2.Len() != length+1 {
		t.Fatalf("%s: reopened with length %d, want %d", sc.name, f2.Len(), length+1)
	}
	if got, err := f2.Get(fc.ctx, seq); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("%s: appended entry reads %q, %v after reopen", sc.name, got, err)
	}
}

// checkFullProof checks that a replica opened from damaged files takes the
// writer's full proof, or refuses it because of what the damage left (a
// stored node that contradicts it), and that every entry then present
// reads back (see checkValue).
func (fc *damagedFeedCheck) checkFullProof() {
	t, w, sc, f := fc.t, fc.w, fc.sc, fc.f
	full := w.proofs[w.len()][len(w.proofs[w.len()])-1]
	if err := f.Put(full); err != nil {
		if !errors.Is(err, ErrVerify) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: put of the full proof: %v", sc.name, err)
		}
	} else if f.Len() != w.len() {
		t.Fatalf("%s: length %d after the full proof", sc.name, f.Len())
	}
	for seq := range f.Len() {
		if f.Has(seq) {
			v, err := f.Get(fc.ctx, seq)
			fc.checkValue("get after full proof", seq, v, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("%s: close: %v", sc.name, err)
	}
}

func lastOr(s []uint64, def uint64) uint64 {
	if len(s) == 0 {
		return def
	}
	return s[len(s)-1]
}

func containsU64(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// FuzzOpenFeed opens real stored feeds (a writer, a replica with holes, an
// empty writer, a replica with no block) after fuzz-chosen damage to one
// file: a truncation (or extension) to a chosen length and/or bytes
// overwritten at a chosen offset. See checkDamagedOpen for the properties.
func FuzzOpenFeed(f *testing.F) {
	w := getFuzzWriter(f)
	scs := getFuzzScenarios(f)
	for i, sc := range scs {
		for j, name := range sc.names {
			size := uint32(len(sc.files[name]))
			f.Add(uint8(i), uint8(j), false, uint32(0), uint32(0), []byte{}) // undamaged
			f.Add(uint8(i), uint8(j), true, size/2, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, max(size, 1)-1, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, size+nodeSize, uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), true, uint32(headerSize-1), uint32(0), []byte{})
			f.Add(uint8(i), uint8(j), false, uint32(0), size/2, []byte{0xff})
			f.Add(uint8(i), uint8(j), false, uint32(0), max(size, sigRecordSize)-sigRecordSize+3, []byte{1, 2, 3, 4})
			f.Add(uint8(i), uint8(j), false, uint32(0), uint32(headerSize+32), bytes.Repeat([]byte{0x7f}, 8))
			f.Add(uint8(i), uint8(j), true, size-size%2, uint32(0), []byte("KAPPA"))
		}
	}
	f.Fuzz(func(t *testing.T, scenario, file uint8, truncate bool, size, off uint32, patch []byte) {
		sc := scs[int(scenario)%len(scs)]
		s := sc.restore()
		name := sc.names[int(file)%len(sc.names)]
		b, _ := s.fileBytes(name)
		if truncate {
			n := int(size % uint32(len(b)+2*nodeSize+1))
			if n <= len(b) {
				b = b[:n]
			} else {
				b = append(b, make([]byte, n-len(b))...)
			}
		}
		if len(patch) > 0 {
			o := int(off % uint32(len(b)+1))
			if o+len(patch) > len(b) {
				b = append(b, make([]byte, o+len(patch)-len(b))...)
			}
			copy(b[o:], patch)
		}
		s.setFileBytes(name, b)
		checkDamagedOpen(t, w, sc, s)
	})
}

// FuzzOpenFeedFile opens real stored feeds with one file replaced by fuzz
// bytes, or removed. The properties are those of FuzzOpenFeed.
func FuzzOpenFeedFile(f *testing.F) {
	w := getFuzzWriter(f)
	scs := getFuzzScenarios(f)
	for i, sc := range scs {
		for j, name := range sc.names {
			b := sc.files[name]
			f.Add(uint8(i), uint8(j), false, b)
			f.Add(uint8(i), uint8(j), true, []byte{})
			f.Add(uint8(i), uint8(j), false, b[:min(len(b), headerSize)])
			if len(b) > headerSize+sigRecordSize {
				// Records swapped, dropped or doubled.
				f.Add(uint8(i), uint8(j), false, append(bytes.Clone(b), b[headerSize:headerSize+sigRecordSize]...))
				f.Add(uint8(i), uint8(j), false, append(bytes.Clone(b[:headerSize]), b[len(b)-sigRecordSize:]...))
			}
		}
	}
	f.Fuzz(func(t *testing.T, scenario, file uint8, remove bool, content []byte) {
		sc := scs[int(scenario)%len(scs)]
		s := sc.restore()
		name := sc.names[int(file)%len(sc.names)]
		if remove {
			if err := s.Remove(name); err != nil {
				t.Fatal(err)
			}
		} else {
			s.setFileBytes(name, content)
		}
		checkDamagedOpen(t, w, sc, s)
	})
}

// FuzzBitset runs operations on a bitset and on a []bool model: each op is
// three bytes (kind, a, b) with positions up to a few words.
func FuzzBitset(f *testing.F) {
	f.Add([]byte{0, 0, 10, 1, 3, 20, 2, 0, 200, 3, 5, 0, 4, 0, 255, 5, 100, 7})
	f.Add([]byte{0, 60, 200, 0, 0, 64, 1, 0, 255, 2, 63, 130, 4, 1, 129, 5, 33, 0})
	f.Add([]byte{5, 0, 0, 0, 1, 1, 5, 255, 255, 1, 0, 255})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const limit = 300 // bits the model covers; positions are a*b%limit style
		var b bitset
		model := make([]bool, limit+64)
		pos := func(x byte, hi bool) uint64 {
			p := uint64(x)
			if hi {
				p += 45 // reach past the fourth word
			}
			return p
		}
		count := func() uint64 {
			var n uint64
			for _, v := range model {
				if v {
					n++
				}
			}
			return n
		}
		for len(ops) >= 3 {
			kind, a, c := ops[0], ops[1], ops[2]
			ops = ops[3:]
			x, y := pos(a, kind&0x80 != 0), pos(c, kind&0x40 != 0)
			switch kind & 0x0f % 6 {
			case 0: // setRange
				b.setRange(x, y)
				for i := x; i < y; i++ {
					model[i] = true
				}
			case 1: // nextClear
				want := y
				for i := x; i < y; i++ {
					if !model[i] {
						want = i
						break
					}
				}
				if got := b.nextClear(x, y); got != want {
					t.Fatalf("nextClear(%d, %d) = %d, want %d", x, y, got, want)
				}
			case 2: // nextSet
				want := y
				for i := x; i < y; i++ {
					if model[i] {
						want = i
						break
					}
				}
				if got := b.nextSet(x, y); got != want {
					t.Fatalf("nextSet(%d, %d) = %d, want %d", x, y, got, want)
				}
			case 3: // get
				if b.get(x) != model[x] {
					t.Fatalf("get(%d) = %v", x, b.get(x))
				}
			case 4: // bytesFor
				if x > y {
					x, y = y, x
				}
				got := b.bytesFor(x, y)
				lo, hi := x/8, (y+7)/8
				if uint64(len(got)) != hi-lo {
					t.Fatalf("bytesFor(%d, %d) has %d bytes", x, y, len(got))
				}
				for j := lo; j < hi; j++ {
					var want byte
					for k := uint64(0); k < 8; k++ {
						if i := 8*j + k; i < uint64(len(model)) && model[i] {
							want |= 1 << k
						}
					}
					if got[j-lo] != want {
						t.Fatalf("bytesFor(%d, %d) byte %d = %08b, want %08b", x, y, j, got[j-lo], want)
					}
				}
			case 5: // round trip through the file form, cut at length y
				buf := b.bytesFor(0, uint64(len(model)))
				var r bitset
				r.fromBytes(buf, y)
				for i := range uint64(len(model)) {
					if i >= y {
						model[i] = false
					}
					if r.get(i) != model[i] {
						t.Fatalf("fromBytes(…, %d): bit %d = %v", y, i, r.get(i))
					}
				}
				b = r
			}
			if b.count() != count() {
				t.Fatalf("count %d, model %d", b.count(), count())
			}
		}
	})
}
