package kappa

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
)

// Forks. A writer's key that signed two histories that disagree (the same
// key pair used by two databases, a copied key file, a writer cut back by
// damage that appended again) leaves replicas that hold one history or the
// other. A replica finds out when a peer sends it a proof whose signature
// verifies under the feed's key but whose nodes contradict the tree it
// holds under a signature of its own. It keeps the evidence (two signed
// proofs that determine one tree node differently), marks the feed forked
// and stops exchanging it with peers; it goes on with every other feed.
// doc/FORMAT.md describes the evidence file, doc/PROTOCOL.md what a session
// does.

// fileFork is a feed's fork evidence file, under its prefix in a Storage.
const fileFork = "fork"

// ForkEvidence is proof that a feed's key signed two histories that
// disagree: two proofs, each signed by the key and verifying on its own,
// that determine the same tree node with different hashes, sizes or byte
// offsets. Anyone who holds the feed's public key can check it with Verify.
type ForkEvidence struct {
	Key  ed25519.PublicKey // the feed's public key
	Node uint64            // flat-tree index of the node the proofs disagree on
	// Local is a proof from the tree this replica held under its own
	// verified signature; Peer is (one block of) the proof a peer sent.
	Local, Peer *Proof
}

// Verify checks the evidence: both proofs verify under Key, each with its
// signature, and they determine node Node differently. It returns nil if
// the evidence proves a fork, else an error that matches ErrVerify.
func (e *ForkEvidence) Verify() error {
	if e == nil || e.Local == nil || e.Peer == nil {
		return fmt.Errorf("fork evidence: %w: a proof is missing", ErrBadProof)
	}
	if len(e.Key) != PublicKeySize {
		return fmt.Errorf("fork evidence: %w: key is %d bytes", ErrBadSignature, len(e.Key))
	}
	a, err := forkNode(e.Key, e.Local, e.Node)
	if err != nil {
		return fmt.Errorf("fork evidence: local proof: %w", err)
	}
	b, err := forkNode(e.Key, e.Peer, e.Node)
	if err != nil {
		return fmt.Errorf("fork evidence: peer proof: %w", err)
	}
	if a == b {
		return fmt.Errorf("fork evidence: %w: the proofs agree on node %d", ErrBadProof, e.Node)
	}
	return nil
}

// forkNode verifies a signed proof under key and returns node i of the tree
// it determines, with its byte offset.
func forkNode(key []byte, p *Proof, i uint64) (storedNode, error) {
	if p.Signature == nil {
		return storedNode{}, fmt.Errorf("%w: the proof is not signed", ErrBadSignature)
	}
	t, err := proofTree(p, newLeafHasher(), nil)
	if err != nil {
		return storedNode{}, err
	}
	if !verifyRoots(key, treeHash(t.roots), p.Length, p.Signature) {
		return storedNode{}, fmt.Errorf("%w: length %d", ErrBadSignature, p.Length)
	}
	for _, n := range t.nodes {
		if n.Index == i {
			return n, nil
		}
	}
	return storedNode{}, fmt.Errorf("%w: the proof does not determine node %d", ErrBadProof, i)
}

// ForkError reports a fork of a feed. It matches ErrForked with errors.Is.
// Put returns one for a signed proof that contradicts the tree the feed
// holds (and for any proof once the feed is forked); Core.Damaged lists
// one per forked feed.
type ForkError struct {
	Key ed25519.PublicKey
	// Evidence is the proof of the fork. It is nil when a signed proof
	// contradicted a stored node that no signature this feed kept proves
	// (a fork, or damage of the stored tree): then the feed is not marked
	// forked, but the proof is refused all the same.
	Evidence *ForkEvidence
}

func (e *ForkError) Error() string {
	key := e.Key[:min(4, len(e.Key))]
	if e.Evidence == nil || e.Evidence.Local == nil || e.Evidence.Peer == nil {
		return fmt.Sprintf("%v: feed %x: a signed proof contradicts the stored tree, which no kept signature proves", ErrForked, key)
	}
	ev := e.Evidence
	return fmt.Sprintf("%v: feed %x: its key signed two histories that disagree on tree node %d (signed lengths %d here and %d from a peer)",
		ErrForked, key, ev.Node, ev.Local.Length, ev.Peer.Length)
}

// Is reports whether target is ErrForked; a ForkError without evidence
// (which may as well be damage of the stored tree) matches ErrBadProof and
// ErrVerify too.
func (e *ForkError) Is(target error) bool {
	return target == ErrForked || (e.Evidence == nil && (target == ErrBadProof || target == ErrVerify))
}

// forkState is what a feed knows of a fork: the evidence it holds, or the
// damage of an evidence file it could not trust.
type forkState struct {
	ev      *ForkEvidence
	damaged error // the fork file is damaged: reported, ignored
}

