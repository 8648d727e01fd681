package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// damageOpen opens s, failing the test on error, and returns the database
// with the repairs it made.
func damageOpen(t *testing.T, s *MemStorage) (*Core, []Repair) {
	t.Helper()
	c, err := New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.Repairs()
}

// A replica whose newest signature record is damaged goes back to the
// length before it, lists the damage, and does not hold the blocks that came
// with the lost record (their tree and data are kept, unverified), so a later,
// longer length must not find them present (they used to read as ErrCorrupt
// for ever, and were never fetched again). The writer's signature heals the
// damage.
func TestDamageReplicaBackAtAnOlderLengthForgetsBlocksPastIt(t *testing.T) {
	fx := getDamageFixture(t, true)
	d := fx.feeds[1] // dave's sparse replica: signed at 5, then 8 with block 6
	if d.name != "" || !slices.Equal(d.signed, []uint64{5, 8}) || !d.held[6] {
		t.Fatalf("fixture feed 1 is %+v", d)
	}
	s := fx.restore()
	sigs := fx.files[d.prefix()+fileSignatures]
	b := bytes.Clone(sigs)
	b[len(b)-sigRecordSize+20] ^= 0xff // inside the newest record's signature
	s.setFileBytes(d.prefix()+fileSignatures, b)

	c, repairs := damageOpen(t, s)
	r := c.Feed(d.key)
	if r == nil || r.Len() != 5 || r.Has(6) || len(repairs) == 0 || len(c.Damaged()) != 1 {
		t.Fatalf("opened replica %v with repairs %v, damage %v", r, repairs, c.Damaged())
	}
	if err := r.Put(d.lengthProof); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 8 || r.Has(6) || len(c.Damaged()) != 0 {
		t.Fatalf("after the length: length %d, has 6: %v, damage %v", r.Len(), r.Has(6), c.Damaged())
	}
	c.Close()

	c, repairs = damageOpen(t, s)
	r = c.Feed(d.key)
	if len(repairs) != 0 || r.Len() != 8 || r.Has(6) || !r.Has(1) || !r.Has(2) {
		t.Fatalf("reopened with repairs %v: length %d, has 1, 2, 6: %v %v %v", repairs, r.Len(), r.Has(1), r.Has(2), r.Has(6))
	}
	if err := r.Put(d.fullProof); err != nil {
		t.Fatal(err)
	}
	for seq, want := range d.values {
		if got, err := r.Get(context.Background(), uint64(seq)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("entry %d: %q, %v; want %q", seq, got, err, want)
		}
	}
}

// A replica whose data or tree was cut no longer reports the blocks it lost
// as present: the bitfield page is rebuilt (a repair), so Get waits for them
// and replication fetches them again, instead of ErrCorrupt for ever.
func TestDamageReplicaCutDataOrTreeDropsTheLostBlocks(t *testing.T) {
	fx := getDamageFixture(t, true)
	d := fx.feeds[1] // holds 1, 2 and 6
	for _, file := range []string{fileData, fileTree} {
		t.Run(file, func(t *testing.T) {
			s := fx.restore()
			name := d.prefix() + file
			b := fx.files[name]
			cut := len(b) - 1 // inside block 6, the last
			if file == fileTree {
				cut = headerSize + 12*nodeSize + 10 // inside block 6's leaf
			}
			s.setFileBytes(name, b[:cut])
			c, repairs := damageOpen(t, s)
			r := c.Feed(d.key)
			if r == nil || r.Len() != d.length {
				t.Fatalf("replica %v, damaged %v", r, c.Damaged())
			}
			if r.Has(6) || !r.Has(1) || !r.Has(2) {
				t.Fatalf("has 1, 2, 6: %v %v %v", r.Has(1), r.Has(2), r.Has(6))
			}
			rebuilt := false
			for _, rp := range repairs {
				rebuilt = rebuilt || rp.File == d.prefix()+fileBitfield
			}
			if !rebuilt {
				t.Fatalf("no repair of the bitfield: %v", repairs)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			if _, err := r.Get(ctx, 6); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("get of the lost block: %v, want it to wait", err)
			}
			if err := r.Put(d.fullProof); err != nil {
				t.Fatal(err)
			}
			for seq, want := range d.values {
				if got, err := r.Get(context.Background(), uint64(seq)); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("entry %d: %q, %v; want %q", seq, got, err, want)
				}
			}
		})
	}
}

// A manifest cut inside its header lists every feed as damaged; it used to
// open as an empty database.
func TestDamageManifestCutInItsHeaderListsEveryFeed(t *testing.T) {
	fx := getDamageFixture(t, true)
	s := fx.restore()
	s.setFileBytes(fileManifest, fx.files[fileManifest][:headerSize-6])
	c, _ := damageOpen(t, s)
	var slots []int
	for _, d := range c.Damaged() {
		if !errors.Is(d.Err, ErrCorrupt) {
			t.Fatalf("damage %v", d)
		}
		slots = append(slots, d.Slot)
	}
	if len(c.Feeds()) != 0 || !slices.Equal(slots, []int{0, 1, 2}) {
		t.Fatalf("%d feeds loaded, damaged slots %v; want none and [0 1 2]", len(c.Feeds()), slots)
	}
}

// TestDamageWritersKeyFileIsNeverTakenForANewFeed: a local writer's key file
// is durable before its manifest record is written, so a key file that is
// missing, short, blank or damaged is damage, even when the writer holds no
// entries yet (a blank key file beside blank files would otherwise read as
// a creation torn by a crash, and the writer would come back a replica).
// The database opens, lists the damage, and Writer returns it.
func TestDamageWritersKeyFileIsNeverTakenForANewFeed(t *testing.T) {
	for _, entries := range []int{0, 3} {
		for _, tc := range []struct {
			name   string
			damage func(path string) error
		}{
			{"missing", os.Remove},
			{"short", func(p string) error { return os.Truncate(p, 100) }},
			{"blank", func(p string) error { return os.WriteFile(p, make([]byte, 128), 0o600) }},
			{"flipped", func(p string) error {
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				b[20] ^= 1
				return os.WriteFile(p, b, 0o600)
			}},
		} {
			t.Run(fmt.Sprintf("%s/%d entries", tc.name, entries), func(t *testing.T) {
				dir := t.TempDir()
				c, err := Open(dir, nil)
				if err != nil {
					t.Fatal(err)
				}
				appendN(t, mustWriter(t, c, "w"), entries, "v")
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				if err := tc.damage(filepath.Join(dir, "feeds", "0", "key")); err != nil {
					t.Fatal(err)
				}
				c, err = Open(dir, nil)
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				defer c.Close()
				if d := c.Damaged(); len(d) != 1 || d[0].Slot != 0 || !errors.Is(d[0].Err, ErrCorrupt) {
					t.Fatalf("damage %v, want slot 0 as ErrCorrupt", d)
				}
				if w, err := c.Writer("w"); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Writer after its key file was damaged: %v, %v; want ErrCorrupt", w, err)
				}
			})
		}
	}
}
