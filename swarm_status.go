package kappa

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The swarm's status: Peers and Synced.

// PeerState is where the swarm is with a peer.
type PeerState int

const (
	PeerConnecting  PeerState = iota // dialling its address
	PeerHandshaking                  // TLS and the shared-key proof
	PeerSyncing                      // in session; one side lacks what the other announced
	PeerSynced                       // in session; each side holds what the other announced
	PeerBackingOff                   // the last try failed or ended: waiting to dial again (an inbound peer this node does not dial: its session ended)
	PeerFailed                       // it refused this node, or broke the protocol: not dialled for a while
)

func (s PeerState) String() string {
	switch s {
	case PeerConnecting:
		return "connecting"
	case PeerHandshaking:
		return "handshaking"
	case PeerSyncing:
		return "syncing"
	case PeerSynced:
		return "synced"
	case PeerBackingOff:
		return "backing off"
	case PeerFailed:
		return "failed"
	}
	return fmt.Sprintf("PeerState(%d)", int(s))
}

// PeerStatus is the swarm's view of one peer, as Peers returns it.
type PeerStatus struct {
	Addr    string    // the address dialled, or an accepted peer's remote address
	Node    string    // the peer's node id in hex, "" until a session told it
	Source  string    // "static" (Peers, AddPeer), "lan" (found by a beacon) or "inbound" (it dialled)
	Inbound bool      // the session, if one runs, was accepted: the peer dialled
	State   PeerState //
	Since   time.Time // when State began

	// Of the current session, or of the last one if none runs: blocks
	// received and sent, and bytes read and written.
	EntriesIn, EntriesOut uint64
	BytesIn, BytesOut     uint64
	// FeedsNotAdded counts the new feeds the peer offered in that session
	// that this side did not add, past ReplicateOptions.MaxNewFeeds.
	FeedsNotAdded int

	// Lag, while a session runs: entries the peer announced that this
	// node lacks (Behind) and entries this node holds that the peer has
	// not announced (Ahead).
	Behind, Ahead uint64

	Err   error     // why the last session or dial ended; nil if none did
	Retry time.Time // when backing off or failed: the next dial
}

// String is one line: address, state, counts and the last error.
func (p PeerStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s (%s", p.Addr, p.State, p.Source)
	if p.Node != "" {
		fmt.Fprintf(&b, ", node %.8s", p.Node)
	}
	b.WriteString(")")
	switch p.State {
	case PeerSyncing, PeerSynced:
		fmt.Fprintf(&b, " behind %d ahead %d,", p.Behind, p.Ahead)
	case PeerBackingOff, PeerFailed:
		if !p.Retry.IsZero() {
			fmt.Fprintf(&b, " retry in %v,", time.Until(p.Retry).Round(time.Millisecond))
		}
	}
	fmt.Fprintf(&b, " in %d entries %d B, out %d entries %d B", p.EntriesIn, p.BytesIn, p.EntriesOut, p.BytesOut)
	if p.Err != nil {
		fmt.Fprintf(&b, "; last error: %v", p.Err)
	}
	return b.String()
}

// Peers returns the swarm's peers: every address it dials (static and
// found on the LAN) and every peer that dialled it and is connected, in
// address order. A peer reached both ways is listed once.
func (sw *Swarm) Peers() []PeerStatus {
	sw.mu.Lock()
	var out []PeerStatus
	shown := map[*swarmSession]bool{}
	type pending struct {
		i  int
		ss *swarmSession
	}
	var live []pending
	for _, t := range sw.targets {
		p := PeerStatus{Addr: t.addr, Source: "lan", State: t.state, Since: t.since, Err: t.lastErr}
		if t.static {
			p.Source = "static"
		}
		if t.state == PeerBackingOff || t.state == PeerFailed {
			p.Retry = t.retry
		}
		ss := t.last
		if r := sw.byNode[t.node]; !t.node.isZero() && r != nil {
			ss = r
		}
		if !t.node.isZero() {
			p.Node = t.node.String()
		}
		if ss != nil {
			shown[ss] = true
			live = append(live, pending{len(out), ss})
		}
		out = append(out, p)
	}
	for ss := range sw.sessions {
		if ss.inbound && !shown[ss] {
			live = append(live, pending{len(out), ss})
			out = append(out, PeerStatus{Addr: ss.addr, Source: "inbound"})
		}
	}
	sw.mu.Unlock()
	for _, l := range live {
		l.ss.status(sw.ctx, &out[l.i])
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Addr, b.Addr) })
	return out
}

