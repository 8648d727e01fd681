package kv

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	kappa "github.com/kappa-db/kappa-go"
)

// onlyFeed returns an Accept that takes the feed key alone.
func onlyFeed(key []byte) func([]byte) bool {
	return func(k []byte) bool { return bytes.Equal(k, key) }
}

func TestReplicasThatHoldTheSameEntriesAnswerTheSame(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 18))
			opts := &kappa.Options{ValueEncoding: kappa.JSON}
			rs := []*replica{newReplica(t, opts)}
			opts.SharedKey = rs[0].core.SharedKey()
			nw := 3 + rng.IntN(3)
			for len(rs) < nw {
				rs = append(rs, newReplica(t, opts))
			}
			ws := make([]*kappa.Feed, nw)
			for i, r := range rs {
				ws[i] = r.writer(t, fmt.Sprint("w", i))
			}
			keys := []string{"x", "y", "z"}
			for step := range 60 {
				i := rng.IntN(nw)
				switch n := rng.IntN(10); {
				case n < 5:
					if err := rs[i].kv.Put(ws[i], keys[rng.IntN(len(keys))], []byte(fmt.Sprint(step))); err != nil {
						t.Fatal(err)
					}
				case n < 6:
					if err := rs[i].kv.Delete(ws[i], keys[rng.IntN(len(keys))]); err != nil {
						t.Fatal(err)
					}
				default:
					// A partial exchange: i takes one feed from j.
					j := (i + 1 + rng.IntN(nw-1)) % nw
					k := rng.IntN(nw)
					syncPair(t, rs[j].core, rs[i].core, onlyFeed(ws[k].Key()))
				}
			}
			// Two fresh replicas take the feeds one at a time, in
			// opposite orders, each indexed before the next comes.
			var fresh [2]*replica
			for f := range fresh {
				fresh[f] = newReplica(t, opts)
				for n := range nw {
					k := n
					if f == 1 {
						k = nw - 1 - n
					}
					syncPair(t, rs[k].core, fresh[f].core, onlyFeed(ws[k].Key()))
					fresh[f].ready(t)
				}
			}
			want := model(t, allEntries(t, fresh[0].core))
			equalDumps(t, "first fresh replica", dump(t, fresh[0].kv), want)
			equalDumps(t, "second fresh replica", dump(t, fresh[1].kv), want)
			// And the writers' replicas, once each holds every feed.
			for i := range rs {
				for k := range rs {
					if k != i {
						syncPair(t, rs[k].core, rs[i].core, onlyFeed(ws[k].Key()))
					}
				}
			}
			for i, r := range rs {
				r.ready(t)
				equalDumps(t, fmt.Sprint("writer ", i), dump(t, r.kv), want)
			}
		})
	}
}

func TestPutsWaitForTheEntriesTheyFollowAndTheViewGoesOn(t *testing.T) {
	opts := &kappa.Options{ValueEncoding: kappa.JSON}
	alice := newReplica(t, opts)
	opts.SharedKey = alice.core.SharedKey()
	bob := newReplica(t, opts)
	carol := newReplica(t, opts)
	wa, wb, wc := alice.writer(t, "alice"), bob.writer(t, "bob"), carol.writer(t, "carol")
	alice.kv.Put(wa, "q", []byte("question"))
	syncPair(t, alice.core, bob.core, nil)
	bob.ready(t)
	bob.kv.Put(wb, "q", []byte("answer")) // follows alice's question
	carol.kv.Put(wc, "c", []byte("carol's"))
	// Carol takes bob's feed alone: his Put waits for alice's entry; her
	// own goes on, and Ready does not wait for what is not held.
	syncPair(t, bob.core, carol.core, onlyFeed(wb.Key()))
	carol.ready(t)
	if vs, _ := carol.kv.Get("q"); vs != nil {
		t.Fatalf("q before alice's entry came: %s", fmtVersions(vs))
	}
	if vs, _ := carol.kv.Get("c"); len(vs) != 1 {
		t.Fatalf("c: %s", fmtVersions(vs))
	}
	syncPair(t, alice.core, carol.core, onlyFeed(wa.Key()))
	carol.ready(t)
	vs, _ := carol.kv.Get("q")
	if len(vs) != 1 || string(vs[0].Value) != "answer" {
		t.Fatalf("q: %s, want bob's answer alone", fmtVersions(vs))
	}
}
