package kv

import (
	"sync"

	kappa "github.com/kappa-db/kappa-go"
)

// order is how two entries are related in causal order (as kappa.Order).
type order int

const (
	orderUnknown order = iota
	orderBefore
	orderAfter
	orderConcurrent
	orderSame
)

// orderer tells how entries a and b are related.
type orderer interface {
	compare(a, b kappa.Pos) (order, error)
}

// depsOrder is happened-before computed from the Deps of the entries the
// view was given (every entry, key-value or not), in memory. It is exact
// for the entries it saw; a comparison that needs an entry it has not seen
// is orderUnknown. It stands in until the database's own Compare is
// available.
type depsOrder struct {
	mu   sync.Mutex
	n    map[string]uint64                 // per feed: entries seen (contiguous from 0)
	deps map[string]map[uint64][]kappa.Pos // per feed: the entries with Deps
}

func newDepsOrder() *depsOrder {
	return &depsOrder{n: map[string]uint64{}, deps: map[string]map[uint64][]kappa.Pos{}}
}

// saw records the entries of a batch.
func (d *depsOrder) saw(entries []kappa.Entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range entries {
		k := string(e.Key)
		if e.Seq+1 > d.n[k] {
			d.n[k] = e.Seq + 1
		}
		if len(e.Deps) > 0 {
			m := d.deps[k]
			if m == nil {
				m = map[uint64][]kappa.Pos{}
				d.deps[k] = m
			}
			m[e.Seq] = e.Deps
		}
	}
}

// past returns, for each feed, how many of its entries are in the causal
// past of p (p included); ok is false if that needs an entry not seen.
func (d *depsOrder) past(p kappa.Pos) (map[string]uint64, bool) {
	vc := map[string]uint64{string(p.Feed): p.Seq + 1}
	work := []string{string(p.Feed)}
	done := map[string]uint64{}
	for len(work) > 0 {
		f := work[len(work)-1]
		work = work[:len(work)-1]
		upto := vc[f]
		if done[f] >= upto {
			continue
		}
		if d.n[f] < upto {
			return nil, false
		}
		for s, ds := range d.deps[f] {
			if s < done[f] || s >= upto {
				continue
			}
			for _, q := range ds {
				if q.Seq+1 > vc[string(q.Feed)] {
					vc[string(q.Feed)] = q.Seq + 1
					work = append(work, string(q.Feed))
				}
			}
		}
		done[f] = upto
	}
	return vc, true
}

func (d *depsOrder) compare(a, b kappa.Pos) (order, error) {
	if string(a.Feed) == string(b.Feed) {
		return cmpOrder(a.Seq, b.Seq), nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pb, ok := d.past(b)
	if !ok {
		return orderUnknown, nil
	}
	if a.Seq < pb[string(a.Feed)] {
		return orderBefore, nil
	}
	pa, ok := d.past(a)
	if !ok {
		return orderUnknown, nil
	}
	if b.Seq < pa[string(b.Feed)] {
		return orderAfter, nil
	}
	return orderConcurrent, nil
}