// Forked reports whether the feed is forked: it holds evidence that its
// key signed two histories. A forked feed still serves its entries to
// local reads and views, but is no longer exchanged with peers, and Put
// refuses proofs for it.
func (f *Feed) Forked() bool { return f.Fork() != nil }

// Fork returns the evidence that the feed is forked, or nil.
func (f *Feed) Fork() *ForkEvidence {
	if st := f.fork.Load(); st != nil {
		return st.ev
	}
	return nil
}

// forkedErr returns the error Put returns for a forked feed, or nil.
func (f *Feed) forkedErr() error {
	if ev := f.Fork(); ev != nil {
		return f.opError("put", &ForkError{Key: f.key, Evidence: ev})
	}
	return nil
}

// maxForkFile bounds the size of a fork file read on open: two proofs of
// one block each.
const maxForkFile = 2*maxMessage + headerSize + 16

// loadFork reads the feed's fork file, if it has one, when the feed opens.
// A file that does not decode, or whose evidence does not verify under the
// feed's key, is remembered as damage (reported by reportLoadedFork) and
// otherwise ignored.
func (f *Feed) loadFork() error {
	file, err := f.cfg.store.Open(f.name+fileFork, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer file.Close()
	size, err := file.Size()
	if err != nil {
		return err
	}
	damaged := func(off int64, reason string) error {
		f.fork.Store(&forkState{damaged: &CorruptError{File: f.name + fileFork, Offset: off, Reason: reason + "; the fork evidence is ignored"}})
		return nil
	}
	if size > maxForkFile {
		return damaged(0, fmt.Sprintf("file of %d bytes", size))
	}
	buf := make([]byte, size)
	if _, err := file.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	node, local, peer, err := decodeForkFile(buf)
	if err != nil {
		return damaged(0, err.Error())
	}
	ev := &ForkEvidence{Key: f.key, Node: node, Local: local, Peer: peer}
	if err := ev.Verify(); err != nil {
		return damaged(headerSize, err.Error())
	}
	f.fork.Store(&forkState{ev: ev})
	return nil
}

// reportLoadedFork reports to the feed's Core what loadFork found: a fork,
// or a damaged fork file. A Core calls it once it has published the feed.
func (f *Feed) reportLoadedFork() {
	st := f.fork.Load()
	switch {
	case st == nil:
	case st.ev != nil:
		f.reportDamage(Damage{Err: &ForkError{Key: f.key, Evidence: st.ev}})
	case st.damaged != nil:
		f.reportDamage(Damage{Err: st.damaged})
	}
}

// reportFork reports a fork that a Put found and stored evidence of. Put
// calls it once writeMu is released.
func (f *Feed) reportFork(fe *ForkError) {
	if fe != nil && fe.Evidence != nil {
		f.reportDamage(Damage{Err: fe})
	}
}

// forkFoundWriteLocked builds the evidence of a fork from a signed proof p
// (whose tree is t) that determines node i differently from the stored tree,
// stores it and marks the feed forked. It returns the fork, with nil
// Evidence if no signature the feed kept proves its own node i. Called under
// writeMu.
func (f *Feed) forkFoundWriteLocked(p *Proof, t *provenTree, i uint64) (*ForkError, error) {
	fe := &ForkError{Key: f.key}
	peer := onePeerBlock(f.key, p, t, i)
	if peer == nil {
		return fe, nil // cannot happen: p determines node i
	}
	local := f.localForkProofWriteLocked(i, peer)
	if local == nil {
		return fe, nil
	}
	fe.Evidence = &ForkEvidence{Key: f.key, Node: i, Local: local, Peer: peer}
	f.fork.Store(&forkState{ev: fe.Evidence})
	if err := f.writeForkWriteLocked(fe.Evidence); err != nil {
		return fe, fmt.Errorf("evidence not stored: %w", err)
	}
	return fe, nil
}

// onePeerBlock returns a proof of one block of p, at p's length and with
// its signature, that determines node i as p does; the nodes it needs are
// all in t, the tree p determines.
func onePeerBlock(key []byte, p *Proof, t *provenTree, i uint64) *Proof {
	want, err := forkNode(key, p, i)
	if err != nil {
		return nil
	}
	byIndex := make(map[uint64]Node, len(t.nodes))
	for _, n := range t.nodes {
		byIndex[n.Index] = n.Node
	}
	end := p.Start + uint64(len(p.Blocks))
	for _, b := range forkBlocks(i, p.Length, func(lo, hi uint64) (uint64, uint64, bool) {
		first, stop := max(lo, p.Start), min(hi, end)
		return first, stop - 1, first < stop
	}) {
		q := &Proof{Start: b, Blocks: [][]byte{p.Blocks[b-p.Start]}, Length: p.Length, Signature: p.Signature}
		ok := true
		for _, j := range proofIndexes(nil, b, b+1, p.Length) {
			n, found := byIndex[j]
			if !found {
				ok = false
				break
			}
			q.Nodes = append(q.Nodes, n)
		}
		if !ok {
			continue
		}
		if got, err := forkNode(key, q, i); err == nil && got == want {
			return q
		}
	}
	return nil
}

// forkBlocks returns the blocks whose one-block proofs at length may
// determine node i: the first and last held (as held reports for a range
// of blocks [lo, hi)) under i, under its sibling, and below length (if i
// is a root, any block's proof determines it). The blocks of the last
// proof a replica stored have every node of their paths, so the last held
// block is worth a try where the first lacks one.
func forkBlocks(i, length uint64, held func(lo, hi uint64) (first, last uint64, ok bool)) []uint64 {
	lo, hi := flatBlocks(i)
	if hi > length {
		return nil // node i is not in the tree of length
	}
	ranges := [][2]uint64{{lo, hi}}
	if slo, shi := flatBlocks(flatSibling(i)); shi <= length {
		ranges = append(ranges, [2]uint64{slo, shi})
	}
	ranges = append(ranges, [2]uint64{0, length})
	var out []uint64
	for _, r := range ranges {
		if first, last, ok := held(r[0], r[1]); ok {
			for _, b := range []uint64{first, last} {
				if !slices.Contains(out, b) {
					out = append(out, b)
				}
			}
		}
	}
	return out
}

// localForkProofWriteLocked returns a proof of one block from this feed's
// stored tree at a length whose signature it kept (its newest first, then
// older ones) that determines node i differently from the peer's proof; nil
// if there is none. Called under writeMu.
func (f *Feed) localForkProofWriteLocked(i uint64, peer *Proof) *Proof {
	theirs, err := forkNode(f.key, peer, i)
	if err != nil {
		return nil
	}
	var found *Proof
	f.keptSignaturesWriteLocked(func(length uint64, sig []byte) bool {
		for _, b := range forkBlocks(i, length, func(lo, hi uint64) (uint64, uint64, bool) {
			spans := f.presentSpans(hi)
			k := len(spans) - 1
			if k < 0 || spans[k].end <= lo {
				return 0, 0, false
			}
			return max(f.NextPresent(lo), lo), spans[k].end - 1, true
		}) {
			if !f.HasRange(b, b+1) {
				continue
			}
			p, err := f.proofAt(b, b+1, length)
			if err != nil {
				continue
			}
			p.Signature = bytes.Clone(sig)
			if ours, err := forkNode(f.key, p, i); err == nil && ours != theirs {
				found = p
				return false
			}
		}
		return true
	})
	return found
}

// keptSignaturesWriteLocked calls fn with the feed's newest signed length
// and its signature, then with older ones from the signatures file (newest
// first) and the file of older signatures, at most maxOlderProofs of each,
// until fn returns false. Called under writeMu.
func (f *Feed) keptSignaturesWriteLocked(fn func(length uint64, sig []byte) bool) {
	f.mu.RLock()
	length, signed := f.length, f.signed
	f.mu.RUnlock()
	if length == 0 {
		return
	}
	var sig []byte
	if signed != nil {
		sig = signed.sig
	} else if s, err := f.newestSignatureWriteLocked(length); err == nil {
		sig = s
	}
	if sig != nil && !fn(length, sig) {
		return
	}
	each := func(file File) bool {
		size, err := file.Size()
		if err != nil {
			return true
		}
		n := max(size-headerSize, 0) / sigRecordSize
		for k, tries := n-1, 0; k >= 0 && tries < maxOlderProofs; k-- {
			var rec [sigRecordSize]byte
			if _, err := file.ReadAt(rec[:], headerSize+k*sigRecordSize); err != nil {
				return true
			}
			l, s, _, ok := decodeSigRecord(rec[:])
			if !ok || l >= length {
				continue
			}
			tries++
			if !fn(l, bytes.Clone(s)) {
				return false
			}
		}
		return true
	}
	if !each(f.fsigs()) {
		return
	}
	if f.ws != nil && f.ws.older != nil {
		each(f.ws.older)
	} else if file, err := f.cfg.store.Open(f.name+fileOlderSigs, false); err == nil {
		defer file.Close()
		each(file)
	}
}

// writeForkWriteLocked stores the evidence in the feed's fork file, replacing
// whatever it held, and syncs it (unless sync is off). Called under
// writeMu.
func (f *Feed) writeForkWriteLocked(ev *ForkEvidence) error {
	b := encodeForkFile(ev.Node, ev.Local, ev.Peer)
	file, err := f.cfg.store.Open(f.name+fileFork, true)
	if err != nil {
		return err
	}
	defer file.Close()
	if err := file.Truncate(0); err != nil {
		return err
	}
	if _, err := file.WriteAt(b, 0); err != nil {
		return err
	}
	if !f.cfg.noSync {
		return file.Sync()
	}
	return nil
}
