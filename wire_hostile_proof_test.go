package kappa

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestHostileMessageForAFeedNeverOffered: messages about feeds the hostile
// side never offered, or out of turn.
func TestHostileMessageForAFeedNeverOffered(t *testing.T) {
	cases := []struct {
		name string
		msgs func(ff *feedFixture) [][]byte
	}{
		{"have", func(*feedFixture) [][]byte { return [][]byte{haveMsg(0, 3, span{0, 3})} }},
		{"have after one feed", func(ff *feedFixture) [][]byte {
			return [][]byte{feedMsg(0, ff.w.Key()), haveMsg(1, 3, span{0, 3})}
		}},
		{"data", func(ff *feedFixture) [][]byte {
			p, _ := ff.w.Proof(0, 1, 0)
			return [][]byte{encodeData(0, p)}
		}},
		{"not available", func(*feedFixture) [][]byte { return [][]byte{notAvailableMsg(0, 0, 1)} }},
		{"request", func(*feedFixture) [][]byte { return [][]byte{requestMsg(1, 0, 1, 0)} }},
		{"request, id past 64 bits", func(*feedFixture) [][]byte { return [][]byte{requestMsg(^uint64(0), 0, 1, 0)} }},
		{"feed announced with id 5 first", func(ff *feedFixture) [][]byte { return [][]byte{feedMsg(5, ff.w.Key())} }},
		{"feed announced twice with id 0", func(ff *feedFixture) [][]byte {
			return [][]byte{feedMsg(0, ff.w.Key()), feedMsg(0, ff.w.Key())}
		}},
		{"unknown message type", func(*feedFixture) [][]byte { return [][]byte{{9}} }},
		{"synced twice", func(*feedFixture) [][]byte { return [][]byte{syncedMessage{}.encode(), syncedMessage{}.encode()} }},
		{"done twice", func(*feedFixture) [][]byte { return [][]byte{doneMessage{}.encode(), doneMessage{}.encode()} }},
		{"ping with a body", func(*feedFixture) [][]byte { return [][]byte{{msgPing, 0}} }},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				// The honest side holds one feed (its id 0) whose writer the
				// test can sign with.
				ff := newFeedFixture(t, 5, 0, 3, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				h.drain()
				h.send(tc.msgs(ff)...)
				if err := h.result(); !errors.Is(err, ErrProtocol) {
					t.Fatalf("got %v, want ErrProtocol", err)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBadProof: the honest side holds w's tree at length 16 with
// blocks [0, 8), so it asks for [8, 16) knowing length 16, and the answer
// is a proof without a signature that must meet the tree it holds.
// Tampered, it is asked for again with known = 0 (unless it claims another
// length); tampered again (and still unsigned), it is ErrBadProof naming
// the feed.
func TestHostileBadProof(t *testing.T) {
	tamper := []struct {
		name string
		f    func(p *Proof)
	}{
		{"node hash flipped", func(p *Proof) { p.Nodes[0].Hash[0] ^= 1 }},
		{"node size changed", func(p *Proof) { p.Nodes[0].Size++ }},
		{"node index changed", func(p *Proof) { p.Nodes[0].Index += 2 }},
		{"node missing", func(p *Proof) { p.Nodes = p.Nodes[1:] }},
		{"node added", func(p *Proof) { p.Nodes = append(p.Nodes, p.Nodes[0]) }},
		{"block flipped", func(p *Proof) { p.Blocks[3] = append([]byte("X"), p.Blocks[3][1:]...) }},
		{"block longer", func(p *Proof) { p.Blocks[0] = append(p.Blocks[0], 0) }},
		{"blocks swapped", func(p *Proof) { p.Blocks[0], p.Blocks[1] = p.Blocks[1], p.Blocks[0] }},
		{"length shorter", func(p *Proof) { p.Length = 15 }},
	}
	for _, kind := range connKinds {
		for _, tc := range tamper {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 16, 0, 8, 0)
				if ff.x.Len() != 16 || ff.x.Downloaded() != 8 {
					t.Fatalf("fixture: length %d, held %d", ff.x.Len(), ff.x.Downloaded())
				}
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				r := h.offer(ff.w.Key(), haveMsg(0, 16, span{0, 16}))
				if r != (wireRequest{0, 8, 16, 16}) {
					t.Fatalf("request %+v", r)
				}
				p, err := ff.w.Proof(r.start, r.end, r.known)
				if err != nil {
					t.Fatal(err)
				}
				if p.Signature != nil || len(p.Nodes) == 0 {
					t.Fatalf("want an unsigned proof with nodes: %+v", p)
				}
				tc.f(p)
				if p.Length == r.known {
					// An unsigned answer at the length asked that misses
					// the tree may come from a peer with another history
					// (a fork): it is asked again with known = 0, and an
					// unsigned answer to that is the error.
					h.send(encodeData(r.id, p))
					again := parseRequest(t, h.until(msgRequest))
					if again != (wireRequest{0, 8, 16, 0}) {
						t.Fatalf("asked again %+v, want [8, 16) knowing 0", again)
					}
				}
				h.drain()
				h.send(encodeData(r.id, p))
				err = h.result()
				if !errors.Is(err, ErrBadProof) || !strings.Contains(err.Error(), keyTag(ff.w.Key())) {
					t.Fatalf("got %v, want ErrBadProof naming feed %s", err, keyTag(ff.w.Key()))
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBadSignature: the honest side holds an empty replica, so the
// answer carries a signature. Anything tampered under it, a node hash
// included, changes the roots, and the signature no longer signs them:
// ErrBadSignature.
func TestHostileBadSignature(t *testing.T) {
	tamper := []struct {
		name string
		// f tampers with p; old is the writer's signature at length 6.
		f func(p *Proof, old []byte)
	}{
		{"signature flipped", func(p *Proof, _ []byte) { p.Signature[10] ^= 1 }},
		{"signature zeroed", func(p *Proof, _ []byte) { p.Signature = make([]byte, 64) }},
		{"node hash flipped", func(p *Proof, _ []byte) { p.Nodes[0].Hash[31] ^= 0x80 }},
		{"block flipped", func(p *Proof, _ []byte) { p.Blocks[0] = []byte("forged") }},
		{"the signature of another length", func(p *Proof, old []byte) { p.Signature = old }},
	}
	for _, kind := range connKinds {
		for _, tc := range tamper {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 6, 0, 0, 0)
				old, err := ff.w.Proof(0, 6, 0)
				if err != nil {
					t.Fatal(err)
				}
				appendN(t, ff.w, 2, "more")
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				// Offer only [0, 4): the proof then needs the node over [4, 8).
				r := h.offer(ff.w.Key(), haveMsg(0, 8, span{0, 4}))
				if r != (wireRequest{0, 0, 4, 0}) {
					t.Fatalf("request %+v", r)
				}
				p, err := ff.w.Proof(r.start, r.end, r.known)
				if err != nil {
					t.Fatal(err)
				}
				if p.Signature == nil || len(p.Nodes) != 1 {
					t.Fatalf("want a signed proof with one node: %+v", p)
				}
				tc.f(p, old.Signature)
				h.drain()
				h.send(encodeData(r.id, p))
				err = h.result()
				if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), keyTag(ff.w.Key())) {
					t.Fatalf("got %v, want ErrBadSignature naming feed %s", err, keyTag(ff.w.Key()))
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// TestHostileBlockPastTheSignedLength: the hostile side claims 11 entries
// of a feed whose writer signed 10, and answers the request for entry 10
// with a forged block. The message is well formed and answers the request,
// so it is not a protocol error: it is the proof that cannot reach the
// block. A block past the length the proof claims, or a longer length
// without a signature, is ErrBadProof; a longer length with the signature
// of the shorter one is ErrBadSignature. An answer at another position than
// asked is ErrProtocol.
func TestHostileBlockPastTheSignedLength(t *testing.T) {
	cases := []struct {
		name string
		want error
		data func(ff *feedFixture, sig []byte) *Proof
	}{
		{"past the proof's length", ErrBadProof, func(_ *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Length: 10, Signature: sig}
		}},
		{"a longer length, unsigned", ErrBadProof, func(ff *feedFixture, _ []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Nodes: rootsAt10(ff), Length: 11}
		}},
		{"a longer length, the shorter one's signature", ErrBadSignature, func(ff *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 10, Blocks: [][]byte{[]byte("forged")}, Nodes: rootsAt10(ff), Length: 11, Signature: sig}
		}},
		{"at another position than asked", ErrProtocol, func(_ *feedFixture, sig []byte) *Proof {
			return &Proof{Start: 11, Blocks: [][]byte{[]byte("forged")}, Length: 12, Signature: sig}
		}},
	}
	for _, kind := range connKinds {
		for _, tc := range cases {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ff := newFeedFixture(t, 10, 0, 10, 0)
				before := imageOf(t, ff.honest)
				h := meetHostile(t, kind, ff.honest, nil)
				r := h.offer(ff.w.Key(), haveMsg(0, 11, span{0, 11}))
				if r != (wireRequest{0, 10, 11, 10}) {
					t.Fatalf("request %+v", r)
				}
				real, err := ff.w.Proof(0, 10, 0)
				if err != nil || real.Length != 10 {
					t.Fatal(real, err)
				}
				h.drain()
				h.send(encodeData(r.id, tc.data(ff, real.Signature)))
				if err := h.result(); !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				unchanged(t, ff.honest, before)
				recovers(t, kind, ff.src, ff.honest)
			})
		}
	}
}

// rootsAt10 returns the roots of w's tree at length 10, [0, 8) and
// [8, 10): with block 10, all the nodes a proof at length 11 needs.
func rootsAt10(ff *feedFixture) []Node {
	p, err := ff.w.Proof(10, 10, 0)
	if err != nil || len(p.Nodes) != 2 || p.Nodes[0].Index != 7 || p.Nodes[1].Index != 17 {
		panic(fmt.Sprint("the roots at 10: ", p, err))
	}
	return p.Nodes
}

// Valid, signed blocks that nobody asked for are refused before any is
// written: the honest side holds [0, 5) at length 5 and is offered no
// more, while the writer has signed 10.
func TestHostileFloodOfUnrequestedData(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 5, 0, 5, 5)
			before := imageOf(t, ff.honest)
			h := meetHostile(t, kind, ff.honest, nil)
			h.until(msgSynced)
			h.drain()
			var msgs [][]byte
			msgs = append(msgs, feedMsg(0, ff.w.Key()), haveMsg(0, 5, span{0, 5}), syncedMessage{}.encode())
			for i := range 200 {
				s := uint64(5 + i%5)
				p, err := ff.w.Proof(s, s+1, 0)
				if err != nil {
					t.Fatal(err)
				}
				msgs = append(msgs, encodeData(0, p))
			}
			h.send(msgs...)
			if err := h.result(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
			unchanged(t, ff.honest, before)
			if ff.x.Len() != 5 || ff.x.Downloaded() != 5 {
				t.Fatalf("the replica has length %d, holds %d", ff.x.Len(), ff.x.Downloaded())
			}
			recovers(t, kind, ff.src, ff.honest)
		})
	}
}

