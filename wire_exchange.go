package kappa

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// The session's loop: what it takes from the peer, and what it announces.

// loop is the session's state machine. It returns nil when a non-live
// session is complete.
func (s *session) loop(ctx context.Context, in <-chan frame) error {
	if err := s.exchange(ctx, in); err != errCleanEnd {
		return err
	}
	return nil
}

// exchange runs the session until it ends.
func (s *session) exchange(ctx context.Context, in <-chan frame) error {
	s.mineID = map[*Feed]uint64{}
	s.sentHave = map[*Feed]haveState{}
	s.setPhase("exchange")
	s.inLoop.Store(true)
	defer s.endLoop() // (before the goodbye, which takes no calls)
	changed := s.core.FeedsChanged()
	s.announce()
	s.send(syncedMessage{}.encode())

	var local chan struct{}
	var cancels []func()
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	if s.opts.Live {
		local = make(chan struct{}, 1)
		for _, f := range s.mine {
			cancels = append(cancels, s.watch(f, local))
		}
	}
	tick := time.NewTicker(s.opts.KeepAlive / 2)
	defer tick.Stop()
	lastSent := s.bytesOut.Load()
	for {
		if err := s.fetch(); err != nil {
			return err
		}
		if !s.opts.Live && s.sentDone && s.peerDone {
			return nil
		}
		var feedsChanged <-chan struct{}
		if s.opts.Live {
			feedsChanged = changed
		}
		if testHookIdle != nil && len(in) == 0 && len(s.adding) == 0 && len(s.storing) == 0 && len(s.pendingNew) == 0 {
			testHookIdle(s)
		}
		select {
		case f, ok := <-in:
			if err := s.takeArrived(ctx, f, ok, in); err != nil {
				return err
			}
		case res := <-s.stored:
			if err := s.storedAnswer(res); err != nil {
				return err
			}
		case res := <-s.added:
			if err := s.addedFeeds(res); err != nil {
				return err
			}
		case <-feedsChanged:
			changed = s.core.FeedsChanged()
			n := len(s.mine)
			s.announce()
			for _, f := range s.mine[n:] {
				cancels = append(cancels, s.watch(f, local))
				s.trimWantsOf(f) // it may have been asked for before
			}
		case <-local:
			for _, f := range s.takeChanged() {
				s.sendHave(f)
				s.trimWantsOf(f)
			}
		case <-s.outRoom:
			if err := s.serveDeferred(); err != nil {
				return err
			}
		case <-tick.C:
			if err := s.keepAlive(&lastSent); err != nil {
				return err
			}
		case f := <-s.calls:
			f()
		case <-ctx.Done():
			return ctx.Err()
		case <-s.core.done:
			return fmt.Errorf("the database was closed: %w", ErrClosed)
		}
		if s.hooks != nil && s.hooks.changed != nil {
			s.hooks.changed()
		}
	}
}

// endLoop says the loop takes no more calls.
func (s *session) endLoop() {
	s.loopOnce.Do(func() { close(s.loopDone) })
}

// onLoop runs f on the session's loop, where the session's state may be
// read, and returns true once it ran; false if the loop has not started
// yet, or the session ended first, or ctx did.
func (s *session) onLoop(ctx context.Context, f func()) bool {
	if !s.inLoop.Load() {
		return false
	}
	ran := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(ran) }:
	case <-s.loopDone:
		return false
	case <-ctx.Done():
		return false
	}
	<-ran
	return true
}

// takeArrived takes the frame f (ok as for take), then whatever else
// arrived, before the loop acts on them.
func (s *session) takeArrived(ctx context.Context, f frame, ok bool, in <-chan frame) error {
	if err := s.take(ctx, f, ok); err != nil {
		return err
	}
	for more := true; more; {
		select {
		case f, ok := <-in:
			if err := s.take(ctx, f, ok); err != nil {
				return err
			}
		default:
			more = false
		}
	}
	return s.addPending()
}

// keepAlive runs every KeepAlive/2: it ends the session with ErrTimeout
// if a write moved nothing, or nothing arrived, for the timeout, and
// pings if nothing was written since the last look (lastSent: the bytes
// sent then).
func (s *session) keepAlive(lastSent *uint64) error {
	now := time.Now().UnixNano()
	if w := s.writing.Load(); w != 0 && time.Duration(now-w) > s.opts.Timeout {
		return fmt.Errorf("%w: a write has been blocked for %v", ErrTimeout, s.opts.Timeout)
	}
	if time.Duration(now-s.lastRead.Load()) > s.opts.Timeout {
		return fmt.Errorf("%w: nothing received for %v", ErrTimeout, s.opts.Timeout)
	}
	if out := s.bytesOut.Load(); out == *lastSent {
		s.send(pingMessage{}.encode())
	} else {
		*lastSent = out
	}
	return nil
}