// status fills p with what ss's session says: its counts, and its state
// and lag while it runs.
// takeCounts sets p's counts of a session from its progress pr.
func (p *PeerStatus) takeCounts(pr ReplicateProgress) {
	p.EntriesIn, p.EntriesOut = pr.BlocksReceived, pr.BlocksSent
	p.BytesIn, p.BytesOut = pr.BytesReceived, pr.BytesSent
	p.FeedsNotAdded = pr.FeedsNotAdded
}

func (ss *swarmSession) status(ctx context.Context, p *PeerStatus) {
	ss.mu.Lock()
	pr, running, state, since, node := ss.progress, !ss.running.IsZero(), ss.state, ss.since, ss.node
	endedAt := ss.ended
	ss.mu.Unlock()
	p.takeCounts(pr)
	if !node.isZero() {
		p.Node = node.String()
	}
	if !endedAt.IsZero() {
		return // the target's own state says what happened since
	}
	p.Inbound = ss.inbound
	if !running {
		if p.Source == "inbound" || p.State == PeerConnecting {
			p.State, p.Since = state, since
		}
		return
	}
	p.State, p.Since, p.Err, p.Retry = PeerSyncing, since, nil, time.Time{}
	var l syncLag
	var in, out uint64
	if !ss.s.onLoop(ctx, func() {
		l = ss.s.lag()
		in, out = ss.s.progress.BlocksReceived, ss.s.progress.BlocksSent
	}) {
		return // its loop has not started yet, or just ended
	}
	// (The counts as of now: the session reports progress only now and
	// then.)
	p.EntriesIn, p.EntriesOut = in, out
	p.BytesIn, p.BytesOut = ss.s.bytesIn.Load(), ss.s.bytesOut.Load()
	p.Behind, p.Ahead = l.behind, l.ahead
	if l.known && l.behind == 0 && l.ahead == 0 {
		p.State = PeerSynced
	}
}

// Synced waits until every peer in session when it was called holds what
// this node held then, and this node holds what each of them had
// announced (once the peer's first announcement is complete), the way
// Ready waits for what was known when it was called. A peer whose session
// ends meanwhile no longer counts. It returns nil at once when no session
// runs, ctx's error if ctx ends first, and ErrClosed if the swarm closes.
//
// Feeds a side declines (ReplicateOptions.Accept, MaxNewFeeds) are never
// held by it: a peer that declines one of this node's feeds is never
// synced.
func (sw *Swarm) Synced(ctx context.Context) error {
	ours := sw.core.heldSpans()
	goals := map[*swarmSession]*syncGoal{}
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return fmt.Errorf("swarm: %w", ErrClosed)
	}
	for ss := range sw.sessions {
		// Only sessions that run: a handshake in flight (a silent
		// connection included) is no peer in session yet.
		ss.mu.Lock()
		running := !ss.running.IsZero()
		ss.mu.Unlock()
		if running {
			goals[ss] = &syncGoal{ours: ours}
		}
	}
	sw.mu.Unlock()
	for {
		changed := sw.changes()
		for ss, g := range goals {
			ss.mu.Lock()
			running, ended := !ss.running.IsZero(), !ss.ended.IsZero()
			ss.mu.Unlock()
			if ended {
				delete(goals, ss)
				continue
			}
			if !running {
				continue
			}
			ok := false
			if ss.s.onLoop(ctx, func() { ok = ss.s.reached(g) }) && ok {
				delete(goals, ss)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// (A session whose loop has not started, or just ended, is
			// looked at again at the next change: its end is one.)
		}
		if len(goals) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-sw.ctx.Done():
			return fmt.Errorf("swarm: %w", ErrClosed)
		}
	}
}

