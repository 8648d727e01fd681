package kappa

import (
	"context"
	"testing"
)

// mustBlocks returns the blocks [0, n) of f as stored: each value with the
// causal context before it (format 4).
func mustBlocks(tb testing.TB, f *Feed, n uint64) [][]byte {
	tb.Helper()
	if n == 0 {
		return nil
	}
	blocks, err := f.getBlocks(context.Background(), 0, n)
	if err != nil {
		tb.Fatal(err)
	}
	return blocks
}

// bareBlockLen is the size of the block of value v appended without a
// causal context (a writer alone, or not the first entry of its Append
// call): the byte 0x00 and the value.
func bareBlockLen(v []byte) int { return 1 + len(v) }
