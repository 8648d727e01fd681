package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// Tests for what the foundation review found: damage that is reported and
// kept, never destroyed; inputs that were accepted silently; a database
// that remembers its value encoding.

// fourWriters makes a database of writers a, b, c and d with 3 entries
// each, closed, and returns its storage.
func fourWriters(t *testing.T) *MemStorage {
	t.Helper()
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		w, err := c.Writer(n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if _, err := w.Append([]byte(fmt.Sprint(n, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return s
}

func fileSize(t *testing.T, s *MemStorage, name string) int {
	t.Helper()
	b, ok := s.fileBytes(name)
	if !ok {
		t.Fatalf("%s is gone", name)
	}
	return len(b)
}

func TestDamagedLastManifestRecordKeepsTheFeed(t *testing.T) {
	s := fourWriters(t)
	m, _ := s.fileBytes(fileManifest)
	m[headerSize+3*manifestRecord+50] ^= 0x40 // inside d's record
	s.setFileBytes(fileManifest, m)
	sigs := fileSize(t, s, "feeds/3/signatures")

	var reported []error
	c, err := New(s, &Options{OnError: func(err error) { reported = append(reported, err) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(c.Feeds()); n != 3 {
		t.Fatalf("%d feeds loaded, want 3", n)
	}
	d := c.Damaged()
	if len(d) != 1 || d[0].Slot != 3 || !errors.Is(d[0].Err, ErrCorrupt) {
		t.Fatalf("Damaged() = %v, want slot 3", d)
	}
	if len(reported) != 1 || !errors.Is(reported[0], ErrCorrupt) {
		t.Fatalf("OnError got %v", reported)
	}
	w, err := c.Writer("d")
	if err != nil {
		t.Fatal(err)
	}
	if w.name == "feeds/3/" {
		t.Fatal("the damaged feed's slot was reused")
	}
	if got := fileSize(t, s, "feeds/3/signatures"); got != sigs {
		t.Fatalf("feeds/3/signatures went from %d to %d bytes", sigs, got)
	}
}

func TestCutManifestReportsLaterFeeds(t *testing.T) {
	s := fourWriters(t)
	m, _ := s.fileBytes(fileManifest)
	s.setFileBytes(fileManifest, m[:headerSize+2*manifestRecord]) // c and d gone
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c.Feeds()); n != 2 {
		t.Fatalf("%d feeds loaded, want 2", n)
	}
	var slots []int
	for _, d := range c.Damaged() {
		if !errors.Is(d, ErrCorrupt) {
			t.Fatalf("damage %v does not match ErrCorrupt", d)
		}
		slots = append(slots, d.Slot)
	}
	if fmt.Sprint(slots) != "[2 3]" {
		t.Fatalf("damaged slots %v, want [2 3]", slots)
	}
	w, err := c.Writer("e")
	if err != nil {
		t.Fatal(err)
	}
	if w.name != "feeds/4/" {
		t.Fatalf("new writer at %s, want feeds/4/", w.name)
	}
	if _, err := w.Append([]byte("e")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Reopened, the lost slots are still reported and e is still there.
	c, err = New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Damaged()) != 2 || c.FindWriter("e") == nil || c.FindWriter("e").Len() != 1 {
		t.Fatalf("after reopen: damaged %v, writer e %v", c.Damaged(), c.FindWriter("e"))
	}
}

func TestShortSignaturesFileIsDamageNotErasure(t *testing.T) {
	for _, cut := range []int{0, 10} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			s := fourWriters(t)
			data := fileSize(t, s, "feeds/0/data")
			b, _ := s.fileBytes("feeds/0/signatures")
			s.setFileBytes("feeds/0/signatures", b[:cut])
			c, err := New(s, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			d := c.Damaged()
			if len(d) != 1 || d[0].Slot != 0 || d[0].Name != "a" || !errors.Is(d[0].Err, ErrCorrupt) {
				t.Fatalf("Damaged() = %v", d)
			}
			if got := fileSize(t, s, "feeds/0/data"); got != data {
				t.Fatalf("data cut from %d to %d bytes", data, got)
			}
		})
	}
}

func TestWriterOfFeedThatFailedToLoadIsAnError(t *testing.T) {
	s := fourWriters(t)
	// Length 3 has roots 1 (entries 0-1) and 4 (entry 2): damage root 1.
	tree, _ := s.fileBytes("feeds/0/tree")
	tree[headerSize+1*nodeSize+5] ^= 1
	s.setFileBytes("feeds/0/tree", tree)
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := c.Damaged()
	if len(key) != 1 || key[0].Name != "a" {
		t.Fatalf("Damaged() = %v", key)
	}
	if _, err := c.Writer("a"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Writer(a) = %v, want ErrCorrupt", err)
	}
	c.Close()
	c, err = New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Writer("a"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("after reopen Writer(a) = %v, want ErrCorrupt", err)
	}
}

func TestMissingSignatureRecordsAreDamageWithSync(t *testing.T) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := f.Append([]byte(fmt.Sprint(i)), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	sigs, _ := s.fileBytes(fileSignatures)
	tree := fileSize(t, s, fileTree)

	// One record missing, with the journal: its base record says that
	// the five were durable, so that is damage, and nothing is cut.
	one := copyMem(s)
	one.setFileBytes(fileSignatures, sigs[:len(sigs)-sigRecordSize])
	if _, err := OpenFeed(one, "", nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "journal accounts for 5") {
		t.Fatalf("one record missing, with the journal: %v, want ErrCorrupt", err)
	}
	if got := fileSize(t, one, fileTree); got != tree {
		t.Fatalf("tree cut from %d to %d", tree, got)
	}

	// One record missing in a database from before journals: the newest
	// append is indistinguishable from one torn by a crash, so it is cut,
	// and the cut is reported.
	one = copyMem(s)
	one.setFileBytes(fileSignatures, sigs[:len(sigs)-sigRecordSize])
	if err := one.Remove(fileJournal); err != nil {
		t.Fatal(err)
	}
	var repairs []Repair
	f, err = OpenFeed(one, "", &FeedOptions{OnRepair: func(r Repair) { repairs = append(repairs, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 8 || len(repairs) == 0 {
		t.Fatalf("length %d, repairs %v; want 8 and a report", f.Len(), repairs)
	}
	f.Close()

	// Two missing: with sync on that is damage, and nothing is cut.
	two := copyMem(s)
	two.setFileBytes(fileSignatures, sigs[:len(sigs)-2*sigRecordSize])
	if _, err := OpenFeed(two, "", nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("two records missing: %v, want ErrCorrupt", err)
	}
	if got := fileSize(t, two, fileTree); got != tree {
		t.Fatalf("tree cut from %d to %d", tree, got)
	}

	// A damaged record before the newest is damage too.
	mid := copyMem(s)
	b := bytes.Clone(sigs)
	b[headerSize+3*sigRecordSize+20] ^= 1 // the record before the newest
	b[len(b)-5] ^= 1
	mid.setFileBytes(fileSignatures, b)
	if _, err := OpenFeed(mid, "", nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged older record: %v, want ErrCorrupt", err)
	}
}

func copyMem(s *MemStorage) *MemStorage {
	out := NewMemStorage()
	for _, n := range s.names() {
		b, _ := s.fileBytes(n)
		out.setFileBytes(n, b)
	}
	return out
}

// replicaOf returns a replica in its own storage holding blocks [0, n) of
// a writer of n entries, and the values.
func replicaOf(t *testing.T, n int) (*MemStorage, []byte, [][]byte) {
	t.Helper()
	w, err := OpenFeed(NewMemStorage(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var vals [][]byte
	for i := range n {
		vals = append(vals, []byte(fmt.Sprint("v", i)))
	}
	if _, err := w.Append(vals...); err != nil {
		t.Fatal(err)
	}
	s := NewMemStorage()
	r, err := OpenFeed(s, "", &FeedOptions{Key: w.Key()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := w.Proof(0, uint64(n), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(p); err != nil {
		t.Fatal(err)
	}
	r.Close()
	return s, w.Key(), vals
}

func TestDamagedBitfieldIsRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"flip", func(b []byte) []byte { b[headerSize+3] ^= 0xff; return b }},
		{"zero", func(b []byte) []byte { clear(b[headerSize:]); return b }},
		{"cut", func(b []byte) []byte { return b[:headerSize+100] }},
		{"header only", func(b []byte) []byte { return b[:headerSize] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, key, vals := replicaOf(t, 50)
			b, _ := s.fileBytes(fileBitfield)
			s.setFileBytes(fileBitfield, tc.damage(b))
			var repairs []Repair
			r, err := OpenFeed(s, "", &FeedOptions{Key: key, OnRepair: func(x Repair) { repairs = append(repairs, x) }})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if len(repairs) == 0 {
				t.Fatal("the rebuilt bitfield was not reported")
			}
			if !r.HasRange(0, 50) {
				t.Fatalf("holds %d of 50 entries after the rebuild", r.Downloaded())
			}
			got, err := r.GetBatch(context.Background(), 0, 50)
			if err != nil {
				t.Fatal(err)
			}
			for i := range vals {
				if !bytes.Equal(got[i], vals[i]) {
					t.Fatalf("entry %d = %q, want %q", i, got[i], vals[i])
				}
			}
		})
	}
}

func TestGetOfTheLargestSeqFailsAtOnce(t *testing.T) {
	c := newCore(t, nil)
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{math.MaxUint64, math.MaxUint64 - 1, 1} {
		if _, err := w.Get(context.Background(), seq); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("Get(%d) = %v, want ErrOutOfRange", seq, err)
		}
	}
}

func TestWriterNamesAreChecked(t *testing.T) {
	c := newCore(t, nil)
	for _, bad := range []string{"", "a/b", "..", ".", "a\x00b", "\xff", "tab\t", strings.Repeat("x", maxNameLen+1)} {
		if _, err := c.Writer(bad); !errors.Is(err, ErrInvalidValue) {
			t.Errorf("Writer(%q) = %v, want ErrInvalidValue", bad, err)
		}
	}
	for _, good := range []string{"a", "0", "ünïcode name", "a.b", strings.Repeat("x", maxNameLen)} {
		if _, err := c.Writer(good); err != nil {
			t.Errorf("Writer(%q): %v", good, err)
		}
	}
}

func TestDatabaseRemembersItsEncoding(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, &Options{ValueEncoding: "JSON", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	if _, err := Open(dir, &Options{ValueEncoding: Binary, NoSync: true}); !errors.Is(err, ErrEncodingMismatch) {
		t.Fatalf("reopen as binary: %v, want ErrEncodingMismatch", err)
	}
	c, err = Open(dir, &Options{NoSync: true}) // the stored encoding
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]byte("{bad")); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("append {bad to a json database: %v, want ErrInvalidValue", err)
	}
	c.Close()
	c, err = Open(dir, &Options{ValueEncoding: JSON, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	for in, want := range map[Encoding]Encoding{"utf8": UTF8, "UTF-8": UTF8, "Binary": Binary, "": Binary} {
		got, err := in.normalize()
		if err != nil || got != want {
			t.Errorf("%q normalizes to %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestReadOnlyWriterLookup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.FindWriter("a") != nil {
		t.Fatal("FindWriter found a writer that was never made")
	}
	if len(c.Feeds()) != 0 {
		t.Fatal("FindWriter created a feed")
	}
	w, err := c.Writer("a")
	if err != nil {
		t.Fatal(err)
	}
	if c.FindWriter("a") != w {
		t.Fatal("FindWriter(a) is not the writer")
	}
	if name, ok := c.WriterName(w.Key()); !ok || name != "a" {
		t.Fatalf("WriterName = %q, %v", name, ok)
	}
	r, err := c.AddFeed(bytes.Repeat([]byte{7}, PublicKeySize))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.WriterName(r.Key()); ok {
		t.Fatal("a replica has a writer name")
	}
	if c.Dir() == "" || filepath.Base(c.Dir()) != "db" {
		t.Fatalf("Dir() = %q", c.Dir())
	}
}

func TestNilInputsReturnErrors(t *testing.T) {
	if _, err := New(nil, nil); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("New(nil, nil) = %v, want ErrInvalidValue", err)
	}
	if _, err := OpenFeed(nil, "", nil); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("OpenFeed(nil) = %v, want ErrInvalidValue", err)
	}
	var e Entry
	if err := e.Decode(nil); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("Decode(nil) = %v, want ErrInvalidValue", err)
	}
}

func TestErrorsNameTheirOriginOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	c, err := Open(dir, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = Open(dir, &Options{SharedKey: bytes.Repeat([]byte{1}, 32)})
	var e Entry
	c2 := newCore(t, nil)
	errs := []error{
		err,
		c2.Ready(context.Background(), "nope"),
		e.Decode(new(map[string]any)),
	}
	for _, err := range errs {
		if err == nil {
			t.Fatal("no error")
		}
		if n := strings.Count(err.Error(), "kappa:"); n != 1 {
			t.Errorf("%q names kappa %d times", err, n)
		}
	}
}

func TestAddFeedsInOneCall(t *testing.T) {
	s := NewMemStorage()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for i := range 100 {
		kp, err := NewKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, kp.PublicKey)
		if i == 50 {
			keys = append(keys, kp.PublicKey) // asked twice: one feed
		}
	}
	fs, err := c.AddFeeds(keys...)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != len(keys) || fs[50] != fs[51] || len(c.Feeds()) != 100 {
		t.Fatalf("%d feeds for %d keys, %d in the database", len(fs), len(keys), len(c.Feeds()))
	}
	if _, err := c.AddFeeds(keys[0], []byte("short")); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("a bad key: %v, want ErrInvalidKey", err)
	}
	c.Close()
	// A crash that loses the replicas' unsynced files loses no feed: the
	// manifest holds their keys.
	crashed := s.crashClone(nil)
	for _, n := range crashed.names() {
		if strings.HasPrefix(n, "feeds/7/") {
			crashed.setFileBytes(n, nil)
		}
	}
	c, err = New(crashed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := c.Feeds()
	if len(got) != 100 || len(c.Damaged()) != 0 {
		t.Fatalf("%d feeds after reopen, damaged %v", len(got), c.Damaged())
	}
	for i, f := range got {
		want := keys[i]
		if i > 50 {
			want = keys[i+1]
		}
		if !bytes.Equal(f.Key(), want) {
			t.Fatalf("feed %d has another key", i)
		}
	}
}

// TestNilZeroAndClosedInputs calls the public API with nil, zero and closed
// objects: each must return an error (or a harmless zero), never panic.
func TestNilZeroAndClosedInputs(t *testing.T) {
	ctx := context.Background()
	c, err := New(NewMemStorage(), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Writer("w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append([]byte("a")); err != nil {
		t.Fatal(err)
	}
	r, err := c.AddFeed(bytes.Repeat([]byte{3}, PublicKeySize))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name string
		err  error
		want error
	}{
		{"Put(nil)", r.Put(nil), ErrVerify},
		{"Put(empty proof)", r.Put(&Proof{}), ErrVerify},
		{"Put(proof with nil block)", r.Put(&Proof{Blocks: [][]byte{nil}, Length: 1}), ErrVerify},
		{"Verify(1, nil)", w.Verify(1, nil), ErrVerify},
		{"AddFeed(nil)", second(c.AddFeed(nil)), ErrInvalidKey},
		{"AddFeeds(nil)", second(c.AddFeeds(nil)), ErrInvalidKey},
		{"WriterWithKeyPair(zero)", second(c.WriterWithKeyPair("k", KeyPair{})), ErrInvalidKey},
		{"KeyPairFromSecret(nil)", second(KeyPairFromSecret(nil)), ErrInvalidKey},
		{"Use(nil view)", second(c.Use("v", 1, nil)), ErrInvalidValue},
		{"Use(version -1)", second(c.Use("v", -1, &sumView{})), ErrInvalidValue},
		{"Ready(unknown)", c.Ready(ctx, "nope"), ErrNoView},
		{"Pause(unknown)", c.Pause(ctx, "nope"), ErrNoView},
		{"Resume(unknown)", c.Resume("nope"), ErrNoView},
		{"New(short shared key)", second(New(NewMemStorage(), &Options{SharedKey: []byte{1}})), ErrInvalidKey},
		{"New(bad encoding)", second(New(NewMemStorage(), &Options{ValueEncoding: "ebcdic"})), ErrInvalidValue},
	}
	if _, err := r.Proof(0, 0, 0); err == nil {
		t.Error("Proof of an empty replica succeeded")
	}
	if _, err := w.Proof(1, 0, 0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Proof(1, 0) = %v, want ErrOutOfRange", err)
	}
	cancel := w.Subscribe(nil) // a nil channel is never signalled
	cancel()
	_ = c.FeedHex("zz")
	_ = c.Feed(nil)
	_, _ = c.WriterName(nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	checks = append(checks, []struct {
		name string
		err  error
		want error
	}{
		{"Writer after Close", second(c.Writer("x")), ErrClosed},
		{"AddFeed after Close", second(c.AddFeed(bytes.Repeat([]byte{4}, PublicKeySize))), ErrClosed},
		{"Use after Close", second(c.Use("v", 1, &sumView{})), ErrClosed},
		{"Ready after Close", c.Ready(ctx), ErrClosed},
		{"Pause after Close", c.Pause(ctx), ErrClosed},
		{"Append after Close", second(w.Append([]byte("b"))), ErrClosed},
		{"GetBatch after Close", second(w.GetBatch(ctx, 0, 1)), ErrClosed},
		{"Head after Close", second(w.Head(ctx)), ErrClosed},
		{"Put after Close", r.Put(&Proof{Length: 1, Signature: make([]byte, 64)}), ErrVerify},
	}...)
	for _, ch := range checks {
		if !errors.Is(ch.err, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.err, ch.want)
		}
	}
	_ = w.Len()
	_, _ = w.Signature()
	_ = c.Feeds()
	_ = c.Damaged()
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

func TestSequentialGetIsNotFailedByDamageAhead(t *testing.T) {
	s := NewMemStorage()
	f, err := OpenFeed(s, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Append([]byte("aa"), []byte("bb"), []byte("cc"), []byte("dd")); err != nil {
		t.Fatal(err)
	}
	b, _ := s.fileBytes(fileData)
	b[dataPos(3, 6)+dataLenLen+1] ^= 1 // inside "dd"
	s.setFileBytes(fileData, b)
	ctx := context.Background()
	for seq, want := range []string{"aa", "bb", "cc"} {
		v, err := f.Get(ctx, uint64(seq))
		if err != nil || string(v) != want {
			t.Fatalf("Get(%d) = %q, %v", seq, v, err)
		}
	}
	if _, err := f.Get(ctx, 3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get(3) = %v, want ErrCorrupt", err)
	}
	c := newCore(t, &Options{ValueEncoding: "utf8"})
	if c.ValueEncoding() != UTF8 {
		t.Fatalf("ValueEncoding() = %q", c.ValueEncoding())
	}
}
