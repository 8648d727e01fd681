//go:build !amd64 || purego

package kappa

// haveSHA2: only amd64 has sha256Blocks2 (see sha256x2_amd64.s).
func haveSHA2() bool { return false }

// sha256Blocks2 is never called where haveSHA2 is false.
func sha256Blocks2(h0, h1 *[8]uint32, p0, p1 *byte, n int) {
	panic("kappa: sha256Blocks2 without the SHA extensions")
}
