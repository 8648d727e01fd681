package kappa

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"
)

// jsonGrammarCases are the edges of the grammar, each with the answer
// json.Valid gives; TestValidJSONGrammarEdges checks both agree with it.
var jsonGrammarCases = []struct {
	in    string
	valid bool
}{
	// Empty input and whitespace.
	{"", false},
	{" ", false},
	{" \t\r\n", false},
	{" \t\r\n1 \t\r\n", true},
	{"\v1", false},
	{"1\f", false},
	{"\u00a01", false},
	{"\xef\xbb\xbf1", false}, // a byte order mark is not whitespace
	{"1\x00", false},

	// Literals.
	{"true", true},
	{"false", true},
	{"null", true},
	{"tru", false},
	{"fals", false},
	{"nul", false},
	{"True", false},
	{"NULL", false},
	{"truee", false},
	{"true false", false},
	{"nulll", false},
	{"t", false},
	{"nan", false},
	{"NaN", false},
	{"Infinity", false},
	{"undefined", false},

	// Numbers.
	{"0", true},
	{"-0", true},
	{"1", true},
	{"-1", true},
	{"1234567890", true},
	{"00", false},
	{"01", false},
	{"-01", false},
	{"-", false},
	{"--1", false},
	{"+1", false},
	{".5", false},
	{"0.5", true},
	{"1.", false},
	{"1.e5", false},
	{"1.5", true},
	{"1.50", true},
	{"-0.0", true},
	{"0.", false},
	{"1e5", true},
	{"1E5", true},
	{"1e+5", true},
	{"1e-5", true},
	{"1e05", true},
	{"1e", false},
	{"1e+", false},
	{"1e-", false},
	{"1e+-5", false},
	{"1.5e5", true},
	{"1.5E-05", true},
	{"0e0", true},
	{"-0e-0", true},
	{"1e5.5", false},
	{"1.5.5", false},
	{"0x10", false},
	{"1_000", false},
	{"1 2", false},
	{"12345678901234567890123456789012345678901234567890", true},
	{"1e999999999999", true}, // the grammar has no range
	{"-", false},
	{"[-]", false},
	{"[1.]", false},
	{"[01]", false},
	{"[0,1]", true},
	{"[1e]", false},
	{"{\"a\":-}", false},
	{"{\"a\":1.}", false},
	{"{\"a\":0e1}", true},

	// Strings.
	{`""`, true},
	{`"a"`, true},
	{`"`, false},
	{`"abc`, false},
	{`abc"`, false},
	{`'a'`, false},
	{`"\""`, true},
	{`"\\"`, true},
	{`"\/"`, true},
	{`"\b\f\n\r\t"`, true},
	{`"\a"`, false},
	{`"\v"`, false},
	{`"\0"`, false},
	{`"\x41"`, false},
	{`"\'"`, false},
	{`"\U0041"`, false},
	{`"\u0041"`, true},
	{`"\uabcd"`, true},
	{`"\uABCD"`, true},
	{`"\uAbCd"`, true},
	{`"\u004"`, false},
	{`"\u00"`, false},
	{`"\u"`, false},
	{`"\u00g0"`, false},
	{`"\u00G0"`, false},
	{`"\u000g"`, false},
	{`"\u000G"`, false},
	{`"\u000"`, false},
	{`"\u0041\u00"`, false},
	{`"\ud800"`, true},       // a lone surrogate escape
	{`"\udc00\ud800"`, true}, // reversed surrogates
	{`"\`, false},
	{`"\"`, false},
	{`"\\\"`, false},
	{`"\\\\"`, true},
	{"\"a\x00b\"", false},
	{"\"a\x1fb\"", false},
	{"\"a\nb\"", false},
	{"\"a\tb\"", false},
	{"\"a\x7fb\"", true},
	{"\"a b\"", true},
	{"\"é\"", true},
	{"\"\xff\"", true},             // invalid UTF-8: not decoded
	{"\"\xc3\"", true},             // truncated sequence
	{"\"\xed\xa0\x80\"", true},     // an encoded surrogate
	{"\"\xc0\xaf\"", true},         // an overlong form
	{"\"\xf4\x90\x80\x80\"", true}, // past U+10FFFF
	{"\xff", false},
	{"[\"\xff\"]", true},
	{"{\"\xff\":\"\xfe\"}", true},
	{`"the quick brown fox jumps over the lazy dog"`, true},
	{`"the quick brown fox jumps over the lazy dog\"`, false},
	{"\"the quick brown fox jumps\x01over the lazy dog\"", false},
	{`"0123456\"89abcdef"`, true},
	{`"0123456"89abcdef"`, false},
	{`"01234567\\"`, true},

	// Arrays.
	{"[]", true},
	{"[ ]", true},
	{" [ \t\r\n] ", true},
	{"[", false},
	{"]", false},
	{"[[]", false},
	{"[]]", false},
	{"[1]", true},
	{"[1,2]", true},
	{"[ 1 , 2 ]", true},
	{"[1,]", false},
	{"[,1]", false},
	{"[,]", false},
	{"[1,,2]", false},
	{"[1 2]", false},
	{"[1:2]", false},
	{"[}", false},
	{"[true,false,null]", true},
	{"[[[]]]", true},
	{"[[],[]]", true},
	{"[][]", false},
	{"[],", false},
	{`["a",{"b":[1,{"c":null}]}]`, true},

	// Objects.
	{"{}", true},
	{"{ }", true},
	{"{", false},
	{"}", false},
	{"{]", false},
	{`{"a":1}`, true},
	{` { "a" : 1 , "b" : 2 } `, true},
	{`{"a":1,}`, false},
	{`{,"a":1}`, false},
	{`{"a"}`, false},
	{`{"a":}`, false},
	{`{"a" 1}`, false},
	{`{"a"::1}`, false},
	{`{"a":1 "b":2}`, false},
	{`{"a":1,"b"}`, false},
	{`{a:1}`, false},
	{`{1:1}`, false},
	{`{'a':1}`, false},
	{`{"a":1}}`, false},
	{`{"a":1`, false},
	{`{"a":1,`, false},
	{`{"a":1,"`, false},
	{`{"a"`, false},
	{`{"a":`, false},
	{`{"":0}`, true},
	{`{"a":1,"a":2}`, true}, // duplicate names are not the grammar's business
	{`{"a":{"b":{}}}`, true},
	{`{"a":[]}`, true},
	{`{"a":[}`, false},
	{`{"a":1]`, false},
	{`[{"a":1}]`, true},
	{`[{"a":1]}`, false},
	{`{}{}`, false},
	{`{} x`, false},
	{`{"a":true}`, true},
	{`{"a":tru}`, false},
	{`{"a":truex}`, false},
	{`{"a":"\u12"}`, false},
}

func TestValidJSONGrammarEdges(t *testing.T) {
	for _, c := range jsonGrammarCases {
		if std := json.Valid([]byte(c.in)); std != c.valid {
			t.Errorf("json.Valid(%q) = %v; the table says %v", c.in, std, c.valid)
		}
		if got := validJSON([]byte(c.in)); got != c.valid {
			t.Errorf("validJSON(%q) = %v, want %v", c.in, got, c.valid)
		}
	}
}

// TestValidJSONControlBytesAndEscapes tries every byte inside a string, and
// after a backslash, at every offset of an eight-byte block, where the
// string loop's fast path begins and ends.
func TestValidJSONControlBytesAndEscapes(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pad := 0; pad < 17; pad++ {
			pre := strings.Repeat("a", pad)
			for _, s := range []string{
				`"` + pre + string(rune(0)) + `"`,
				`"` + pre + `\` + string(rune(0)) + `"`,
				`"` + pre + `\u00` + string(rune(0)) + `0"`,
				`["` + pre + string(rune(0)) + `xyzxyzxyz"]`,
			} {
				in := []byte(s)
				for k := range in {
					if in[k] == 0 {
						in[k] = byte(c)
					}
				}
				checkValidJSON(t, in)
			}
		}
	}
}

