package kappa

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// The messages of the protocol (doc/PROTOCOL.md §3), one Go type each, with
// one encoder and one decoder. The session builds and parses messages only
// here. A decoder checks the form of a message (limits before allocation,
// exact length, ranges in order); what a message means for the session
// (known ids, requests in flight) the session checks.

// Message types.
const (
	msgHello        = 0 // "KAPPA" ‖ major u8 ‖ minor u8 ‖ HMAC (32) ‖ a later minor version's fields
	msgFeed         = 1 // id ‖ public key (32)
	msgHave         = 2 // id ‖ length ‖ ranges: count, then (gap, len) pairs
	msgSynced       = 3 // every feed and range of the sender's snapshot was sent
	msgRequest      = 4 // id (the receiver's) ‖ start ‖ end ‖ length the requester holds
	msgData         = 5 // id ‖ start ‖ blocks ‖ nodes ‖ length ‖ signature
	msgNotAvailable = 6 // id ‖ start ‖ end
	msgDone         = 7 // the sender wants nothing more
	msgPing         = 8
)

var helloMagic = []byte("KAPPA")

// helloLen is the length of a hello of this version (type, magic, version,
// mac), without its length prefix; a peer's may be longer.
const helloLen = 1 + 5 + 2 + 32

// message is a message of the session (all but hello), as decodeMessage
// returns it.
type message interface {
	encode() []byte
}

// helloMessage is the hello of the handshake: version, proof of the
// shared key (32 bytes; zeros in a refusal) and, from version 1.2, the
// sender's node id (none in a refusal, or from an older peer).
type helloMessage struct {
	major, minor byte
	mac          []byte
	node         nodeID // zero if the hello has none
}

// nodeID names one open database for the peers it meets: 16 random bytes,
// made anew each time the database is opened. Swarms use it to keep one
// session per pair of nodes and to never connect a node to itself.
type nodeID [16]byte

func (n nodeID) isZero() bool { return n == nodeID{} }

// String is the node id in hex, for messages and Peers.
func (n nodeID) String() string { return fmt.Sprintf("%x", n[:]) }

// feedMessage announces a feed under the sender's next id.
type feedMessage struct {
	id  uint64
	key []byte
}

// haveMessage is the sender's signed length of a feed and the ranges it
// holds below it.
type haveMessage struct {
	id, length uint64
	ranges     []span
}

// syncedMessage says every feed and range of the sender's snapshot was
// sent.
type syncedMessage struct{}

// requestMessage asks for entries [start, end) of the receiver's feed id.
type requestMessage struct {
	id, start, end, known uint64
}

// dataMessage answers a request: blocks with their proof.
type dataMessage struct {
	id uint64
	p  *Proof
}

// notAvailableMessage says the sender cannot serve [start, end).
type notAvailableMessage struct {
	id, start, end uint64
}

// doneMessage says the sender wants nothing more.
type doneMessage struct{}

// pingMessage keeps a quiet session alive.
type pingMessage struct{}

func (m helloMessage) encode() []byte {
	hello := append([]byte{msgHello}, helloMagic...)
	hello = append(hello, m.major, m.minor)
	hello = append(hello, m.mac...)
	if !m.node.isZero() {
		hello = append(hello, m.node[:]...)
	}
	return hello
}

// helloMsg is a hello of this side's version with mac and node (a zero
// node: none, as in a refusal).
func helloMsg(mac []byte, node nodeID) []byte {
	return helloMessage{protoMajor, protoMinor, mac, node}.encode()
}

// decodeHello decodes a hello (msg holds its type). A hello of minor
// version 2 or later with at least 16 bytes after the mac carries the
// sender's node id in them; anything after that, or after the mac of an
// older hello, is ignored (PROTOCOL.md §1).
func decodeHello(msg []byte) (helloMessage, error) {
	if len(msg) < helloLen || msg[0] != msgHello || !bytes.Equal(msg[1:1+len(helloMagic)], helloMagic) {
		return helloMessage{}, fmt.Errorf("%w: not a kappa hello", ErrProtocol)
	}
	h := helloMessage{
		major: msg[1+len(helloMagic)],
		minor: msg[2+len(helloMagic)],
		mac:   msg[3+len(helloMagic) : helloLen],
	}
	if h.minor >= 2 && len(msg) >= helloLen+len(h.node) {
		copy(h.node[:], msg[helloLen:])
	}
	return h, nil
}