// heldSpans returns, by feed key, the ranges of entries each feed that is
// exchanged (not forked) holds.
func (c *Core) heldSpans() map[string][]span {
	out := map[string][]span{}
	for _, f := range c.Feeds() {
		if !f.Forked() {
			out[string(f.Key())] = f.presentSpans(f.Len())
		}
	}
	return out
}

// syncLag is a session's view of what each side lacks.
type syncLag struct {
	known  bool   // the peer's first announcement is complete (its synced message arrived)
	behind uint64 // entries the peer announced that this side lacks, of the feeds it takes
	ahead  uint64 // entries this side holds that the peer did not announce
}

// syncGoal is what Synced waits for of one session.
type syncGoal struct {
	ours   map[string][]span // what the peer must hold: this side's, at the call
	theirs map[string][]span // what this side must hold: the peer's, once known
	taken  bool              // theirs was taken
}

// taken returns the peer's feeds this side takes (added, or being added),
// by key, with the ranges the peer announced; on the loop.
func (s *session) takenPeerFeeds() map[string]*peerFeed {
	out := map[string]*peerFeed{}
	for _, pf := range s.peers {
		if pf.local != nil && !pf.isolated() {
			out[string(pf.key)] = pf
		}
	}
	for _, p := range s.pendingNew {
		out[string(p.pf.key)] = p.pf
	}
	for _, p := range s.adding {
		out[string(p.pf.key)] = p.pf
	}
	return out
}

// peerHas returns, by key, what the peer announced of each of its feeds;
// on the loop.
func (s *session) peerHas() map[string][]span {
	out := make(map[string][]span, len(s.peers))
	for _, pf := range s.peers {
		out[string(pf.key)] = pf.have
	}
	return out
}

// lag computes the session's syncLag; on the loop.
func (s *session) lag() syncLag {
	l := syncLag{known: s.peerSynced}
	for key, pf := range s.takenPeerFeeds() {
		l.behind += missing(s.core.Feed([]byte(key)), pf.have)
	}
	has := s.peerHas()
	for key, spans := range s.core.heldSpans() {
		l.ahead += uncovered(spans, has[key])
	}
	return l
}

// reached reports whether the session reached g; on the loop.
func (s *session) reached(g *syncGoal) bool {
	if !s.peerSynced {
		return false
	}
	if !g.taken {
		g.theirs = map[string][]span{}
		for key, pf := range s.takenPeerFeeds() {
			g.theirs[key] = slices.Clone(pf.have)
		}
		g.taken = true
	}
	has := s.peerHas()
	for key, spans := range g.ours {
		if uncovered(spans, has[key]) > 0 {
			return false
		}
	}
	for key, spans := range g.theirs {
		if missing(s.core.Feed([]byte(key)), spans) > 0 {
			return false
		}
	}
	return true
}

// missing counts the entries of spans that f (nil: a feed not held) lacks.
func missing(f *Feed, spans []span) uint64 {
	var n uint64
	for _, sp := range spans {
		if f == nil {
			n += sp.end - sp.start
			continue
		}
		n += uncovered([]span{sp}, f.presentSpans(sp.end))
	}
	return n
}

// uncovered counts the entries of spans that cover does not hold.
func uncovered(spans, cover []span) uint64 {
	rest := slices.Clone(spans)
	for _, c := range cover {
		if len(rest) == 0 {
			break
		}
		rest = subtractSpan(rest, c)
	}
	var n uint64
	for _, sp := range rest {
		n += sp.end - sp.start
	}
	return n
}