// TestValidJSONDepthLimit finds json.Valid's boundary, 10000 nested arrays
// or objects valid and 10001 not, in every kind of nesting.
func TestValidJSONDepthLimit(t *testing.T) {
	nest := func(open, inner, close string, depth int) []byte {
		return []byte(strings.Repeat(open, depth) + inner + strings.Repeat(close, depth))
	}
	for _, depth := range []int{1, 63, 64, 65, 255, 256, 257, 9999, maxJSONDepth, maxJSONDepth + 1, 20000} {
		for _, in := range [][]byte{
			nest("[", "", "]", depth),
			nest("[", "1", "]", depth),
			nest("[", "[]", "]", depth-1),
			nest("[", "{}", "]", depth-1),
			nest(`{"a":`, "{}", "}", depth-1),
			nest(`{"a":`, "1", "}", depth),
			nest(`[{"a":`, "0", "}]", depth/2),
			nest(`{"a":[`, "0", "]}", depth/2),
			nest(` [ `, ` [ ] `, ` ] `, depth-1),
			nest("[1,", "2", "]", depth),
			[]byte(strings.Repeat("[", depth)), // never closed
		} {
			want := json.Valid(in)
			if got := validJSON(in); got != want {
				t.Errorf("depth %d, %.20q...: validJSON = %v, json.Valid = %v", depth, in, got, want)
			}
		}
	}
	if !validJSON(nest("[", "", "]", maxJSONDepth)) {
		t.Errorf("%d nested arrays refused", maxJSONDepth)
	}
	if validJSON(nest("[", "", "]", maxJSONDepth+1)) {
		t.Errorf("%d nested arrays accepted", maxJSONDepth+1)
	}
	// Containers closed and reopened at the limit stay within it.
	deep := strings.Repeat("[", maxJSONDepth-1)
	in := []byte(deep + `[],{},[1],{"a":0}, [ ] ` + strings.Repeat("]", maxJSONDepth-1))
	if got, want := validJSON(in), json.Valid(in); got != want || !want {
		t.Errorf("siblings at the limit: validJSON = %v, json.Valid = %v, want true", got, want)
	}
}