func (m feedMessage) encode() []byte {
	return append(binary.AppendUvarint([]byte{msgFeed}, m.id), m.key...)
}

func decodeFeed(d *decoder) (feedMessage, error) {
	id := d.uvarint()
	key := d.bytes(PublicKeySize)
	if err := d.end(); err != nil {
		return feedMessage{}, err
	}
	return feedMessage{id, bytes.Clone(key)}, nil
}

func (m haveMessage) encode() []byte {
	msg := binary.AppendUvarint([]byte{msgHave}, m.id)
	msg = binary.AppendUvarint(msg, m.length)
	return appendSpans(msg, m.ranges)
}

// decodeHave decodes a have: its ranges lie below its length. Whether the
// length is at most maxTreeLength the session checks, after the id. It
// keeps the lowest maxHaveKept ranges, and checks the rest.
func decodeHave(d *decoder) (haveMessage, error) {
	id := d.uvarint()
	length := d.uvarint()
	ranges, err := decodeSpans(d, length, maxHaveKept)
	var ce *spanCountError
	switch {
	case errors.As(err, &ce):
		return haveMessage{}, protoErr("have of %d ranges in %d bytes", ce.count, ce.left)
	case errors.Is(err, errBadSpan):
		return haveMessage{}, protoErr("bad range in have of feed %d", id)
	}
	if err := d.end(); err != nil {
		return haveMessage{}, err
	}
	return haveMessage{id, length, ranges}, nil
}

// errBadSpan is decodeSpans' error for a span that is empty, touches or
// precedes the one before it, or does not lie below the limit.
var errBadSpan = errors.New("bad span")

// spanCountError is decodeSpans' error for a count of spans that the bytes
// left cannot hold (2 bytes at least each).
type spanCountError struct{ count, left uint64 }

func (e *spanCountError) Error() string {
	return fmt.Sprintf("%d spans in %d bytes", e.count, e.left)
}

// decodeSpans decodes spans as appendSpans encodes them: count, then per
// span the gap since the previous one's end (or 0) and its length. The
// spans must be non-empty, ascending, not touching and below limit. It
// returns the first keep of them (all are checked). It returns d's error
// for a bad or missing uvarint, *spanCountError for a count the bytes left
// cannot hold (checked before anything is allocated) and errBadSpan for a
// span out of form.
func decodeSpans(d *decoder, limit uint64, keep int) ([]span, error) {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b))/2 {
		return nil, &spanCountError{n, uint64(len(d.b))}
	}
	spans := make([]span, 0, min(n, uint64(keep)))
	var prev uint64
	for i := uint64(0); i < n && d.err == nil; i++ {
		gap, l := d.uvarint(), d.uvarint() // a bad uvarint leaves l 0
		if l == 0 || gap > limit || l > limit || prev+gap+l > limit || (i > 0 && gap == 0) {
			return nil, errBadSpan
		}
		if len(spans) < keep {
			spans = append(spans, span{prev + gap, prev + gap + l})
		}
		prev += gap + l
	}
	return spans, d.err
}

func (syncedMessage) encode() []byte { return []byte{msgSynced} }
func (doneMessage) encode() []byte   { return []byte{msgDone} }
func (pingMessage) encode() []byte   { return []byte{msgPing} }

func (m requestMessage) encode() []byte {
	msg := binary.AppendUvarint([]byte{msgRequest}, m.id)
	msg = binary.AppendUvarint(msg, m.start)
	msg = binary.AppendUvarint(msg, m.end)
	return binary.AppendUvarint(msg, m.known)
}

func decodeRequest(d *decoder) (requestMessage, error) {
	m := requestMessage{id: d.uvarint()}
	m.start, m.end, m.known = d.uvarint(), d.uvarint(), d.uvarint()
	if err := d.end(); err != nil {
		return requestMessage{}, err
	}
	return m, nil
}

func (m notAvailableMessage) encode() []byte {
	msg := binary.AppendUvarint([]byte{msgNotAvailable}, m.id)
	msg = binary.AppendUvarint(msg, m.start)
	return binary.AppendUvarint(msg, m.end)
}

