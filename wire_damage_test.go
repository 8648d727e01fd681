package kappa

import (
	"errors"
	"fmt"
	"testing"
)

// A not-available answer may cover a prefix of the request (a peer's
// damaged entry): that prefix is refused and the rest asked for again. One
// that covers nothing, or more than the request, is ErrProtocol.
func TestShortNotAvailableLeavesTheRestWanted(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			ff := newFeedFixture(t, 16, 0, 8, 0)
			h := meetHostile(t, kind, ff.honest, nil)
			r := h.offer(ff.w.Key(), haveMsg(0, 16, span{0, 16}))
			if r.start != 8 || r.end != 16 {
				t.Fatalf("the honest side asked for [%d, %d), want [8, 16)", r.start, r.end)
			}
			if err := h.send(notAvailableMsg(0, 8, 9)); err != nil {
				t.Fatal(err)
			}
			if again := parseRequest(t, h.until(msgRequest)); again.start != 9 || again.end != 16 {
				t.Fatalf("after not available for [8, 9) the honest side asked for [%d, %d), want [9, 16)", again.start, again.end)
			}
			h.raw.Close()
			h.result()
		})
	}
	for _, end := range []uint64{8, 17} {
		t.Run(fmt.Sprint("end ", end), func(t *testing.T) {
			ff := newFeedFixture(t, 16, 0, 8, 0)
			h := meetHostile(t, "pipe", ff.honest, nil)
			h.offer(ff.w.Key(), haveMsg(0, 16, span{0, 16}))
			h.drain()
			h.send(notAvailableMsg(0, 8, end))
			if err := h.result(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("not available for [8, %d): %v, want ErrProtocol", end, err)
			}
		})
	}
}
