package kv

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

func TestPutReplacesAndDeleteLeavesATombstone(t *testing.T) {
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	for _, kv := range [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
		if err := r.kv.Put(w, kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.kv.Delete(w, "b"); err != nil {
		t.Fatal(err)
	}
	r.ready(t)
	vs, err := r.kv.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || string(vs[0].Value) != "3" || vs[0].Pos.Seq != 2 || !bytes.Equal(vs[0].Pos.Feed, w.Key()) || vs[0].Deleted {
		t.Fatalf("a: %s, want one version 3 at seq 2", fmtVersions(vs))
	}
	vs, _ = r.kv.Get("b")
	if len(vs) != 1 || !vs[0].Deleted || vs[0].Value != nil || vs[0].Pos.Seq != 3 {
		t.Fatalf("b: %s, want one tombstone at seq 3", fmtVersions(vs))
	}
	if vs, _ := r.kv.Get("none"); vs != nil {
		t.Fatalf("never written: %s", fmtVersions(vs))
	}
}

func TestKeysInOrderFromAKeySkippingDeleted(t *testing.T) {
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	for _, k := range []string{"m", "b", "z", "a", "q", "c"} {
		if err := r.kv.Put(w, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.kv.Delete(w, "q"); err != nil {
		t.Fatal(err)
	}
	r.ready(t)
	var got []string
	if err := r.kv.Keys("", func(k string) bool { got = append(got, k); return true }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c", "m", "z"}; !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	got = nil
	r.kv.Keys("c", func(k string) bool { got = append(got, k); return len(got) < 2 })
	if want := []string{"c", "m"}; !slices.Equal(got, want) {
		t.Fatalf("keys from c, two: %q, want %q", got, want)
	}
	// A key put again after Keys ran is listed.
	r.kv.Put(w, "d", nil)
	r.ready(t)
	got = nil
	r.kv.Keys("cc", func(k string) bool { got = append(got, k); return true })
	if want := []string{"d", "m", "z"}; !slices.Equal(got, want) {
		t.Fatalf("keys from cc: %q, want %q", got, want)
	}
}

func TestEntriesOfOtherApplicationsAreSkipped(t *testing.T) {
	r := newReplica(t, &kappa.Options{ValueEncoding: kappa.JSON})
	w := r.writer(t, "w")
	others := []string{`{"kv":2,"k":"o","v":""}`, `{"kv":0,"k":"o","v":""}`, `{"k":"o","v":""}`, `{"kv":1,"v":""}`, `{"kv":1,"k":"o"}`,
		`{"kv":1,"k":"o","v":"!!"}`, `{"kv":1,"k":"o","v":"","d":true}`, `{"kv":1,"k":"o","d":false}`, `[1]`, `"kv"`, `{"type":"chat"}`}
	for _, v := range others {
		if _, err := w.Append([]byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.kv.Put(w, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	r.ready(t)
	vs, _ := r.kv.Get("a")
	if len(vs) != 1 || vs[0].Pos.Seq != uint64(len(others)) {
		t.Fatalf("a: %s, want only the Put", fmtVersions(vs))
	}
	if vs, _ := r.kv.Get("o"); vs != nil {
		t.Fatalf("o: %s, want none", fmtVersions(vs))
	}
	if vs, _ := r.kv.Get(""); vs != nil {
		t.Fatalf("the empty key: %s, want none", fmtVersions(vs))
	}
}

func TestJSONUTF8AndBinaryDatabasesTakeAnyValue(t *testing.T) {
	value := []byte{0, 0xff, '"', '\\', 0x80}
	for _, enc := range []kappa.Encoding{kappa.JSON, kappa.UTF8, kappa.Binary} {
		t.Run(string(enc), func(t *testing.T) {
			r := newReplica(t, &kappa.Options{ValueEncoding: enc})
			w := r.writer(t, "w")
			if err := r.kv.Put(w, "ключ \"q\"", value); err != nil {
				t.Fatal(err)
			}
			if err := r.kv.Delete(w, "gone"); err != nil {
				t.Fatal(err)
			}
			r.ready(t)
			vs, _ := r.kv.Get("ключ \"q\"")
			if len(vs) != 1 || !bytes.Equal(vs[0].Value, value) {
				t.Fatalf("got %s", fmtVersions(vs))
			}
			if vs, _ := r.kv.Get("gone"); len(vs) != 1 || !vs[0].Deleted {
				t.Fatalf("gone: %s", fmtVersions(vs))
			}
		})
	}
}

func TestKeyThatIsNotUTF8IsRefused(t *testing.T) {
	r := newReplica(t, nil)
	if err := r.kv.Put(r.writer(t, "w"), "\xff", nil); !errors.Is(err, kappa.ErrInvalidValue) {
		t.Fatalf("got %v, want ErrInvalidValue", err)
	}
}

// reopen closes r's database and view and opens them again.
func reopen(t *testing.T, r *replica) *replica {
	t.Helper()
	if err := r.kv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.core.Close(); err != nil {
		t.Fatal(err)
	}
	c := openDB(t, r.dir, nil)
	s, err := Open(c, "kv", filepath.Join(r.dir, "kv"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &replica{dir: r.dir, core: c, kv: s}
}

func TestReopenedViewHoldsItsDataAndGoesOn(t *testing.T) {
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	for i := range 20 {
		r.kv.Put(w, string(rune('a'+i%5)), []byte{byte(i)})
	}
	r.ready(t)
	before := dump(t, r.kv)
	r = reopen(t, r)
	// Before the view maps anything: the data is the file's.
	equalDumps(t, "reopened", dump(t, r.kv), before)
	r.ready(t)
	w = r.writer(t, "w")
	r.kv.Put(w, "a", []byte("new"))
	r.ready(t)
	equalDumps(t, "after a put", dump(t, r.kv), model(t, allEntries(t, r.core)))
}

func TestTornTailIsCutAndTheNextRecordIsRead(t *testing.T) {
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	r.kv.Put(w, "a", []byte("1"))
	r.ready(t)
	r.kv.Close()
	r.core.Close()
	path := filepath.Join(r.dir, "kv", logName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A record torn by a crash: its length says more than is there.
	big := encodeLogRecord([]op{{kind: opAdd, key: "torn", feed: make([]byte, 32), value: make([]byte, 4000)}}, []byte("s"))
	torn := append(slices.Clone(good), big[:len(big)-1]...)
	if err := os.WriteFile(path, torn, 0o644); err != nil {
		t.Fatal(err)
	}
	r = reopen(t, &replica{dir: r.dir, core: r.core, kv: r.kv})
	if vs, _ := r.kv.Get("torn"); vs != nil {
		t.Fatalf("torn record applied: %s", fmtVersions(vs))
	}
	// The tail is cut: the file ends with its last whole record.
	if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(good)) {
		t.Fatalf("file after open: %v, %v; want %d bytes", fi.Size(), err, len(good))
	}
	w = r.writer(t, "w")
	r.kv.Put(w, "b", []byte("2"))
	r.ready(t)
	r = reopen(t, r)
	// The record written after the cut is read back: data and progress.
	vs, _ := r.kv.Get("b")
	if len(vs) != 1 || string(vs[0].Value) != "2" {
		t.Fatalf("b after reopen: %s", fmtVersions(vs))
	}
}

func TestCompactionKeepsTheDataAndShrinksTheFile(t *testing.T) {
	defer func(n int64) { compactMin = n }(compactMin)
	compactMin = 4 << 10
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	for i := range 400 {
		if err := r.kv.Put(w, string(rune('a'+i%3)), bytes.Repeat([]byte{byte(i)}, 50)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			r.ready(t)
		}
	}
	r.ready(t)
	fi, err := os.Stat(filepath.Join(r.dir, "kv", logName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 3*compactMin {
		t.Fatalf("file is %d bytes after 400 puts on 3 keys: not compacted", fi.Size())
	}
	want := model(t, allEntries(t, r.core))
	equalDumps(t, "compacted", dump(t, r.kv), want)
	r = reopen(t, r)
	equalDumps(t, "compacted, reopened", dump(t, r.kv), want)
}

func TestTwoOfflineWritersForkAndAPutAfterBothResolves(t *testing.T) {
	alice := newReplica(t, &kappa.Options{ValueEncoding: kappa.JSON})
	bob := newReplica(t, &kappa.Options{ValueEncoding: kappa.JSON, SharedKey: alice.core.SharedKey()})
	wa, wb := alice.writer(t, "alice"), bob.writer(t, "bob")
	if err := alice.kv.Put(wa, "color", []byte("red")); err != nil {
		t.Fatal(err)
	}
	if err := bob.kv.Put(wb, "color", []byte("blue")); err != nil {
		t.Fatal(err)
	}
	syncPair(t, alice.core, bob.core, nil)
	alice.ready(t)
	bob.ready(t)
	for _, r := range []*replica{alice, bob} {
		vs, _ := r.kv.Get("color")
		if len(vs) != 2 {
			t.Fatalf("after sync: %s, want two versions", fmtVersions(vs))
		}
	}
	equalDumps(t, "alice = bob", dump(t, alice.kv), dump(t, bob.kv))
	// Bob saw both: his Put follows both and replaces them.
	if err := bob.kv.Put(wb, "color", []byte("purple")); err != nil {
		t.Fatal(err)
	}
	syncPair(t, alice.core, bob.core, nil)
	alice.ready(t)
	bob.ready(t)
	for _, r := range []*replica{alice, bob} {
		vs, _ := r.kv.Get("color")
		if len(vs) != 1 || string(vs[0].Value) != "purple" {
			t.Fatalf("after resolution: %s, want one version purple", fmtVersions(vs))
		}
	}
}

func TestClearIndexWipesDataAndProgress(t *testing.T) {
	r := newReplica(t, nil)
	w := r.writer(t, "w")
	r.kv.Put(w, "a", []byte("1"))
	r.ready(t)
	if err := r.kv.index.Pause(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := r.kv.ClearIndex(); err != nil {
		t.Fatal(err)
	}
	if vs, _ := r.kv.Get("a"); vs != nil {
		t.Fatalf("after ClearIndex: %s", fmtVersions(vs))
	}
	if st, err := r.kv.FetchState(); st != nil || err != nil {
		t.Fatalf("state after ClearIndex: %q, %v", st, err)
	}
	b, err := os.ReadFile(filepath.Join(r.dir, "kv", logName))
	if err != nil || string(b) != logMagic {
		t.Fatalf("file after ClearIndex: %q, %v", b, err)
	}
}

// TestFilesAreTheOwnersAlone: the view's directory and kv.log hold the
// database's data, so they are created as the database's own files are:
// no permission for group or others.
func TestFilesAreTheOwnersAlone(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permissions")
	}
	r := newReplica(t, nil)
	if err := r.kv.Put(r.writer(t, "w"), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	r.ready(t)
	for _, name := range []string{"kv", filepath.Join("kv", "kv.log")} {
		fi, err := os.Stat(filepath.Join(r.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s: mode %v, want no permission for group or others", name, fi.Mode())
		}
	}
}
