package kappa

import (
	"bytes"
	"reflect"
	"testing"
)

// forkFileSeed returns a real fork file and the key it is evidence for: a
// replica of one writer's feed put a proof of another writer's history
// under the same key pair.
func forkFileSeed(tb testing.TB) ([]byte, []byte) {
	tb.Helper()
	kp := mustKeyPair(tb)
	var ws [2]*Feed
	for i := range ws {
		w, err := OpenFeed(NewMemStorage(), "w/", &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
		if err != nil {
			tb.Fatal(err)
		}
		defer w.Close()
		appendN(tb, w, 3+4*i, string(rune('a'+i)))
		ws[i] = w
	}
	s := NewMemStorage()
	r, err := OpenFeed(s, "r/", &FeedOptions{Key: kp.PublicKey})
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	for i, start := range []uint64{0, 3} {
		p, err := ws[i].Proof(start, ws[i].Len(), 0)
		if err != nil {
			tb.Fatal(err)
		}
		r.Put(p)
	}
	ev := r.Fork()
	if ev == nil {
		tb.Fatal("no fork found")
	}
	return encodeForkFile(ev.Node, ev.Local, ev.Peer), kp.PublicKey
}

// FuzzForkFile decodes arbitrary bytes as a fork file. It must never panic;
// whatever decodes holds two signed proofs that encode and decode back to
// the same values, and checking it as evidence never panics either.
func FuzzForkFile(f *testing.F) {
	b, key := forkFileSeed(f)
	f.Add(b)
	f.Add(b[:forkFixed])
	cut := bytes.Clone(b)
	cut[len(cut)-1] ^= 1
	f.Add(cut)
	f.Add(encodeForkFile(7, &Proof{Start: 1, Blocks: [][]byte{{}}, Length: 2, Signature: make([]byte, 64)}, &Proof{Blocks: [][]byte{nil}, Length: 1, Signature: make([]byte, 64)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		node, local, peer, err := decodeForkFile(b)
		if err != nil {
			return
		}
		if local.Signature == nil || peer.Signature == nil || len(local.Blocks) == 0 || len(peer.Blocks) == 0 {
			t.Fatalf("decoded a proof without signature or blocks")
		}
		node2, local2, peer2, err := decodeForkFile(encodeForkFile(node, local, peer))
		if err != nil {
			t.Fatalf("encoded again, it does not decode: %v", err)
		}
		if node2 != node || !reflect.DeepEqual(local2, local) || !reflect.DeepEqual(peer2, peer) {
			t.Fatalf("encode then decode changed the evidence")
		}
		(&ForkEvidence{Key: key, Node: node, Local: local, Peer: peer}).Verify()
	})
}
