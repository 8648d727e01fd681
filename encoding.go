package kappa

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Encoding names how a database's values are encoded, as in the seed's
// valueEncoding option. A database stores its encoding when it is created;
// see Options.ValueEncoding.
type Encoding string

// The value encodings. Names are matched without regard to case, and
// "utf8" is taken for UTF8.
const (
	Binary Encoding = "binary" // any bytes; the default
	JSON   Encoding = "json"   // each value is one JSON document
	UTF8   Encoding = "utf-8"  // each value is UTF-8 text
)

// normalize returns the canonical form of e, Binary for "", or
// ErrInvalidValue for a name it does not know.
func (e Encoding) normalize() (Encoding, error) {
	switch strings.ToLower(string(e)) {
	case "", string(Binary):
		return Binary, nil
	case string(JSON):
		return JSON, nil
	case string(UTF8), "utf8":
		return UTF8, nil
	}
	return "", fmt.Errorf("%w: unknown value encoding %q (want binary, json or utf-8)", ErrInvalidValue, string(e))
}

// check returns nil if v is a valid value in encoding e (which must be
// normalized), else an error wrapping ErrInvalidValue.
func (e Encoding) check(v []byte) error {
	switch e {
	case JSON:
		if !validJSON(v) {
			return fmt.Errorf("%w: not JSON", ErrInvalidValue)
		}
	case UTF8:
		if !utf8.Valid(v) {
			return fmt.Errorf("%w: not UTF-8", ErrInvalidValue)
		}
	}
	return nil
}

// code and encodingFromCode map encodings to the byte the database file
// stores; see doc/FORMAT.md.
func (e Encoding) code() byte {
	switch e {
	case JSON:
		return 2
	case UTF8:
		return 3
	}
	return 1
}

func encodingFromCode(b byte) (Encoding, bool) {
	switch b {
	case 0, 1:
		return Binary, true
	case 2:
		return JSON, true
	case 3:
		return UTF8, true
	}
	return "", false
}