// TestValidJSONMatchesStdOnRandomDocuments generates documents and damages
// them, comparing every answer with json.Valid; the seed is printed so a
// failure can be replayed.
func TestValidJSONMatchesStdOnRandomDocuments(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	docs, valid := 0, 0
	for range 4000 {
		doc := genJSON(rng, 0)
		if !json.Valid(doc) {
			t.Fatalf("generator made invalid JSON: %q", doc)
		}
		checkValidJSON(t, doc)
		docs++
		valid++
		for range 8 {
			m := mutateJSON(rng, doc)
			if checkValidJSON(t, m) {
				valid++
			}
			docs++
		}
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
	t.Logf("%d documents, %d valid", docs, valid)
}

// checkValidJSON fails t if validJSON and json.Valid disagree on in, and
// returns json.Valid's answer.
func checkValidJSON(t testing.TB, in []byte) bool {
	t.Helper()
	want := json.Valid(in)
	if got := validJSON(in); got != want {
		t.Errorf("validJSON(%q) = %v, json.Valid = %v", in, got, want)
	}
	return want
}

// jsonSignificant are bytes the mutations insert and substitute: the ones
// that change how the grammar reads, and some that never may appear.
const jsonSignificant = "{}[]:,\"\\ \t\n\r0123456789-+.eEtrufalsn/bu\x00\x1f\x7f\xff"

func mutateJSON(rng *rand.Rand, doc []byte) []byte {
	m := append([]byte(nil), doc...)
	for range 1 + rng.Intn(3) {
		if len(m) == 0 {
			return m
		}
		k := rng.Intn(len(m))
		switch rng.Intn(6) {
		case 0: // flip a bit
			m[k] ^= 1 << rng.Intn(8)
		case 1: // truncate
			m = m[:k]
		case 2: // substitute a significant byte
			m[k] = jsonSignificant[rng.Intn(len(jsonSignificant))]
		case 3: // insert a significant byte
			m = append(m[:k], append([]byte{jsonSignificant[rng.Intn(len(jsonSignificant))]}, m[k:]...)...)
		case 4: // delete a byte
			m = append(m[:k], m[k+1:]...)
		case 5: // duplicate a span
			j := k + rng.Intn(len(m)-k)
			m = append(m[:j], append(append([]byte(nil), m[k:j]...), m[j:]...)...)
		}
	}
	return m
}

// genJSON makes a random valid document, with random whitespace, number
// forms, escapes and raw bytes (invalid UTF-8 included) in its strings.
func genJSON(rng *rand.Rand, depth int) []byte {
	ws := func() string {
		if rng.Intn(4) != 0 {
			return ""
		}
		return strings.Repeat(string(" \t\r\n"[rng.Intn(4)]), 1+rng.Intn(2))
	}
	var b strings.Builder
	b.WriteString(ws())
	kind := rng.Intn(8)
	if depth > 4 && kind >= 6 {
		kind = rng.Intn(6)
	}
	switch kind {
	case 0:
		b.WriteString([]string{"true", "false", "null"}[rng.Intn(3)])
	case 1, 2:
		b.WriteString(genJSONNumber(rng))
	case 3, 4, 5:
		b.WriteString(genJSONString(rng))
	case 6:
		b.WriteByte('[')
		b.WriteString(ws())
		for k := range rng.Intn(5) {
			if k > 0 {
				b.WriteByte(',')
			}
			b.Write(genJSON(rng, depth+1))
		}
		b.WriteByte(']')
	case 7:
		b.WriteByte('{')
		b.WriteString(ws())
		for k := range rng.Intn(5) {
			if k > 0 {
				b.WriteByte(',')
			}
			b.WriteString(ws() + genJSONString(rng) + ws() + ":")
			b.Write(genJSON(rng, depth+1))
		}
		b.WriteByte('}')
	}
	b.WriteString(ws())
	return []byte(b.String())
}

func genJSONNumber(rng *rand.Rand) string {
	var b strings.Builder
	if rng.Intn(3) == 0 {
		b.WriteByte('-')
	}
	if rng.Intn(4) == 0 {
		b.WriteByte('0')
	} else {
		fmt.Fprint(&b, 1+rng.Intn(9))
		for range rng.Intn(6) {
			fmt.Fprint(&b, rng.Intn(10))
		}
	}
	if rng.Intn(3) == 0 {
		fmt.Fprintf(&b, ".%d", rng.Intn(1000))
	}
	if rng.Intn(4) == 0 {
		b.WriteString([]string{"e", "E", "e+", "e-", "E+", "E-"}[rng.Intn(6)])
		fmt.Fprint(&b, rng.Intn(400))
	}
	return b.String()
}

func genJSONString(rng *rand.Rand) string {
	var b strings.Builder
	b.WriteByte('"')
	for range rng.Intn(40) {
		switch r := rng.Intn(20); {
		case r == 0:
			b.WriteString(`\` + string(`"\/bfnrt`[rng.Intn(8)]))
		case r == 1:
			fmt.Fprintf(&b, `\u%04x`, rng.Intn(0x10000))
		case r == 2:
			fmt.Fprintf(&b, `\u%04X`, rng.Intn(0x10000))
		case r == 3:
			b.WriteByte(byte(0x80 + rng.Intn(0x80))) // raw high byte
		case r == 4:
			b.WriteString("ü€😀")
		default:
			c := byte(0x20 + rng.Intn(0x5f))
			if c == '"' || c == '\\' {
				c = 'x'
			}
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// FuzzValidJSON checks validJSON against json.Valid on any input.
func FuzzValidJSON(f *testing.F) {
	for _, c := range jsonGrammarCases {
		f.Add([]byte(c.in))
	}
	for _, s := range []string{
		benchJSON100,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"a":[{"b":[{"c":[{"d":-0.5e-7}]}]}],"e":"\u00e9\ud83d\ude00\/\\"}`,
		"\"0123456789abcdef\x1f0123456789\"",
		"\"0123456789abcdef\\q0123456789\"",
	} {
		f.Add([]byte(s))
	}
	for _, depth := range []int{maxJSONDepth, maxJSONDepth + 1} {
		f.Add([]byte(strings.Repeat("[", depth) + strings.Repeat("]", depth)))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkValidJSON(t, in)
	})
}

// benchJSON100 is a typical chat message, about 100 bytes.
const benchJSON100 = `{"type":"chat","author":"user-012","seq":12345,"text":"the quick brown fox 1a2b3c4d","ok":true}`

// benchJSON1K is a string-heavy document of about 1 KB.
var benchJSON1K = func() []byte {
	text := strings.Repeat("the quick brown fox jumps over the lazy dog, ", 5)
	doc := fmt.Sprintf(`{"type":"post","author":"user-012","seq":12345,"title":"a post about foxes and dogs","body":"%s","tags":["fox","dog","quick"],"quote":"%s\n\t\"said the fox\"","ok":true}`, text+text, text)
	return []byte(doc)
}()

func benchmarkJSON(b *testing.B, valid func([]byte) bool, doc []byte) {
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if !valid(doc) {
			b.Fatal("refused")
		}
	}
}

func BenchmarkValidJSON100B(b *testing.B) {
	benchmarkJSON(b, validJSON, []byte(benchJSON100))
}

func BenchmarkStdJSONValid100B(b *testing.B) {
	benchmarkJSON(b, json.Valid, []byte(benchJSON100))
}

func BenchmarkValidJSON1K(b *testing.B) {
	benchmarkJSON(b, validJSON, benchJSON1K)
}

func BenchmarkStdJSONValid1K(b *testing.B) {
	benchmarkJSON(b, json.Valid, benchJSON1K)
}