// take handles one frame from the reader; ok false means the reader ended.
// It returns errCleanEnd when the stream ended in a way that ends the
// session properly (see peerEnded).
func (s *session) take(ctx context.Context, f frame, ok bool) error {
	s.took(f)
	switch {
	case (!ok || f.err != nil) && !s.opts.Live && s.sentDone && s.peerDone:
		// Complete: everything was exchanged and checked, however the
		// connection then ends (a reset, a TLS alert) (§4).
		return errCleanEnd
	case !ok:
		return ErrPeerClosed
	case f.err != nil:
		if err := s.readErr(ctx, f.err); err != nil {
			return err
		}
		return errCleanEnd
	}
	s.handled++
	return s.handle(f.msg)
}

// testHookIdle, if set by a test, runs on the session's loop when it is
// about to wait with nothing of its own to do: every message it took is
// handled, no feed is being added and no answer stored.
var testHookIdle func(*session)

var errCleanEnd = errors.New("the session ended properly")

// readErr is what the reader's error means for the session: nil for a
// goodbye that ends it properly (see peerEnded).
func (s *session) readErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		return s.peerEnded()
	}
	return streamErr(err)
}

// announce sends the local feeds not announced yet, with what they hold.
func (s *session) announce() {
	for _, f := range s.core.Feeds() {
		if _, ok := s.mineID[f]; ok || f.Forked() {
			continue // a forked feed is no longer exchanged
		}
		id := uint64(len(s.mine))
		s.mine = append(s.mine, f)
		s.mineID[f] = id
		s.send(feedMessage{id, f.Key()}.encode())
		s.sendHave(f)
		if testHookAnnounced != nil {
			testHookAnnounced(f)
		}
	}
}

// testHookAnnounced, if set by a test, runs after a feed's first have was
// sent, before a live session watches the feed.
var testHookAnnounced func(*Feed)

// watch has f's changes (in a live session) recorded and signalled on
// local, so that the loop sends haves for the feeds that changed only.
// It counts f as changed once right away: it may have changed between the
// have announce sent and the subscription.
func (s *session) watch(f *Feed, local chan struct{}) (cancel func()) {
	changed := func() {
		s.changedMu.Lock()
		if !s.changedSet[f] {
			if s.changedSet == nil {
				s.changedSet = map[*Feed]bool{}
			}
			s.changedSet[f] = true
			s.changed = append(s.changed, f)
		}
		s.changedMu.Unlock()
		select {
		case local <- struct{}{}:
		default:
		}
	}
	cancel = f.subscribeFunc(changed)
	changed()
	return cancel
}

// takeChanged returns the feeds that changed since the last call.
func (s *session) takeChanged() []*Feed {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	out := s.changed
	s.changed = nil
	clear(s.changedSet)
	return out
}

// sendHave sends the ranges f holds, unless they are what was sent last.
func (s *session) sendHave(f *Feed) {
	if f.Forked() {
		return
	}
	st := haveState{f.Len(), f.Downloaded()}
	if old, ok := s.sentHave[f]; ok && old == st {
		return
	}
	s.sentHave[f] = st
	// Ranges stop at the length sent, even if the feed grew meanwhile:
	// the peer rejects a range past it.
	ranges := f.presentSpans(st.length)
	if len(ranges) > maxHaveRanges {
		// A sparse replica may hold more ranges than one message can
		// carry: it offers those of its lowest entries.
		ranges = ranges[:maxHaveRanges]
	}
	s.send(haveMessage{s.mineID[f], st.length, ranges}.encode())
}

// maxHaveKept is the most ranges of one have message that a session keeps
// (the lowest), and maxHeldRanges the most of all the peer's haves: a
// range takes 16 bytes held, and a little more in the wants worked out
// from it, where it takes 2 bytes or more of a message.
const (
	maxHaveKept   = 1 << 18
	maxHeldRanges = 1 << 20
)

// maxHaveRanges is the most ranges a have message carries: each takes at
// most 18 bytes (two uvarints below 2⁶⁰), so a have of this many fits in a
// message of maxMessage bytes with room to spare. A variable, so that a
// test can see the cap at work without a replica of millions of ranges.
var maxHaveRanges = 1 << 18

