package kv

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	kappa "github.com/kappa-db/kappa-go"
)

// An entry of the key-value view is a JSON object, valid under every value
// encoding of a database (JSON, UTF-8 and binary):
//
//	{"kv":1,"k":"<key>","v":"<value, standard base64>"}   a Put
//	{"kv":1,"k":"<key>","d":true}                         a Delete
//
// The key is a JSON string, so it must be valid UTF-8. An entry that is not
// such an object (kv absent or not 1, k absent, neither v nor d:true, v not
// base64, not JSON at all) is not a key-value entry: the view skips it, so
// other applications can share the feeds.

// record is one decoded key-value entry.
type record struct {
	key     string
	value   []byte
	deleted bool
}

// wireRecord is the JSON form of a record.
type wireRecord struct {
	KV int     `json:"kv"`
	K  *string `json:"k"`
	V  *string `json:"v,omitempty"`
	D  bool    `json:"d,omitempty"`
}

// encodeRecord returns the entry value for r.
func encodeRecord(r record) ([]byte, error) {
	if !utf8.ValidString(r.key) {
		return nil, fmt.Errorf("kv: key %q: %w: not valid UTF-8", r.key, kappa.ErrInvalidValue)
	}
	w := wireRecord{KV: 1, K: &r.key}
	if r.deleted {
		w.D = true
	} else {
		v := base64.StdEncoding.EncodeToString(r.value)
		w.V = &v
	}
	return json.Marshal(w)
}

// decodeRecord decodes an entry value; ok is false for a value that is not
// a key-value entry.
func decodeRecord(b []byte) (r record, ok bool) {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || b[0] != '{' || !bytes.Contains(b, []byte(`"kv"`)) {
		return record{}, false // fast path for other applications' entries
	}
	var w wireRecord
	if err := json.Unmarshal(b, &w); err != nil || w.KV != 1 || w.K == nil {
		return record{}, false
	}
	r.key = *w.K
	switch {
	case w.D && w.V == nil:
		r.deleted = true
	case !w.D && w.V != nil:
		v, err := base64.StdEncoding.DecodeString(*w.V)
		if err != nil {
			return record{}, false
		}
		r.value = v
	default:
		return record{}, false
	}
	return r, true
}
