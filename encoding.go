package kappa

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Value encodings, as in the seed's valueEncoding option.
const (
	EncodingBinary = "binary" // any bytes; the default
	EncodingJSON   = "json"   // each value is one JSON document
	EncodingUTF8   = "utf-8"  // each value is UTF-8 text
)

// valueCheck returns the test Append applies for an encoding.
func valueCheck(enc string) (func([]byte) error, error) {
	switch enc {
	case "", EncodingBinary:
		return nil, nil
	case EncodingJSON:
		return func(v []byte) error {
			if !json.Valid(v) {
				return fmt.Errorf("%w: not JSON", ErrInvalidValue)
			}
			return nil
		}, nil
	case EncodingUTF8, "utf8":
		return func(v []byte) error {
			if !utf8.Valid(v) {
				return fmt.Errorf("%w: not UTF-8", ErrInvalidValue)
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("%w: unknown value encoding %q", ErrInvalidValue, enc)
}