// TestHostileFeedLongerThanFilesAddress: the hostile side offers a feed of
// its own whose key signed a length past 2^56: valid in the protocol (up
// to 2^60), past what this side's files can address. Its answer is
// refused (ErrFull), reported, and the session goes on without that feed
// and ends cleanly; nothing of it is stored.
func TestHostileFeedLongerThanFilesAddress(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			var mu sync.Mutex
			var reported []error
			_, honest := sharedPair(t, &Options{OnError: func(err error) {
				mu.Lock()
				reported = append(reported, err)
				mu.Unlock()
			}})
			pub, sec, err := ed25519.GenerateKey(nil)
			if err != nil {
				t.Fatal(err)
			}
			const length = 1 << 57
			h := meetHostile(t, kind, honest, nil)
			r := h.offer(pub, haveMsg(0, length, span{0, 1}))
			if r != (wireRequest{0, 0, 1, 0}) {
				t.Fatalf("request %+v", r)
			}
			h.drain()
			if err := h.send(encodeData(r.id, longProof(t, sec, length)), doneMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			if err := <-h.drained; err != nil {
				t.Fatalf("the honest side did not end with close_notify: %v", err)
			}
			h.tls.CloseWrite()
			if err := h.result(); err != nil {
				t.Fatalf("the honest side: %v, want nil", err)
			}
			h.raw.Close()
			mu.Lock()
			defer mu.Unlock()
			if len(reported) != 1 || !errors.Is(reported[0], ErrFull) {
				t.Fatalf("reported %v, want one ErrFull", reported)
			}
			if f := honest.Feed(pub); f == nil || f.Len() != 0 || f.Has(0) {
				t.Fatalf("the feed: %v, want an empty replica", f)
			}
		})
	}
}
