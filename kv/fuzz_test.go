package kv

import (
	"bytes"
	"testing"
)

// FuzzReplay: the log decoder never panics, stops at the first record that
// is not whole, and what it reads back encodes to the same bytes.
func FuzzReplay(f *testing.F) {
	feed := bytes.Repeat([]byte{7}, 32)
	f.Add([]byte(logMagic))
	f.Add(append([]byte(logMagic), encodeLogRecord([]op{{kind: opAdd, key: "a", feed: feed, seq: 3, value: []byte("v")}, {kind: opRemove, key: "a", feed: feed, seq: 1}}, []byte("state"))...))
	f.Add(append([]byte(logMagic), encodeLogRecord([]op{{kind: opAdd, key: "", feed: feed, deleted: true}}, nil)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var re []byte
		var ops []op
		state, good, err := replay(b, func(o op) { ops = append(ops, o) })
		if err != nil {
			return
		}
		if good < int64(len(logMagic)) || good > int64(len(b)) {
			t.Fatalf("good prefix %d of %d bytes", good, len(b))
		}
		// Read again record by record: the prefix re-encodes exactly.
		re = append(re, logMagic...)
		var last []byte
		off := len(logMagic)
		for int64(off) < good {
			n := int(uint32(b[off])<<24 | uint32(b[off+1])<<16 | uint32(b[off+2])<<8 | uint32(b[off+3]))
			ro, st, err := decodeBody(b[off+4 : off+4+n])
			if err != nil {
				t.Fatal(err)
			}
			re = append(re, encodeLogRecord(ro, st)...)
			last = st
			off += 8 + n
		}
		if !bytes.Equal(re, b[:good]) {
			t.Fatalf("prefix does not re-encode")
		}
		if !bytes.Equal(last, state) {
			t.Fatalf("state %q, last record's %q", state, last)
		}
	})
}

// FuzzDecodeRecord: the entry decoder never panics, and a record it
// accepts encodes to an entry that decodes to the same record.
func FuzzDecodeRecord(f *testing.F) {
	for _, s := range []string{`{"kv":1,"k":"a","v":"eA=="}`, `{"kv":1,"k":"a","d":true}`, `{"kv":1,"k":"a"}`, `x`, `{"kv":"1"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := decodeRecord(b)
		if !ok {
			return
		}
		e, err := encodeRecord(r)
		if err != nil {
			return // a key decoded from JSON with invalid UTF-8 escapes
		}
		r2, ok := decodeRecord(e)
		if !ok || r2.key != r.key || !bytes.Equal(r2.value, r.value) || r2.deleted != r.deleted {
			t.Fatalf("%q: %+v, again %+v", b, r, r2)
		}
	})
}
