package kappa

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
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

// A server whose proof of a request needs a damaged tree node answers not
// available, reports the damage, and goes on serving what it can prove.
func TestServingWithADamagedTreeNodeAnswersNotAvailable(t *testing.T) {
	db := newDamageDB(t, numbered(8, 3), 0)
	// Node 5 is the parent of entries 2 and 3: a proof of entry 0 needs it,
	// one of entries 4 and 5 does not.
	s := db.flipped(t, "feeds/0/"+fileTree, headerSize+5*nodeSize+2, 0)
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			var ev events
			honest := openDamaged(t, damageCopy(s), ev.options(db.key))
			h := meetHostile(t, kind, honest, nil)
			h.until(msgSynced)
			if err := h.send(syncedMessage{}.encode(), requestMsg(0, 0, 1, 0)); err != nil {
				t.Fatal(err)
			}
			msg := h.until(msgNotAvailable)
			if na := parseMessage[notAvailableMessage](t, msg); na != (notAvailableMessage{0, 0, 1}) {
				t.Fatalf("not available for feed %d [%d, %d), want feed 0 [0, 1)", na.id, na.start, na.end)
			}
			var ce *CorruptError
			if ds := ev.damaged(); len(ds) != 1 || ds[0].Entry || !errors.As(ds[0].Err, &ce) ||
				ce.File != "feeds/0/"+fileTree || ce.Offset != headerSize+5*nodeSize {
				t.Fatalf("the server reported %v, want node 5's damage", ds)
			}
			if err := h.send(requestMsg(0, 4, 6, 0)); err != nil {
				t.Fatal(err)
			}
			msg = h.until(msgData)
			if p := parseMessage[dataMessage](t, msg).p; p.Start != 4 || len(p.Blocks) != 2 {
				t.Fatalf("the answer for [4, 6): %v", p)
			}
			h.raw.Close()
			h.result()
		})
	}
}

// TestLiveSessionHealsAnEntryFoundDamagedDuringIt: in a live session, an
// entry a read finds damaged is fetched again from the peer and heals,
// without a new session.
func TestLiveSessionHealsAnEntryFoundDamagedDuringIt(t *testing.T) {
	db := newDamageDB(t, numbered(40, 5), 0)
	healthy := openDamaged(t, damageCopy(db.s), &Options{SharedKey: db.key})
	s := NewMemStorage()
	repairs := make(chan Repair, 10)
	c := openDamaged(t, s, &Options{SharedKey: db.key, OnRepair: func(r Repair) { repairs <- r }})
	mustReplicate(t, "pipe", c, healthy)

	ctx, cancel := context.WithCancel(ctxT(t))
	a, b := connPair(t, "pipe")
	done := make(chan error, 2)
	go func() { done <- c.Replicate(ctx, a, true, &ReplicateOptions{Live: true}) }()
	go func() { done <- healthy.Replicate(ctx, b, false, &ReplicateOptions{Live: true}) }()
	defer func() {
		cancel()
		<-done
		<-done
	}()

	// Once an entry appended to the healthy writer arrives, the session is
	// past its first exchange: what it fetches now, it fetches because
	// of what happens in the session.
	r := c.Feed(db.feed)
	changed := make(chan struct{}, 1)
	defer r.Subscribe(changed)()
	mustAppend(t, mustWriter(t, healthy, "w"), "one more")
	for !r.Has(40) {
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("the appended entry did not arrive")
		}
	}
	const seq = 17
	rdb := &damageDB{s: s, values: db.values}
	b2, _ := s.fileBytes(wData)
	b2[rdb.recordPos(seq)+dataLenLen] ^= 4
	s.setFileBytes(wData, b2)
	if _, err := r.Get(ctx, seq); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("get %d: %v, want ErrCorrupt", seq, err)
	}
	for {
		select {
		case rep := <-repairs:
			if !strings.Contains(rep.Reason, fmt.Sprintf("entry %d: damaged record rewritten", seq)) {
				continue
			}
		case <-ctx.Done():
			t.Fatalf("entry %d did not heal: %v", seq, c.Damaged())
		}
		break
	}
	if got, err := r.Get(ctx, seq); err != nil || !bytes.Equal(got, db.values[seq]) {
		t.Fatalf("get %d after healing: %q, %v", seq, got, err)
	}
}
