package kappa

import (
	"errors"
	"testing"
	"time"
)

// The peer, played by the test, writes x with another history than the
// one the honest side holds, and offers x (3,000 entries) and a feed u.
// The honest side asks for x in three requests and for u in one. The
// first answer for x is a signed proof of the other history: the honest
// side keeps the evidence, and the answers for x still in flight are taken
// in order and dropped (no protocol error, nothing stored); u is stored,
// nothing more of x is asked for, and the session ends cleanly.
func TestForkDropsTheFeedsAnswersInFlightAndTheSessionGoesOn(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			kp := mustKeyPair(t)
			open := func(prefix string, kp *KeyPair) *Feed {
				o := &FeedOptions{}
				if kp != nil {
					o.Key, o.SecretKey = kp.PublicKey, kp.SecretKey
				}
				f, err := OpenFeed(NewMemStorage(), prefix, o)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return f
			}
			xa, xb, u := open("xa/", &kp), open("xb/", &kp), open("u/", nil)
			appendN(t, xa, 3, "a")
			appendN(t, xb, 3000, "b")
			appendN(t, u, 5, "u")

			forks := make(chan error, 4)
			honest := newCore(t, &Options{OnError: func(err error) {
				if errors.Is(err, ErrForked) {
					forks <- err
				}
			}})
			x, err := honest.AddFeed(kp.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			p, err := xa.Proof(0, 3, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := x.Put(p); err != nil {
				t.Fatal(err)
			}

			h := meetHostile(t, kind, honest, nil)
			h.until(msgSynced)
			if err := h.send(feedMsg(0, kp.PublicKey), haveMsg(0, 3000, span{0, 3000}),
				feedMsg(1, u.Key()), haveMsg(1, 5, span{0, 5}), []byte{msgSynced}); err != nil {
				t.Fatal(err)
			}
			var reqs []wireRequest
			for len(reqs) < 4 {
				reqs = append(reqs, parseRequest(t, h.until(msgRequest)))
			}
			forked := false
			for _, r := range reqs {
				src := u
				if r.id == 0 {
					src = xb
				}
				p, err := src.Proof(r.start, r.end, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := h.send(encodeData(r.id, p)); err != nil {
					t.Fatal(err)
				}
				if r.id == 0 && !forked {
					forked = true
					select {
					case <-forks:
					case <-time.After(hostileWait):
						t.Fatalf("no fork reported (the session: %v)", h.result())
					}
				}
			}
			if !forked {
				t.Fatalf("requests %+v: none for x", reqs)
			}
			if err := h.send([]byte{msgDone}); err != nil {
				t.Fatal(err)
			}
			// The honest side asks for nothing more: it says done and ends.
			for {
				msg := h.next()
				if msg[0] == msgRequest {
					t.Fatalf("asked for more after the fork: %+v", parseRequest(t, msg))
				}
				if msg[0] == msgDone {
					break
				}
			}
			h.drain()
			if err := <-h.drained; err != nil {
				t.Fatalf("the honest side did not end with close_notify: %v", err)
			}
			h.tls.CloseWrite()
			if err := h.result(); err != nil {
				t.Fatalf("the honest side: %v, want nil", err)
			}
			if !x.Forked() || x.Len() != 3 || x.Downloaded() != 3 {
				t.Fatalf("x: forked %v, length %d, held %d", x.Forked(), x.Len(), x.Downloaded())
			}
			if err := x.Fork().Verify(); err != nil {
				t.Fatal(err)
			}
			sameFeed(t, u, honest)
			if len(forks) != 0 {
				t.Fatalf("the fork was reported %d more times", len(forks))
			}
		})
	}
}