func decodeNotAvailable(d *decoder) (notAvailableMessage, error) {
	m := notAvailableMessage{id: d.uvarint()}
	m.start, m.end = d.uvarint(), d.uvarint()
	if err := d.end(); err != nil {
		return notAvailableMessage{}, err
	}
	return m, nil
}

func (m dataMessage) encode() []byte { return encodeData(m.id, m.p) }

func encodeData(id uint64, p *Proof) []byte {
	size := 64 + 64 + len(p.Nodes)*48
	for _, b := range p.Blocks {
		size += len(b) + 4
	}
	msg := make([]byte, 0, size)
	msg = append(msg, msgData)
	msg = binary.AppendUvarint(msg, id)
	return appendProof(msg, p)
}

func decodeDataMessage(d *decoder) (dataMessage, error) {
	id := d.uvarint()
	if d.err != nil {
		return dataMessage{}, d.err
	}
	p, err := decodeData(d)
	if err != nil {
		return dataMessage{}, err
	}
	return dataMessage{id, p}, nil
}

// appendProof appends p encoded as a data message's body after its feed id
// (the fork file holds proofs in this form too).
func appendProof(msg []byte, p *Proof) []byte {
	msg = binary.AppendUvarint(msg, p.Start)
	msg = binary.AppendUvarint(msg, uint64(len(p.Blocks)))
	for _, b := range p.Blocks {
		msg = binary.AppendUvarint(msg, uint64(len(b)))
		msg = append(msg, b...)
	}
	msg = binary.AppendUvarint(msg, uint64(len(p.Nodes)))
	for _, n := range p.Nodes {
		msg = binary.AppendUvarint(msg, n.Index)
		msg = binary.AppendUvarint(msg, n.Size)
		msg = append(msg, n.Hash[:]...)
	}
	msg = binary.AppendUvarint(msg, p.Length)
	if p.Signature != nil {
		msg = append(msg, 1)
		msg = append(msg, p.Signature...)
	} else {
		msg = append(msg, 0)
	}
	return msg
}

// decodeData decodes a data message's body after its feed id.
func decodeData(d *decoder) (*Proof, error) {
	p := &Proof{Start: d.uvarint()}
	nb := d.uvarint()
	if d.err == nil && (nb == 0 || nb > maxRequestBlocks) {
		return nil, protoErr("data of %d blocks", nb)
	}
	p.Blocks = make([][]byte, 0, min(nb, uint64(len(d.b))))
	for range nb {
		p.Blocks = append(p.Blocks, d.bytes(d.uvarint()))
	}
	nn := d.uvarint()
	if d.err == nil && nn > uint64(len(d.b))/34 {
		return nil, protoErr("%d nodes in %d bytes", nn, len(d.b))
	}
	p.Nodes = make([]Node, 0, nn)
	for range nn {
		var n Node
		n.Index = d.uvarint()
		n.Size = d.uvarint()
		copy(n.Hash[:], d.bytes(32))
		p.Nodes = append(p.Nodes, n)
	}
	p.Length = d.uvarint()
	switch flag := d.bytes(1); {
	case d.err != nil:
	case flag[0] == 1:
		p.Signature = d.bytes(64)
	case flag[0] != 0:
		return nil, protoErr("bad signature flag %d", flag[0])
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return p, nil
}

// decodeMessage decodes one message of the session (type and body): a
// hello, which only the handshake reads, is an unknown type here.
func decodeMessage(msg []byte) (message, error) {
	if len(msg) == 0 {
		return nil, protoErr("empty message") // readFrame returns none
	}
	d := &decoder{b: msg[1:]}
	switch msg[0] {
	case msgFeed:
		return decodeFeed(d)
	case msgHave:
		return decodeHave(d)
	case msgSynced:
		return syncedMessage{}, d.end()
	case msgRequest:
		return decodeRequest(d)
	case msgData:
		return decodeDataMessage(d)
	case msgNotAvailable:
		return decodeNotAvailable(d)
	case msgDone:
		return doneMessage{}, d.end()
	case msgPing:
		return pingMessage{}, d.end()
	}
	return nil, protoErr("unknown message type %d", msg[0])
}

// decoder reads the fields of one message.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", ErrProtocol)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: message too short", ErrProtocol)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrProtocol, len(d.b))
	}
	return d.err
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}
