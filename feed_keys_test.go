package kappa

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

// forgeSeed rewrites the key file of the feed under "f/" so that its
// record is intact (its CRC holds) and its public key and the secret key's
// public half are the feed's, but the secret key's seed is another key
// pair's: a key file this package never writes.
func forgeSeed(t *testing.T, s *MemStorage) {
	t.Helper()
	b := mustFileBytes(t, s, "f/key")
	pub := bytes.Clone(b[keyPubOff:keySecretOff])
	other, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	secret := append(bytes.Clone(other.SecretKey[:32]), pub...)
	rec := encodeKeyRecord(pub, secret)
	s.setFileBytes("f/key", rec[:])
}

// A key file whose seed is not the public key's is found before anything
// is signed with it: opening reads entries, but an append, or the replay of
// a journal, fails with ErrCorrupt naming the key file and changes
// nothing. (Opening compares only the stored public halves; the seed is
// checked where it is first used.)
func TestKeyFileWithAnotherSeedSignsNothing(t *testing.T) {
	t.Run("append", func(t *testing.T) {
		s := NewMemStorage()
		w := newFeed(t, s, nil)
		mustAppend(t, w, "a", "b", "c")
		w.Close()
		forgeSeed(t, s)
		w = newFeed(t, s, nil)
		defer w.Close()
		if v, err := w.Get(context.Background(), 2); err != nil || string(v) != "c" {
			t.Fatalf("get 2: %q, %v", v, err)
		}
		_, err := w.Append([]byte("d"))
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.File != "f/key" {
			t.Fatalf("append under a forged seed: %v, want ErrCorrupt naming f/key", err)
		}
		if w.Len() != 3 {
			t.Fatalf("length %d after the failed append, want 3", w.Len())
		}
	})
	t.Run("journal replay", func(t *testing.T) {
		s := NewMemStorage()
		f, _ := journaledFeed(t, s, nil, 5)
		lost := s.crashClone(nil) // the journal holds unsigned records to replay
		f.Close()
		forgeSeed(t, lost)
		before := memSnapshot(lost)
		for _, ro := range []bool{false, true} {
			g, err := OpenFeed(lost, "f/", &FeedOptions{ReadOnly: ro})
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.File != "f/key" {
				if err == nil {
					g.Close()
				}
				t.Fatalf("open (read-only %v) of a journal under a forged seed: %v, want ErrCorrupt naming f/key", ro, err)
			}
		}
		if after := memSnapshot(lost); !maps.EqualFunc(after, before, bytes.Equal) {
			t.Fatal("a refused replay changed the storage")
		}
	})
}

// Core.Verify checks what opening leaves to the first append: a writer's
// key file whose secret key's seed is another key pair's is damage, and
// the writer's append fails with ErrCorrupt.
func TestVerifyFindsAWriterKeyOfAnotherSeed(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mustWriter(t, c, "w").Append([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "feeds", "0", "key")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	pub := b[keyPubOff:keySecretOff]
	rec := encodeKeyRecord(pub, append(bytes.Clone(other.SecretKey[:32]), pub...))
	if err := os.WriteFile(path, rec[:], 0o600); err != nil {
		t.Fatal(err)
	}

	c, err = Open(dir, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer c.Close()
	var found []Damage
	st, err := c.Verify(context.Background(), &VerifyOptions{OnDamage: func(d Damage) { found = append(found, d) }})
	if err != nil {
		t.Fatal(err)
	}
	var ce *CorruptError
	if st.Problems != 1 || len(found) != 1 || !errors.As(found[0].Err, &ce) || ce.File != "feeds/0/key" || found[0].Name != "w" {
		t.Fatalf("verify: %d problems, %v; want one, the key file of writer w", st.Problems, found)
	}
	w := mustWriter(t, c, "w")
	if _, err := w.Append([]byte("b")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("append: %v, want ErrCorrupt", err)
	}
	if w.Len() != 1 {
		t.Fatalf("length %d after the failed append, want 1", w.Len())
	}

	// A key file cut short since the open is damage too, not a failure
	// to read.
	if err := os.Truncate(path, 100); err != nil {
		t.Fatal(err)
	}
	found = nil
	if st, err = c.Verify(context.Background(), &VerifyOptions{OnDamage: func(d Damage) { found = append(found, d) }}); err != nil {
		t.Fatalf("verify of a key file cut short: %v", err)
	}
	if st.Problems != 1 || len(found) != 1 || !errors.As(found[0].Err, &ce) || ce.File != "feeds/0/key" {
		t.Fatalf("verify of a key file cut short: %d problems, %v; want one, the key file", st.Problems, found)
	}
}
