//go:build amd64 && !purego

package kappa

// sha256Blocks2 runs SHA-256's compression function over n blocks of two
// messages at once: the state h0 over the blocks at p0, and h1 over those
// at p1 (64n bytes each). It needs the SHA extensions; see haveSHA2.
//
//go:noescape
func sha256Blocks2(h0, h1 *[8]uint32, p0, p1 *byte, n int)

// cpuid returns what the CPUID instruction returns for leaf and sub.
func cpuid(leaf, sub uint32) (a, b, c, d uint32)

// haveSHA2 reports whether this CPU has what sha256Blocks2 uses: SSSE3,
// SSE4.1 and the SHA extensions.
func haveSHA2() bool {
	if max, _, _, _ := cpuid(0, 0); max < 7 {
		return false
	}
	_, _, c1, _ := cpuid(1, 0)
	_, b7, _, _ := cpuid(7, 0)
	const ssse3, sse41, sha = 1 << 9, 1 << 19, 1 << 29
	return c1&ssse3 != 0 && c1&sse41 != 0 && b7&sha != 0
}
