package kv

import kappa "github.com/kappa-db/kappa-go"

// orderer tells how entries a and b are related in causal order:
// *kappa.Core's Compare.
type orderer interface {
	Compare(a, b kappa.Pos) (kappa.Order, error)
}