// handle acts on one message from the peer.
func (s *session) handle(msg []byte) error {
	m, err := decodeMessage(msg)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case feedMessage:
		return s.takeFeed(m)
	case haveMessage:
		return s.takeHave(m)
	case syncedMessage:
		if s.peerSynced {
			return protoErr("synced twice")
		}
		s.peerSynced = true
	case requestMessage:
		return s.serve(m)
	case dataMessage:
		return s.receive(m)
	case notAvailableMessage:
		return s.takeNotAvailable(m)
	case doneMessage:
		if s.peerDone {
			return protoErr("done twice")
		}
		s.peerDone = true
		s.liveAfterDone()
	}
	return nil
}

// takeFeed takes a feed the peer announced: it is added, unless declined.
func (s *session) takeFeed(m feedMessage) error {
	if m.id != uint64(len(s.peers)) {
		return protoErr("feed announced as %d, expected %d", m.id, len(s.peers))
	}
	pf := &peerFeed{id: m.id, key: m.key}
	s.peers = append(s.peers, pf)
	if s.peerSynced && !s.opts.Live {
		return nil // not in the snapshot taken when the sides met
	}
	if s.opts.Accept != nil && !s.opts.Accept(pf.key) {
		return nil
	}
	if f := s.core.Feed(pf.key); f != nil && f.Forked() {
		return nil // declined: a forked feed is no longer exchanged
	}
	if !s.mayAdd(pf.key) {
		return nil
	}
	s.pendingNew = append(s.pendingNew, pendingFeed{pf})
	return nil
}

// takeHave takes what the peer holds of one of its feeds.
func (s *session) takeHave(m haveMessage) error {
	pf, err := s.peerFeed(m.id)
	if err != nil {
		return err
	}
	if m.length > maxTreeLength {
		return protoErr("feed %d claims length %d", m.id, m.length)
	}
	if s.peerSynced && !s.opts.Live {
		return nil // wants come from the snapshot taken when the sides met
	}
	pf.length = max(pf.length, m.length)
	// What the session keeps of all the peer's haves is bounded: past
	// maxHeldRanges, a have is cut to its lowest ranges that fit, and the
	// rest is not wanted in this session.
	s.heldRanges -= len(pf.have)
	ranges := m.ranges
	if n := max(0, maxHeldRanges-s.heldRanges); len(ranges) > n {
		ranges = slices.Clone(ranges[:n]) // not the whole array decoded
	}
	s.heldRanges += len(ranges)
	pf.have = ranges
	pf.refused = nil
	s.trimWants(pf)
	return nil
}

// takeNotAvailable takes the peer's refusal of the oldest request.
func (s *session) takeNotAvailable(m notAvailableMessage) error {
	start, end := m.start, m.end
	r, err := s.answer(m.id, start)
	if err != nil {
		return err
	}
	if end <= start || end > r.end {
		return protoErr("not-available for [%d, %d) answers a request for [%d, %d)", start, end, r.start, r.end)
	}
	// Refused: not wanted from this peer until it says it has more.
	// A prefix (the peer's damaged entry) leaves the rest wanted.
	r.pf.refused = append(r.pf.refused, span{start, end})
	if end < r.end || len(r.pf.unlinked) > 0 {
		s.trimWants(r.pf) // (a link may be asked now: see linkWants)
	}
	return nil
}

func (s *session) peerFeed(id uint64) (*peerFeed, error) {
	if id >= uint64(len(s.peers)) {
		return nil, protoErr("feed %d was never announced", id)
	}
	return s.peers[id], nil
}

// mayAdd reports whether the session may take the peer's feed with key:
// always if the database holds it, otherwise while it took fewer new feeds
// than ReplicateOptions.MaxNewFeeds. Past that the feed is declined and
// counted in ReplicateProgress.FeedsNotAdded.
func (s *session) mayAdd(key []byte) bool {
	if s.core.Feed(key) != nil {
		return true
	}
	bound := s.opts.MaxNewFeeds
	if bound == 0 {
		bound = DefaultMaxNewFeeds
	}
	if bound > 0 && s.newFeeds >= bound {
		s.progress.FeedsNotAdded++
		if s.progress.FeedsNotAdded == 1 {
			s.report()
		}
		return false
	}
	s.newFeeds++
	return true
}
