package kappa

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// TestFeedErrorsNameFeedAndOperation checks that a feed's errors are
// *FeedError values that carry its key and the operation, read "feed
// <8 hex>: <op>: <cause>", and still match their sentinel.
func TestFeedErrorsNameFeedAndOperation(t *testing.T) {
	w := newFeed(t, NewMemStorage(), nil)
	mustAppend(t, w, "a", "b")
	r := newFeed(t, NewMemStorage(), &FeedOptions{Key: w.Key()})
	cases := []struct {
		name string
		err  error
		op   string
		want error
	}{
		{"get past the end", func() error { _, err := w.Get(context.Background(), 5); return err }(), "get 5 of 2", ErrOutOfRange},
		{"head of an empty feed", func() error { _, err := r.Head(context.Background()); return err }(), "head", ErrEmpty},
		{"append to a replica", func() error { _, err := r.Append([]byte("x")); return err }(), "append", ErrNotWritable},
		{"put to a writer", w.Put(&Proof{}), "put", ErrNotWritable},
		{"nil proof", r.Put(nil), "put", ErrBadProof},
		{"proof past the end", func() error { _, err := w.Proof(0, 5, 0); return err }(), "proof of [0, 5) with length 2", ErrOutOfRange},
	}
	for _, c := range cases {
		var fe *FeedError
		if !errors.As(c.err, &fe) {
			t.Errorf("%s: %v (%T) is no *FeedError", c.name, c.err, c.err)
			continue
		}
		if !bytes.Equal(fe.Key, w.Key()) || fe.Op != c.op {
			t.Errorf("%s: key %x, op %q; want %x, %q", c.name, fe.Key, fe.Op, w.Key(), c.op)
		}
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v does not match %v", c.name, c.err, c.want)
		}
		prefix := "feed " + hexPrefix(w.Key()) + ": " + c.op + ": "
		if !strings.HasPrefix(c.err.Error(), prefix) {
			t.Errorf("%s: %q does not start with %q", c.name, c.err, prefix)
		}
	}
}

func hexPrefix(key []byte) string {
	const digits = "0123456789abcdef"
	var b []byte
	for _, c := range key[:4] {
		b = append(b, digits[c>>4], digits[c&15])
	}
	return string(b)
}

// TestErrorsNameTheirOriginFirst: an error that wraps a sentinel says
// where it comes from before the sentinel's "kappa:", once; and a Damage
// of zero fields still describes itself.
func TestErrorsNameTheirOriginFirst(t *testing.T) {
	c := newCore(t, nil)
	_, cmpErr := c.Compare(Pos{Feed: []byte{1}}, Pos{Feed: []byte{2}})
	_, keyErr := KeyPairFromSecret(make([]byte, 10))
	_, roErr := Open(t.TempDir()+"/none", &Options{ReadOnly: true})
	closed := newCore(t, nil)
	closed.Close()
	_, closedErr := closed.Compare(Pos{Feed: make([]byte, 32)}, Pos{Feed: make([]byte, 32)})
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"compare of a short key", cmpErr, ErrInvalidKey},
		{"compare after close", closedErr, ErrClosed},
		{"key pair of 10 bytes", keyErr, ErrInvalidKey},
		{"read-only open of nothing", roErr, ErrReadOnly},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v does not match %v", c.name, c.err, c.want)
			continue
		}
		if msg := c.err.Error(); strings.HasPrefix(msg, "kappa:") || strings.Count(msg, "kappa:") != 1 {
			t.Errorf("%s: %q: want its origin first, and \"kappa:\" once", c.name, msg)
		}
	}
	for _, d := range []Damage{{}, {Key: []byte{1}}} {
		if msg := d.Error(); !strings.HasPrefix(msg, "feed 0") {
			t.Errorf("Damage %+v: %q", d, msg)
		}
	}
}
