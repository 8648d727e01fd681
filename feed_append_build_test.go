package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestLargeAppendsBuildTheSameTreeAtEveryAlignment appends two calls large
// or small, starting at lengths on and off the boundaries of subtrees, and
// checks the result against the same values appended one per call: the
// same roots, every entry verified by a replica that takes the writer's
// proofs, every value read back, and the feed whole after reopen.
func TestLargeAppendsBuildTheSameTreeAtEveryAlignment(t *testing.T) {
	starts := []int{0, 1, 63, 64, 65, 200}
	sizes := []int{1, 2, 63, 64, 65, 257, 1000}
	if testing.Short() {
		starts, sizes = []int{0, 1, 65}, []int{1, 64, 257}
	}
	for _, start := range starts {
		for _, size := range sizes {
			t.Run(fmt.Sprintf("%d+%d", start, size), func(t *testing.T) {
				checkAlignedAppends(t, start, size)
			})
		}
	}
}

// alignedValue is the value checkAlignedAppends appends at i: its size
// varies with i.
func alignedValue(i int) []byte {
	return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 1+i%37) // sizes vary
}

// checkAlignedAppends appends start values one per call to a feed, then
// two calls of size values each, and the same values one per call to
// another; and checks that both feeds have the same length and files (see
// requireSameDataAndTree) and the same roots, and that a replica takes the
// first's proofs and every value reads back, from it and from the first
// reopened.
func checkAlignedAppends(t *testing.T, start, size int) {
	dir := t.TempDir()
	s, err := OpenDir(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big, err := OpenFeed(s, "big/", &FeedOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	one, err := OpenFeed(s, "one/", &FeedOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	// Two calls of size values: the second builds in
	// buffers the first left as they were.
	var calls [2][][]byte
	for i := range start + 2*size {
		if _, err := one.Append(alignedValue(i)); err != nil {
			t.Fatal(err)
		}
		if i < start {
			if _, err := big.Append(alignedValue(i)); err != nil {
				t.Fatal(err)
			}
		} else {
			k := (i - start) / size
			calls[k] = append(calls[k], alignedValue(i))
		}
	}
	for k, call := range calls {
		if seq, err := big.Append(call...); err != nil || seq != uint64(start+k*size) {
			t.Fatalf("Append = %d, %v; want %d", seq, err, start+k*size)
		}
	}
	n := uint64(start + 2*size)
	if big.Len() != n || big.ByteLen() != one.ByteLen() {
		t.Fatalf("length %d, %d bytes; one per call: %d, %d bytes", big.Len(), big.ByteLen(), one.Len(), one.ByteLen())
	}
	for _, f := range []*Feed{big, one} {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	requireSameDataAndTree(t, dir)
	if big, err = OpenFeed(s, "big/", &FeedOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	if one, err = OpenFeed(s, "one/", &FeedOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	requireSameRoots(t, big, one)
	replica, err := OpenFeed(s, "replica/", &FeedOptions{Key: big.Key(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := replicate(big, replica, 97); err != nil {
		t.Fatal(err)
	}
	if err := big.Close(); err != nil {
		t.Fatal(err)
	}
	if big, err = OpenFeed(s, "big/", &FeedOptions{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	for _, f := range []*Feed{big, replica} {
		vals, err := f.GetBatch(context.Background(), 0, n)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			if !bytes.Equal(v, alignedValue(i)) {
				t.Fatalf("entry %d: %x, want %x", i, v, alignedValue(i))
			}
		}
	}
}

// requireSameDataAndTree checks the closed feeds big and one in dir: the
// same records, CRCs included, in their data files; the same tree records
// but for the leaves' ordinals (and so their CRCs), with zeros in the same
// places (where a parent is not complete yet).
func requireSameDataAndTree(t *testing.T, dir string) {
	t.Helper()
	// The same records, CRCs included, in the data file.
	bigData, err1 := os.ReadFile(filepath.Join(dir, "big", fileData))
	oneData, err2 := os.ReadFile(filepath.Join(dir, "one", fileData))
	if err1 != nil || err2 != nil || !bytes.Equal(bigData, oneData) {
		t.Fatalf("data files differ (%d and %d bytes; %v, %v)", len(bigData), len(oneData), err1, err2)
	}
	// The same tree records but for the leaves' ordinals
	// (and so their CRCs); zeros where a parent is not
	// complete yet.
	bigTree, err1 := os.ReadFile(filepath.Join(dir, "big", fileTree))
	oneTree, err2 := os.ReadFile(filepath.Join(dir, "one", fileTree))
	if err1 != nil || err2 != nil || len(bigTree) != len(oneTree) {
		t.Fatalf("tree files of %d and %d bytes; %v, %v", len(bigTree), len(oneTree), err1, err2)
	}
	for at := headerSize; at+nodeSize <= len(oneTree); at += nodeSize {
		b, o := bigTree[at:at+nodeSize], oneTree[at:at+nodeSize]
		if !bytes.Equal(b[:nodeCRCOff], o[:nodeCRCOff]) || isZero(b) != isZero(o) {
			t.Fatalf("tree record %d: %x, one per call %x", (at-headerSize)/nodeSize, b, o)
		}
	}
}

// requireSameRoots checks that big's newest signature covers the same
// roots, nodes and offsets, as one's.
func requireSameRoots(t *testing.T, big, one *Feed) {
	t.Helper()
	got, want := rootsOf(t, big), rootsOf(t, one)
	if len(got) != len(want) {
		t.Fatalf("%d roots, one per call %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Node != want[i].Node || got[i].Offset != want[i].Offset {
			t.Fatalf("root %d: %+v, one per call %+v", i, got[i], want[i])
		}
	}
}

// rootsOf returns the roots f's newest signature covers.
func rootsOf(t *testing.T, f *Feed) []storedNode {
	t.Helper()
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	roots, err := f.signedRootsWriteLocked(f.Len())
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

// An Append of many values names the first value that fails, wherever it
// is, and appends nothing.
func TestLargeAppendNamesTheFirstInvalidValue(t *testing.T) {
	c, err := New(NewMemStorage(), &Options{ValueEncoding: JSON})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]int{{0}, {999}, {500, 700}, {1, 998}, {260, 261}} {
		vals := make([][]byte, 1000)
		for i := range vals {
			vals[i] = fmt.Appendf(nil, `{"i":%d}`, i)
		}
		for _, i := range bad {
			vals[i] = []byte(`{"i":`)
		}
		_, err := w.Append(vals...)
		want := fmt.Sprintf("append value %d:", bad[0])
		if !errors.Is(err, ErrInvalidValue) || !strings.Contains(err.Error(), want) {
			t.Fatalf("bad values %v: Append = %v, want ErrInvalidValue naming %q", bad, err, want)
		}
		if w.Len() != 0 {
			t.Fatalf("bad values %v: %d entries appended", bad, w.Len())
		}
	}
}

// Calls committed together (concurrent Appends share a commit) fail alone:
// a large call whose value fails the check it gets while its records are
// built ends with that value's error, and the other calls of its commit
// are appended without it. If the failed call was the one to record the
// writer's causal context, the writer's next call records it again.
func TestLargeCallFailingItsCheckLeavesTheOthersOfItsCommit(t *testing.T) {
	c, err := New(NewMemStorage(), &Options{ValueEncoding: JSON})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, w := mustWriter(t, c, "v"), mustWriter(t, c, "w")
	if _, err := v.Append([]byte(`"v0"`)); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	call := func(n, bad int, tag string) *appendReq {
		vals := make([][]byte, n)
		for i := range vals {
			vals[i] = fmt.Appendf(nil, `{"%s":%d}`, tag, i)
		}
		if bad >= 0 {
			vals[bad] = []byte(`{"` + tag)
		}
		return &appendReq{values: vals, unchecked: n >= minSharedBuild}
	}
	// The first call of the commit records the context (v@0); it fails.
	batch := []*appendReq{call(300, 299, "a"), call(3, -1, "b"), call(1000, 17, "c"), call(minSharedBuild, -1, "d")}
	w.writeMu.Lock()
	w.commitWriteLocked(batch)
	w.writeMu.Unlock()
	for i, want := range []string{"append value 299:", "", "append value 17:", ""} {
		r := batch[i]
		if want == "" && r.err != nil || want != "" && (!errors.Is(r.err, ErrInvalidValue) || !strings.Contains(r.err.Error(), want)) {
			t.Fatalf("call %d: %v, want %q", i, r.err, want)
		}
	}
	if batch[1].seq != 0 || batch[3].seq != 3 || w.Len() != 3+minSharedBuild {
		t.Fatalf("calls at %d and %d, length %d; want 0, 3, %d", batch[1].seq, batch[3].seq, w.Len(), 3+minSharedBuild)
	}
	vals, err := w.GetBatch(context.Background(), 0, w.Len())
	if err != nil {
		t.Fatal(err)
	}
	for i, got := range vals {
		want := fmt.Sprintf(`{"b":%d}`, i)
		if i >= 3 {
			want = fmt.Sprintf(`{"d":%d}`, i-3)
		}
		if string(got) != want {
			t.Fatalf("entry %d: %s, want %s", i, got, want)
		}
	}
	if _, err := w.Append([]byte(`"next"`)); err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkDeps(t, "the call after", mustEntry(t, entriesOf(t, c), w, w.Len()-1), Pos{v.Key(), 0})
}

// Large appends to many feeds at once, and large reads beside them, share
// the same helpers (see shareWork): each feed gets its own values, in
// order, verified.
func TestLargeAppendsOfManyFeedsAtOnce(t *testing.T) {
	s := NewMemStorage()
	const feeds, calls, size = 6, 12, minSharedBuild + 44
	value := func(f, i int) []byte {
		return fmt.Appendf(nil, `{"feed":%d,"i":%d,"pad":"%s"}`, f, i, strings.Repeat("x", i%50))
	}
	var wg sync.WaitGroup
	errs := make(chan error, feeds)
	fs := make([]*Feed, feeds)
	for k := range fs {
		f, err := OpenFeed(s, fmt.Sprintf("f%d/", k), &FeedOptions{NoSync: true, ValueEncoding: JSON})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fs[k] = f
	}
	for k, f := range fs {
		wg.Go(func() {
			for c := range calls {
				vals := make([][]byte, size)
				for i := range vals {
					vals[i] = value(k, c*size+i)
				}
				if _, err := f.Append(vals...); err != nil {
					errs <- err
					return
				}
				if got, err := f.GetBatch(context.Background(), 0, f.Len()); err != nil || len(got) != (c+1)*size {
					errs <- fmt.Errorf("feed %d after call %d: %d values, %v", k, c, len(got), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k, f := range fs {
		got, err := f.GetBatch(context.Background(), 0, f.Len())
		if err != nil || len(got) != calls*size {
			t.Fatalf("feed %d: %d values, %v", k, len(got), err)
		}
		for i, v := range got {
			if !bytes.Equal(v, value(k, i)) {
				t.Fatalf("feed %d entry %d: %s, want %s", k, i, v, value(k, i))
			}
		}
	}
}
