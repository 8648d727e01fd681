package kappa

import "strconv"

// Order is how two entries are related in causal order: whether one
// happened before the other, that is whether one is in the causal past of
// the other. Entry b's causal past is b's own feed's earlier entries, the
// entries its writer had seen when it appended b (the context recorded with
// b's Append call) and, transitively, their pasts. Causal order is a partial
// order: two entries appended by writers that had not seen each other's are
// Concurrent, and nothing orders them.
type Order int

const (
	// Unknown: the relation cannot be told yet, because one of the two
	// entries, or an entry in the causal past of one of them, is not held
	// (not replicated yet, or never coming: a dependency on a future entry
	// or a cycle between writers). It may change to one of the others as
	// entries arrive; the others never change.
	Unknown Order = iota
	// Before: a happened before b (a is in b's causal past).
	Before
	// After: b happened before a (b is in a's causal past).
	After
	// Concurrent: neither happened before the other.
	Concurrent
	// Same: a and b are the same entry.
	Same
)

// String returns "unknown", "before", "after", "concurrent" or "same".
func (o Order) String() string {
	switch o {
	case Unknown:
		return "unknown"
	case Before:
		return "before"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	case Same:
		return "same"
	}
	return "Order(" + strconv.Itoa(int(o)) + ")"
}
