package kappa

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// TestForkDropsTheFeedsAnswersInFlightAndTheSessionGoesOn: the peer,
// played by the test, writes x with another history than the one the
// honest side holds, and offers x (3,000 entries) and a feed u.
// The honest side asks for x in three requests and for u in one. The
// first answer for x is a signed proof of the other history: the honest
// side keeps the evidence, and the answers for x still in flight are taken
// in order and dropped (no protocol error, nothing stored); u is stored,
// nothing more of x is asked for nor served, and the session ends cleanly.
func TestForkDropsTheFeedsAnswersInFlightAndTheSessionGoesOn(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			kp := mustKeyPair(t)
			xa, xb, u := keyedMemFeed(t, "xa/", &kp), keyedMemFeed(t, "xb/", &kp), keyedMemFeed(t, "u/", nil)
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
				feedMsg(1, u.Key()), haveMsg(1, 5, span{0, 5}), syncedMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			var reqs []wireRequest
			for len(reqs) < 4 {
				reqs = append(reqs, parseRequest(t, h.until(msgRequest)))
			}
			answerUntilFork(t, h, reqs, xb, u, forks)
			notServedAfterFork(t, h)
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

// keyedMemFeed opens a feed in memory, with key pair kp if not nil.
func keyedMemFeed(t testing.TB, prefix string, kp *KeyPair) *Feed {
	t.Helper()
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

// answerUntilFork answers the honest side's requests reqs, for x (its
// feed 0, from xb, another history than its own) and u: the first answer
// for x must make it report a fork on forks.
func answerUntilFork(t testing.TB, h *hostile, reqs []wireRequest, xb, u *Feed, forks <-chan error) {
	t.Helper()
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
			case err := <-h.honest:
				t.Fatalf("the session ended before a fork was reported: %v", err)
			case <-time.After(hostileWait):
				t.Fatal("no fork reported")
			}
		}
	}
	if !forked {
		t.Fatalf("requests %+v: none for x", reqs)
	}
}

// notServedAfterFork asks the honest side for its feed 0, forked, and
// expects not available and no request more; then both sides say done.
func notServedAfterFork(t testing.TB, h *hostile) {
	t.Helper()
	// The honest side no longer serves x (its feed 0) either.
	if err := h.send(requestMsg(0, 0, 3, 0)); err != nil {
		t.Fatal(err)
	}
	done := false
	for answered := false; !answered || !done; {
		switch msg := h.next(); msg[0] {
		case msgRequest:
			t.Fatalf("asked for more after the fork: %+v", parseRequest(t, msg))
		case msgData:
			t.Fatal("the honest side served its forked feed")
		case msgNotAvailable:
			if !bytes.Equal(msg, notAvailableMsg(0, 0, 3)) {
				t.Fatalf("not available %v, want for [0, 3) of feed 0", msg)
			}
			answered = true
			if err := h.send(doneMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
		case msgDone:
			done = true
		}
	}
}

// TestUnprovenForkDropsTheFeedForTheSession: the honest side holds entry 0
// of x from a proof at length 3 whose signature it no longer keeps (its
// file of older signatures is gone), and entries [4, 8) at length 8. The
// peer, with another history of x, answers its first request for x with a
// signed proof that contradicts entry 0's leaf: no signature the honest
// side kept proves its own leaf, so it cannot keep evidence. It refuses the
// answer, reports the error, marks nothing, and drops the answers for x
// still in flight (which would have given evidence); the session ends
// cleanly.
func TestUnprovenForkDropsTheFeedForTheSession(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			kp := mustKeyPair(t)
			open := func(prefix string) *Feed {
				f, err := OpenFeed(NewMemStorage(), prefix, &FeedOptions{Key: kp.PublicKey, SecretKey: kp.SecretKey})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return f
			}
			xa, xb := open("xa/"), open("xb/")
			appendN(t, xa, 3, "a")
			p3, err := xa.Proof(0, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, xa, 5, "a")
			appendN(t, xb, 2056, "b")

			reported := make(chan error, 4)
			store := NewMemStorage()
			honest, err := New(store, &Options{OnError: func(err error) { reported <- err }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { honest.Close() })
			x, err := honest.AddFeed(kp.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			p48, err := xa.Proof(4, 8, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []*Proof{p48, p3} {
				if err := x.Put(p); err != nil {
					t.Fatal(err)
				}
			}
			if err := store.Remove(feedPrefix(feedSlot(x)) + fileOlderSigs); err != nil {
				t.Fatal(err)
			}

			h := meetHostile(t, kind, honest, nil)
			h.until(msgSynced)
			if err := h.send(feedMsg(0, kp.PublicKey), haveMsg(0, 2056, span{0, 2056}), syncedMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			var reqs []wireRequest
			for len(reqs) < 3 {
				reqs = append(reqs, parseRequest(t, h.until(msgRequest)))
			}
			if reqs[0] != (wireRequest{0, 1, 4, 8}) {
				t.Fatalf("requests %+v", reqs)
			}
			for k, r := range reqs {
				p, err := xb.Proof(r.start, r.end, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := h.send(encodeData(r.id, p)); err != nil {
					t.Fatal(err)
				}
				if k > 0 {
					continue
				}
				select {
				case err := <-reported:
					if !errors.Is(err, ErrForked) || !errors.Is(err, ErrBadProof) {
						t.Fatalf("reported %v, want a fork without evidence", err)
					}
				case err := <-h.honest:
					t.Fatalf("the session ended before the fork was reported: %v", err)
				case <-time.After(hostileWait):
					t.Fatal("no fork reported")
				}
			}
			h.endCleanlyAfterSynced()
			if x.Forked() || x.Len() != 8 || x.Downloaded() != 5 {
				t.Fatalf("x: forked %v, length %d, held %d", x.Forked(), x.Len(), x.Downloaded())
			}
			if len(reported) != 0 {
				t.Fatalf("%d more errors reported: %v", len(reported), <-reported)
			}
		})
	}
}

// endCleanlyAfterSynced is endCleanly for a hostile side that sent synced
// already: done, then read until the honest side's done and close_notify.
func (h *hostile) endCleanlyAfterSynced() {
	h.t.Helper()
	if err := h.send(doneMessage{}.encode()); err != nil {
		h.t.Fatal(err)
	}
	for {
		msg := h.next()
		if msg[0] == msgRequest {
			h.t.Fatalf("asked for more: %+v", parseRequest(h.t, msg))
		}
		if msg[0] == msgDone {
			break
		}
	}
	h.drain()
	if err := <-h.drained; err != nil {
		h.t.Fatalf("the honest side did not end with close_notify: %v", err)
	}
	h.tls.CloseWrite()
	if err := h.result(); err != nil {
		h.t.Fatalf("the honest side: %v, want nil", err)
	}
}
