package kappa

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// The feed's native fuzz targets (FuzzPut in fuzz_put_test.go, FuzzOpenFeed
// and FuzzOpenFeedFile in fuzz_feed_test.go) share what this file builds.
// Each builds a real feed once per process from a fixed key pair (so that
// inputs saved under testdata/fuzz stay meaningful), seeds the corpus with
// real proofs or real files of it, and checks properties of what the
// library does with the fuzzer's mutations.

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
