package kappa

import (
	"encoding/binary"
	"math/bits"
)

// validJSON reports whether b is one JSON value, answering exactly what
// encoding/json.Valid answers for every input, several times faster. It
// is what Encoding.check uses for JSON databases.
//
// The grammar is RFC 8259's as the standard library's scanner reads it:
//
//   - whitespace is space, \t, \n and \r only, before and after the value;
//   - one value and nothing but whitespace after it; no input is invalid;
//   - numbers are -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?;
//   - strings refuse bytes below 0x20 and escapes other than \" \\ \/ \b
//     \f \n \r \t and \u with four hex digits of either case; they accept
//     any other byte, invalid UTF-8 and lone surrogate escapes included,
//     because the scanner does not decode what it checks;
//   - objects and arrays nest at most maxJSONDepth deep, the scanner's
//     maxNestingDepth: 10000 nested brackets are valid, 10001 are not.
//
// It does not recurse: the kinds of the open containers are a bit stack,
// one bit a level, in a small array on the stack that moves to the heap
// only past 256 levels.
func validJSON(b []byte) bool {
	var small [4]uint64
	stack := small[:] // bit d set: the container at depth d is an object
	depth := 0        // open containers
	inObject := false // the kind of the innermost one
	n := len(b)
	i := 0

	for {
		// At the start of a value, before any whitespace.
		i = skipJSONSpace(b, i)
		if i >= n {
			return false
		}
		switch c := b[i]; c {
		case '"':
			if i = scanJSONString(b, i+1); i < 0 {
				return false
			}
		case '{', '[':
			// The scanner counts the container before it looks inside,
			// so an empty one at the limit is too deep as well.
			if depth >= maxJSONDepth {
				return false
			}
			i = skipJSONSpace(b, i+1)
			if i >= n {
				return false
			}
			if c == '{' {
				if b[i] == '}' {
					i++
					break
				}
				if i = scanJSONKey(b, i); i < 0 {
					return false
				}
			} else if b[i] == ']' {
				i++
				break
			}
			depth++
			w, bit := depth>>6, uint64(1)<<(depth&63)
			if w == len(stack) {
				stack = append(stack, 0)
			}
			if c == '{' {
				stack[w] |= bit
			} else {
				stack[w] &^= bit
			}
			inObject = c == '{'
			continue
		case 't':
			if n-i < 4 || b[i+1] != 'r' || b[i+2] != 'u' || b[i+3] != 'e' {
				return false
			}
			i += 4
		case 'f':
			if n-i < 5 || b[i+1] != 'a' || b[i+2] != 'l' || b[i+3] != 's' || b[i+4] != 'e' {
				return false
			}
			i += 5
		case 'n':
			if n-i < 4 || b[i+1] != 'u' || b[i+2] != 'l' || b[i+3] != 'l' {
				return false
			}
			i += 4
		default:
			if i = scanJSONNumber(b, i); i < 0 {
				return false
			}
		}

		// After a value: close containers until one takes another value.
		for {
			i = skipJSONSpace(b, i)
			if depth == 0 {
				return i == n
			}
			if i >= n {
				return false
			}
			c := b[i]
			i++
			if c == ',' {
				if inObject {
					if i = scanJSONKey(b, i); i < 0 {
						return false
					}
				}
				break
			}
			if inObject && c != '}' || !inObject && c != ']' {
				return false
			}
			depth--
			inObject = stack[depth>>6]&(uint64(1)<<(depth&63)) != 0
		}
	}
}

// maxJSONDepth is encoding/json's maxNestingDepth: the scanner refuses the
// object or array that opens level 10001.
const maxJSONDepth = 10000

// skipJSONSpace returns the index of the first byte at or after i that is
// not JSON whitespace, or len(b).
func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && b[i] <= ' ' && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanJSONKey reads an object's member name and its colon, whitespace
// around them included, from b[i:]; it returns the index after the colon,
// or -1.
func scanJSONKey(b []byte, i int) int {
	i = skipJSONSpace(b, i)
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = scanJSONString(b, i+1); i < 0 {
		return -1
	}
	i = skipJSONSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return i + 1
}

// SWAR constants: one byte repeated in every lane of a uint64.
const (
	lanes01 = 0x0101010101010101
	lanes80 = 0x8080808080808080
)

// scanJSONString reads the rest of a string whose opening quote is just
// before b[i]; it returns the index after the closing quote, or -1.
func scanJSONString(b []byte, i int) int {
	n := len(b)
	for {
		// Skip ordinary bytes eight at a time. A lane is special if it is
		// below 0x20 (x-0x20 borrows), a quote or a backslash (x^'"' or
		// x^'\\' is zero, so minus one borrows); lanes of 0x80 and up are
		// ordinary, and the quote and the backslash leave their top bit
		// as x has it, so one &^x clears them for all three tests. A
		// borrow only moves upward from a true hit, so the lowest flagged
		// lane is the first special byte.
		if n-i >= 8 {
			x := binary.LittleEndian.Uint64(b[i:])
			q := x ^ (lanes01 * '"')
			s := x ^ (lanes01 * '\\')
			m := ((x - lanes01*0x20) | (q - lanes01) | (s - lanes01)) &^ x & lanes80
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		} else {
			for i < n && jsonStringPlain[b[i]] {
				i++
			}
			if i >= n {
				return -1
			}
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		}
		// A backslash.
		if i+1 >= n {
			return -1
		}
		switch b[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if n-i < 6 || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
				return -1
			}
			i += 6
		default:
			return -1
		}
	}
}

// jsonStringPlain marks the bytes a string holds as they are: all but
// control bytes, the quote and the backslash.
var jsonStringPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// scanJSONNumber reads a number starting at b[i]; it returns the index
// after it, or -1. What follows is the caller's to judge, so "01" reads as
// 0 and fails on the 1 there.
func scanJSONNumber(b []byte, i int) int {
	n := len(b)
	if b[i] == '-' {
		i++
		if i >= n {
			return -1
		}
	}
	switch c := b[i]; {
	case c == '0':
		i++
	case '1' <= c && c <= '9':
		i++
		for i < n && isDigit(b[i]) {
			i++
		}
	default:
		return -1
	}
	if i < n && b[i] == '.' {
		i++
		if i >= n || !isDigit(b[i]) {
			return -1
		}
		for i < n && isDigit(b[i]) {
			i++
		}
	}
	if i < n && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < n && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= n || !isDigit(b[i]) {
			return -1
		}
		for i < n && isDigit(b[i]) {
			i++
		}
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
