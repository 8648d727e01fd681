package kappa

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"math"
	"slices"
)

// The on-disk records, each as a paired encode and decode, in the order of
// doc/FORMAT.md. All integers are big-endian; CRC is CRC-32C.

const formatVersion = 4

// otherFormat says that a file is of format version v, which this build
// does not read. Format 4 put the causal context into every block; a
// database of format 3 is not converted.
func otherFormat(v uint32) string {
	return fmt.Sprintf("format version %d; this build reads only format version %d (see doc/FORMAT.md)", v, formatVersion)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// File header: magic (8) ‖ version u32 ‖ record size u32. Every file but a
// feed's key file and the database file starts with one.
const headerSize = 16

var (
	magicManifest  = [8]byte{'K', 'A', 'P', 'P', 'F', 'E', 'D', 'S'}
	magicData      = [8]byte{'K', 'A', 'P', 'P', 'D', 'A', 'T', 'A'}
	magicTree      = [8]byte{'K', 'A', 'P', 'P', 'T', 'R', 'E', 'E'}
	magicSigs      = [8]byte{'K', 'A', 'P', 'P', 'S', 'I', 'G', 'S'}
	magicBits      = [8]byte{'K', 'A', 'P', 'P', 'B', 'I', 'T', 'S'}
	magicOlderSigs = [8]byte{'K', 'A', 'P', 'P', 'O', 'L', 'D', 'S'}
	magicFork      = [8]byte{'K', 'A', 'P', 'P', 'F', 'O', 'R', 'K'}
	magicJournal   = [8]byte{'K', 'A', 'P', 'P', 'J', 'R', 'N', 'L'}
)

func encodeHeader(magic [8]byte, recSize uint32) [headerSize]byte {
	var h [headerSize]byte
	copy(h[:8], magic[:])
	binary.BigEndian.PutUint32(h[8:], formatVersion)
	binary.BigEndian.PutUint32(h[12:], recSize)
	return h
}

// Database file "kappa": magic (8) ‖ version u32 ‖ value encoding u8 ‖
// reserved (3) ‖ shared key (32) ‖ CRC u32 of the 48 bytes before.
const (
	dbMetaSize  = 52
	dbEncOff    = 12
	dbKeyOff    = 16
	dbCRCOff    = 48
	dbVersionAt = 8
)

var magicDB = [8]byte{'K', 'A', 'P', 'P', 'A', 'D', 'B', 0}

func encodeDBMeta(key []byte, enc Encoding) [dbMetaSize]byte {
	var b [dbMetaSize]byte
	copy(b[:8], magicDB[:])
	binary.BigEndian.PutUint32(b[dbVersionAt:], formatVersion)
	b[dbEncOff] = enc.code()
	copy(b[dbKeyOff:dbKeyOff+32], key)
	binary.BigEndian.PutUint32(b[dbCRCOff:], crc32.Checksum(b[:dbCRCOff], castagnoli))
	return b
}

// dbMetaValid reports whether b holds a database file record whose magic and
// CRC hold; its version and encoding are checked by the caller.
func dbMetaValid(b []byte) bool {
	return len(b) >= dbMetaSize && [8]byte(b[:8]) == magicDB &&
		crc32.Checksum(b[:dbCRCOff], castagnoli) == binary.BigEndian.Uint32(b[dbCRCOff:])
}

// Manifest record (128 bytes, after the manifest's header): CRC u32 of bytes
// 4–127 ‖ flags u8 ‖ name length u8 ‖ reserved u16 ‖ public key (32) ‖ name
// (up to 88 bytes, zero padded).
const (
	manifestRecord = 128
	mfFlagsOff     = 4
	mfNameLenOff   = 5
	mfKeyOff       = 8
	mfNameOff      = 40
	maxNameLen     = manifestRecord - mfNameOff
)

func manifestRec(flags byte, key []byte, name string) []byte {
	rec := make([]byte, manifestRecord)
	rec[mfFlagsOff] = flags
	rec[mfNameLenOff] = byte(len(name))
	copy(rec[mfKeyOff:mfNameOff], key)
	copy(rec[mfNameOff:], name)
	binary.BigEndian.PutUint32(rec[:4], crc32.Checksum(rec[4:], castagnoli))
	return rec
}

// decodeManifestRec returns a record's fields; ok is false if its CRC fails
// or its name length is out of range.
func decodeManifestRec(rec []byte) (flags byte, key []byte, name string, ok bool) {
	if crc32.Checksum(rec[4:manifestRecord], castagnoli) != binary.BigEndian.Uint32(rec) {
		return 0, nil, "", false
	}
	n := int(rec[mfNameLenOff])
	if n > maxNameLen {
		return 0, nil, "", false
	}
	return rec[mfFlagsOff], rec[mfKeyOff:mfNameOff], string(rec[mfNameOff : mfNameOff+n]), true
}

// Feed key file: one 128-byte record, no header: magic (8) ‖ version u32 ‖
// flags u32 (bit 0: secret key present) ‖ public key (32) ‖ secret key (64)
// ‖ reserved (12) ‖ CRC u32 of the 124 bytes before.
const (
	metaSize     = 128
	keyFlagsOff  = 12
	keyPubOff    = 16
	keySecretOff = 48
	keyCRCOff    = metaSize - 4
)

var magicKey = [8]byte{'K', 'A', 'P', 'P', 'A', 'K', 'E', 'Y'}

func encodeKeyRecord(pub, secret []byte) [metaSize]byte {
	var b [metaSize]byte
	copy(b[:8], magicKey[:])
	binary.BigEndian.PutUint32(b[8:], formatVersion)
	copy(b[keyPubOff:keySecretOff], pub)
	if secret != nil {
		b[keyFlagsOff+3] = 1
		copy(b[keySecretOff:keySecretOff+64], secret)
	}
	binary.BigEndian.PutUint32(b[keyCRCOff:], crc32.Checksum(b[:keyCRCOff], castagnoli))
	return b
}

// decodeKeyRecord checks a key record's CRC and returns its version, public
// key and secret key (nil if absent).
func decodeKeyRecord(b []byte) (version uint32, pub, secret []byte, ok bool) {
	if crc32.Checksum(b[:keyCRCOff], castagnoli) != binary.BigEndian.Uint32(b[keyCRCOff:]) {
		return 0, nil, nil, false
	}
	pub = b[keyPubOff:keySecretOff]
	if binary.BigEndian.Uint32(b[keyFlagsOff:])&1 != 0 {
		secret = b[keySecretOff : keySecretOff+64]
	}
	return binary.BigEndian.Uint32(b[8:]), pub, secret, true
}

// Data record of entry seq, at dataPos(seq, byte offset of the entry):
// length u32 ‖ value ‖ CRC u32 of (length ‖ value), starting from a value
// derived from seq. The records of a feed's entries lie end to end, so a
// reader that starts at entry 0 finds every entry's bounds without the
// tree.
const (
	dataFrame  = 8 // length and CRC around each value
	dataLenLen = 4
)

// dataPos is where the record of entry seq lies in the data file, given the
// entry's byte offset (the values of the entries before it).
func dataPos(seq, off uint64) int64 {
	return headerSize + int64(off) + int64(seq)*dataFrame
}

// appendDataRecord appends the record of value v, entry seq, to b.
func appendDataRecord(b []byte, seq uint64, v []byte) []byte {
	at := len(b)
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	b = append(b, v...)
	return binary.BigEndian.AppendUint32(b, dataChecksum(seq, b[at:]))
}

// appendBlockRecord appends the record of entry seq whose block is
// prefix ‖ v (see block.go) to b.
func appendBlockRecord(b []byte, seq uint64, prefix, v []byte) []byte {
	at := len(b)
	b = binary.BigEndian.AppendUint32(b, uint32(len(prefix)+len(v)))
	b = append(b, prefix...)
	b = append(b, v...)
	return binary.BigEndian.AppendUint32(b, dataChecksum(seq, b[at:]))
}

// dataChecksum is the CRC of a data record's length and value, lv, of entry
// seq: seeded with seq, so that a record copied to another place does not
// pass.
func dataChecksum(seq uint64, lv []byte) uint32 {
	seed := (uint32(seq) ^ uint32(seq>>32)*0x9e3779b9) ^ 0xda7a
	return crc32.Update(seed, castagnoli, lv)
}

// dataChecksumParts is dataChecksum of the record of v, whose length field
// is l, for a value not stored after its length.
func dataChecksumParts(seq uint64, l [dataLenLen]byte, v []byte) uint32 {
	return crc32.Update(dataChecksum(seq, l[:]), castagnoli, v)
}

// decodeDataRecord decodes the record of entry seq at the start of b. It
// returns the value (a slice of b), the record's size, and ok false if b is
// too short to hold the record its length field announces (which may be
// damage). err is a CorruptError (at off, the record's place in file name)
// if the record fails its checksum or announces more than a block.
func decodeDataRecord(seq uint64, b []byte, name string, off int64) (v []byte, size int, ok bool, err error) {
	if len(b) < dataLenLen {
		return nil, 0, false, nil
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxBlockBytes {
		return nil, 0, false, &CorruptError{File: name + fileData, Offset: off, Reason: fmt.Sprintf("entry %d: record length %d is over the block limit", seq, n)}
	}
	size = dataFrame + int(n)
	if len(b) < size {
		return nil, 0, false, nil
	}
	v = b[dataLenLen : dataLenLen+n : dataLenLen+n]
	if dataChecksum(seq, b[:dataLenLen+n]) != binary.BigEndian.Uint32(b[dataLenLen+n:]) {
		return nil, 0, false, &CorruptError{File: name + fileData, Offset: off, Reason: fmt.Sprintf("entry %d fails its checksum", seq)}
	}
	return v, size, true, nil
}

// Tree record (56 bytes at 16 + 56·index): hash (32) ‖ size u64 ‖ byte
// offset u64 ‖ CRC u32 ‖ append ordinal u32. The CRC covers the 48 bytes
// before it and the ordinal, starting from a value derived from the index.
// The ordinal of a writer's leaf is the number of the signature record that
// covers it (1 for the first); it is 0 in parents and in a replica's nodes.
const (
	nodeSize    = 56
	nodeSizeOff = 32
	nodeOffOff  = 40
	nodeCRCOff  = 48
	nodeOrdOff  = 52
)

func encodeNode(rec []byte, n *storedNode) { encodeNodeOrd(rec, n, 0) }

func encodeNodeOrd(rec []byte, n *storedNode, ord uint32) {
	copy(rec[:32], n.Hash[:])
	binary.BigEndian.PutUint64(rec[nodeSizeOff:], n.Size)
	binary.BigEndian.PutUint64(rec[nodeOffOff:], n.Offset)
	binary.BigEndian.PutUint32(rec[nodeOrdOff:], ord)
	binary.BigEndian.PutUint32(rec[nodeCRCOff:], nodeChecksum(n.Index, rec))
}

// nodeChecksum is the CRC of a tree record, seeded with the node's index so
// that a record copied to another place does not pass.
func nodeChecksum(i uint64, rec []byte) uint32 {
	seed := uint32(i) ^ uint32(i>>32)*0x9e3779b9
	return crc32.Update(crc32.Update(seed, castagnoli, rec[:nodeCRCOff]), castagnoli, rec[nodeOrdOff:nodeSize])
}

// nodeRecordState tells an absent (all-zero) record from one whose CRC holds.
func nodeRecordState(i uint64, rec []byte) (present, valid bool) {
	if isZero(rec[:nodeSize]) {
		return false, false
	}
	return true, nodeChecksum(i, rec) == binary.BigEndian.Uint32(rec[nodeCRCOff:])
}

// decodeNode decodes tree record rec of node i, found in file name at off.
// It returns errNoNode for an absent record.
func decodeNode(i uint64, rec []byte, name string, off int64) (storedNode, error) {
	var n storedNode
	err := decodeNodeTo(&n, i, rec, name, off)
	return n, err
}

// decodeNodeTo is decodeNode into *n, for readers of many nodes: a node is
// 56 bytes, and copying it back out twice cost a sequential Get a tenth of
// its time.
func decodeNodeTo(n *storedNode, i uint64, rec []byte, name string, off int64) error {
	*n = storedNode{}
	n.Index = i
	present, valid := nodeRecordState(i, rec)
	if !present {
		return errNoNode
	}
	if !valid {
		return &CorruptError{File: name + fileTree, Offset: off, Reason: fmt.Sprintf("node %d checksum mismatch", i)}
	}
	copy(n.Hash[:], rec[:32])
	n.Size = binary.BigEndian.Uint64(rec[nodeSizeOff:])
	n.Offset = binary.BigEndian.Uint64(rec[nodeOffOff:])
	// A leaf's size bounds what Get allocates: no leaf can be larger than
	// a block.
	if n.Size > maxTreeBytes || n.Offset > maxTreeBytes || (i%2 == 0 && n.Size > maxBlockBytes) {
		return &CorruptError{File: name + fileTree, Offset: off, Reason: "node size out of range"}
	}
	return nil
}

func nodeOrdinal(rec []byte) uint32 { return binary.BigEndian.Uint32(rec[nodeOrdOff:]) }

// Signature record (80 bytes, appended): length u64 ‖ ed25519 signature (64)
// ‖ CRC u32 of (the 72 bytes before ‖ flags) ‖ flags u32.
const (
	sigRecordSize = 80
	sigSigOff     = 8
	sigCRCOff     = 72
	sigFlagsOff   = 76

	// sigSynced marks a signature record written after the data and tree
	// it covers were synced: if it is intact, they must verify.
	sigSynced = 1

	// Bits 8–15 of the flags (sigCheckedShift) hold the code of the value
	// encoding (see Encoding.code) that every entry below the record's
	// length was checked against before it was signed, or 0.
	sigCheckedShift = 8
	sigCheckedMask  = 0xff << sigCheckedShift

	// sigPlain marks a record whose writer appended every block below its
	// length without a causal context (0x00 ‖ value).
	sigPlain = 1 << 16

	// sigJournaled marks a signature record written, with the data and
	// tree it covers, by an append whose journal record holds all of
	// them: they are durable once that record is (see feed_journal.go).
	sigJournaled = 2
)

func encodeSigRecord(rec []byte, length uint64, sig []byte, flags uint32) {
	binary.BigEndian.PutUint64(rec[:sigSigOff], length)
	copy(rec[sigSigOff:sigCRCOff], sig)
	binary.BigEndian.PutUint32(rec[sigFlagsOff:], flags)
	binary.BigEndian.PutUint32(rec[sigCRCOff:], sigRecordChecksum(rec))
}

// decodeSigRecord returns a record's fields; ok is false if its CRC fails.
func decodeSigRecord(rec []byte) (length uint64, sig []byte, flags uint32, ok bool) {
	if sigRecordChecksum(rec) != binary.BigEndian.Uint32(rec[sigCRCOff:]) {
		return 0, nil, 0, false
	}
	return binary.BigEndian.Uint64(rec), rec[sigSigOff:sigCRCOff], binary.BigEndian.Uint32(rec[sigFlagsOff:]), true
}

func sigRecordChecksum(rec []byte) uint32 {
	return crc32.Update(crc32.Checksum(rec[:sigCRCOff], castagnoli), castagnoli, rec[sigFlagsOff:sigRecordSize])
}

// Journal record (see doc/FORMAT.md, "journal"), at offset o of the
// journal file: size u32 (of the whole record) ‖ kind u8 ‖ reserved (3) ‖
// records u64 ‖ length u64 ‖ byte length u64 ‖ count u32 ‖ count × (file
// u8 ‖ reserved (3) ‖ offset u64 ‖ n u32 ‖ n bytes) ‖ (kind 3 only: flags
// u32 ‖ roots hash (32) ‖ tag (32)) ‖ CRC u32 of all before, starting from
// a value derived from o.
const (
	jrnFixed      = 36 // size ‖ kind ‖ reserved ‖ records ‖ length ‖ byte length ‖ count
	jrnMinRecord  = jrnFixed + 4
	jrnWriteFixed = 16      // file ‖ reserved ‖ offset ‖ n
	jrnMaxRecord  = 4 << 20 // no record is larger; see journalMaxAppend
	jrnMaxLength  = 1 << 50 // no journaled feed is longer

	jrnBase   = 1 // the state durable in the files when the journal was cut
	jrnAppend = 2 // the writes of one append, its signature record's among them
	// jrnUnsigned is the data and tree writes of one append, with the
	// flags and roots hash of its signature record, which replay signs
	// (the writer signs while the record syncs, and writes the signature
	// record after), and their tag (see journalTag).
	jrnUnsigned = 3
	// jrnTail is the size of a jrnUnsigned record's flags, roots hash
	// and tag.
	jrnTail = 4 + 32 + 32

	jrnFileData = 1
	jrnFileTree = 2
	jrnFileSigs = 3
)

// journalRecord is a decoded journal record.
type journalRecord struct {
	kind    uint8
	records uint64 // signature records after it (base: durable in the files)
	length  uint64 // the feed's length after it
	byteLen uint64 // and its byte length
	writes  []journalWrite
	// Of a jrnUnsigned record: its signature record's flags, the roots
	// hash its signature signs, and their tag.
	flags uint32
	roots [32]byte
	tag   [32]byte
	at    int64 // where it was read (decodeJournal)
}

// journalWrite is one write of a journal record: n bytes at off in file.
type journalWrite struct {
	file uint8
	off  int64
	data []byte
}

// appendJournalRecord appends the record of rec, to be written at offset
// off of the journal, to b.
func appendJournalRecord(b []byte, off int64, rec *journalRecord) []byte {
	at := len(b)
	b = binary.BigEndian.AppendUint32(b, 0) // the size, below
	b = append(b, rec.kind, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, rec.records)
	b = binary.BigEndian.AppendUint64(b, rec.length)
	b = binary.BigEndian.AppendUint64(b, rec.byteLen)
	b = binary.BigEndian.AppendUint32(b, uint32(len(rec.writes)))
	for _, w := range rec.writes {
		b = appendJournalWrite(b, w.file, w.off, w.data)
	}
	if rec.kind == jrnUnsigned {
		b = appendJournalTail(b, rec.flags, rec.roots, rec.tag)
	}
	return finishJournalRecord(b, at, off)
}

// appendJournalWrite appends one write of a journal record to b.
func appendJournalWrite(b []byte, file uint8, off int64, data []byte) []byte {
	b = append(b, file, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// appendJournalTail appends a jrnUnsigned record's flags, roots hash and
// tag, after its writes, to b.
func appendJournalTail(b []byte, flags uint32, roots, tag [32]byte) []byte {
	b = binary.BigEndian.AppendUint32(b, flags)
	b = append(b, roots[:]...)
	return append(b, tag[:]...)
}

// journalTag is the tag of a jrnUnsigned record of length, flags and roots
// hash roots: HMAC-SHA256 keyed by the secret key's 32-byte seed (mac, of
// newJournalMAC), of "kappa journal v1" ‖ roots ‖ length u64 ‖ flags u32.
// Replay signs a record's roots hash only if its tag holds: only the
// holder of the secret key can have written it, and replay signs nothing
// its writer did not mean to sign, whoever else could write the journal.
func journalTag(mac hash.Hash, roots [32]byte, length uint64, flags uint32) (tag [32]byte) {
	var msg [len(journalTagLabel) + 32 + 8 + 4]byte
	n := copy(msg[:], journalTagLabel)
	n += copy(msg[n:], roots[:])
	binary.BigEndian.PutUint64(msg[n:], length)
	binary.BigEndian.PutUint32(msg[n+8:], flags)
	mac.Reset()
	mac.Write(msg[:])
	mac.Sum(tag[:0])
	return tag
}

// newJournalMAC returns the HMAC journalTag computes tags with, keyed by
// secret's seed; it is kept and reused, so that the key's pads are
// hashed once.
func newJournalMAC(secret ed25519.PrivateKey) hash.Hash {
	return hmac.New(sha256.New, secret.Seed())
}

const journalTagLabel = "kappa journal v1"

// finishJournalRecord sets the size of the record that starts at b[at:]
// and appends its CRC, for offset off of the journal.
func finishJournalRecord(b []byte, at int, off int64) []byte {
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at+4))
	return binary.BigEndian.AppendUint32(b, journalChecksum(off, b[at:]))
}

// journalChecksum is the CRC of a journal record's bytes before its CRC,
// seeded with its offset so that a record copied to another place fails.
func journalChecksum(off int64, b []byte) uint32 {
	seed := uint32(off) ^ uint32(uint64(off)>>32)*0x9e3779b9 ^ 0x6a72
	return crc32.Update(seed, castagnoli, b)
}

// errJournalUnreadable says that the bytes at a journal offset are not a
// whole record: its size is out of range or runs past the bytes given, or
// its CRC fails. Whether that is a torn tail or damage is for journalTorn.
var errJournalUnreadable = errors.New("not a whole journal record")

// decodeJournalRecord decodes the record at the start of b, found at off
// in the journal of feed name. It returns errJournalUnreadable if the
// record is not whole (size, CRC), and a *CorruptError if it is whole but
// not one this package writes: an unknown kind or file, a write out of
// the bounds its record's length sets, a signature write not at the place
// of its record's number, or sizes that do not add up. The writes' data
// are slices of b.
func decodeJournalRecord(b []byte, off int64, name string) (rec journalRecord, size int, err error) {
	if len(b) < 4 {
		return rec, 0, errJournalUnreadable
	}
	n := binary.BigEndian.Uint32(b)
	if n < jrnMinRecord || n > jrnMaxRecord || uint64(n) > uint64(len(b)) {
		return rec, 0, errJournalUnreadable
	}
	size = int(n)
	body := b[:size-4]
	if journalChecksum(off, body) != binary.BigEndian.Uint32(b[size-4:]) {
		return rec, 0, errJournalUnreadable
	}
	bad := func(format string, args ...any) (journalRecord, int, error) {
		return journalRecord{}, 0, &CorruptError{File: name + fileJournal, Offset: off, Reason: "intact journal record " + fmt.Sprintf(format, args...)}
	}
	rec.kind = body[4]
	rec.records = binary.BigEndian.Uint64(body[8:])
	rec.length = binary.BigEndian.Uint64(body[16:])
	rec.byteLen = binary.BigEndian.Uint64(body[24:])
	count := binary.BigEndian.Uint32(body[32:])
	if rec.kind == jrnUnsigned {
		var ok bool
		if body, ok = rec.cutTail(body); !ok {
			return bad("of an unsigned append with no room for its roots hash and tag")
		}
	}
	appends := rec.kind == jrnAppend || rec.kind == jrnUnsigned
	switch {
	case rec.kind != jrnBase && !appends:
		return bad("of unknown kind %d", rec.kind)
	case !isZero(body[5:8]):
		return bad("with reserved bytes set")
	case rec.length > jrnMaxLength || rec.byteLen > maxTreeBytes:
		return bad("of length %d and %d bytes, out of range", rec.length, rec.byteLen)
	case rec.records > rec.length:
		return bad("of %d signature records for length %d", rec.records, rec.length)
	case rec.kind == jrnBase && count != 0:
		return bad("of the base state with %d writes", count)
	case rec.kind == jrnUnsigned && (rec.flags&sigJournaled == 0 || rec.flags&sigSynced != 0):
		return bad("of an unsigned append whose signature record's flags, %#x, are not journaled", rec.flags)
	case appends && (count == 0 || rec.records == 0):
		return bad("of an append with %d writes and %d signature records", count, rec.records)
	case uint64(count) > uint64(len(body)-jrnFixed)/jrnWriteFixed:
		return bad("of %d writes, more than its size holds", count)
	}
	dataEnd := uint64(headerSize) + rec.byteLen + dataFrame*rec.length
	treeEnd := uint64(headerSize)
	if rec.length > 0 {
		treeEnd += (2*rec.length - 1) * nodeSize
	}
	sigAt := uint64(headerSize) + (rec.records-1)*sigRecordSize
	if count > 0 {
		rec.writes = make([]journalWrite, 0, count)
	}
	sigs := 0
	p := body[jrnFixed:]
	for i := range count {
		if len(p) < jrnWriteFixed {
			return bad("whose write %d runs past its end", i)
		}
		file := p[0]
		at := binary.BigEndian.Uint64(p[4:])
		wn := binary.BigEndian.Uint32(p[12:])
		if !isZero(p[1:4]) {
			return bad("with reserved bytes set in write %d", i)
		}
		if uint64(wn) > uint64(len(p)-jrnWriteFixed) {
			return bad("whose write %d of %d bytes runs past its end", i, wn)
		}
		var end uint64
		switch file {
		case jrnFileData:
			end = dataEnd
		case jrnFileTree:
			end = treeEnd
		case jrnFileSigs:
			sigs++
			if at != sigAt || wn != sigRecordSize {
				return bad("writes signature record %d at %d (%d bytes), not at %d", rec.records, at, wn, sigAt)
			}
			end = sigAt + sigRecordSize
		default:
			return bad("names unknown file %d in write %d", file, i)
		}
		if wn == 0 || at < headerSize || at > end || uint64(wn) > end-at {
			return bad("writes %d bytes at %d of file %d, outside [%d, %d)", wn, at, file, headerSize, end)
		}
		rec.writes = append(rec.writes, journalWrite{file: file, off: int64(at), data: p[jrnWriteFixed : jrnWriteFixed+wn : jrnWriteFixed+wn]})
		p = p[jrnWriteFixed+wn:]
	}
	if len(p) != 0 {
		return bad("with %d bytes after its writes", len(p))
	}
	if rec.kind == jrnAppend && sigs != 1 || rec.kind == jrnUnsigned && sigs != 0 {
		return bad("of an append (kind %d) with %d signature writes", rec.kind, sigs)
	}
	return rec, size, nil
}

// cutTail decodes the flags, roots hash and tag at the end of the body
// (the record before its CRC) of a jrnUnsigned record into rec, and
// returns the body without them; ok is false if there is no room for them.
func (rec *journalRecord) cutTail(body []byte) (_ []byte, ok bool) {
	if len(body) < jrnFixed+jrnTail {
		return body, false
	}
	tail := body[len(body)-jrnTail:]
	rec.flags = binary.BigEndian.Uint32(tail)
	rec.roots = [32]byte(tail[4:])
	rec.tag = [32]byte(tail[36:])
	return body[:len(body)-jrnTail], true
}

// journalEnd reports whether the journal bytes b end at off: nothing
// follows, or only zeros (a journal is preallocated with zeros).
func journalEnd(b []byte, off int) bool { return isZero(b[off:]) }

// journalTorn reports whether the unreadable record at off of a journal
// whose bytes are b could be a write torn by a crash, rather than damage:
// the file holds fewer than 4 bytes from off, or its size field names
// more bytes than the file holds from off, or only zeros follow the
// bytes it names and some of them are zeros a torn write explains: the
// last (of its CRC: the end of the write did not land), or a whole
// 512-byte sector of the file inside the record (a sector that did not
// land, the others did). The bytes a record is written over are zeros.
// Each record is synced before the next is written, so nothing but zeros
// follows a torn one; a size field out of range is damage.
func journalTorn(b []byte, off int) bool {
	rest := b[off:]
	if len(rest) < 4 {
		return true
	}
	n := binary.BigEndian.Uint32(rest)
	if n < jrnMinRecord || n > jrnMaxRecord {
		return false
	}
	if uint64(n) > uint64(len(rest)) {
		return true
	}
	if !isZero(rest[n:]) {
		return false
	}
	if rest[n-1] == 0 {
		return true
	}
	end := off + int(n)
	for s := (off + tornSector - 1) &^ (tornSector - 1); s+tornSector <= end; s += tornSector {
		if isZero(b[s : s+tornSector]) {
			return true
		}
	}
	return false
}

// Bitfield page (1028 bytes at 16 + 1028·page): 1024 bytes of bits, bit i%8
// of byte i/8 for entry page·8192 + i ‖ CRC u32 of them, starting from the
// page number. An all-zero page fails its CRC.
const (
	bitPageBytes   = 1024
	bitPageEntries = 8 * bitPageBytes
	bitPageSize    = bitPageBytes + 4
)

func encodeBitPage(rec []byte, page uint64) {
	binary.BigEndian.PutUint32(rec[bitPageBytes:], bitPageChecksum(page, rec))
}

func bitPageValid(page uint64, rec []byte) bool {
	return !isZero(rec[:bitPageSize]) && bitPageChecksum(page, rec) == binary.BigEndian.Uint32(rec[bitPageBytes:])
}

func bitPageChecksum(page uint64, rec []byte) uint32 {
	seed := uint32(page) ^ uint32(page>>32)*0x9e3779b9 ^ 0xb175
	return crc32.Update(seed, castagnoli, rec[:bitPageBytes])
}

// indexState is a view's stored progress: the view's version and, per
// feed key, the indexed ranges.
//
// Encoding: "KIX1" ‖ uvarint(version) ‖ uvarint(feeds) ‖ per feed: key(32)
// ‖ uvarint(spans) ‖ per span: uvarint(start − previous end) ‖
// uvarint(length) ‖ CRC-32C of all before, big-endian. Feeds are sorted by
// key, spans ascending, disjoint and not touching, non-empty.
type indexState struct {
	version uint64
	feeds   map[string][]span
}

var magicIndexState = []byte("KIX1")

func (st *indexState) encode() []byte {
	keys := make([]string, 0, len(st.feeds))
	for k := range st.feeds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := append([]byte(nil), magicIndexState...)
	b = binary.AppendUvarint(b, st.version)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendFeedState(b, k, st.feeds[k])
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// appendFeedState appends one feed's part of an encoded indexState.
func appendFeedState(b []byte, key string, spans []span) []byte {
	return appendSpans(append(b, key...), spans)
}

// appendSpans appends sorted, disjoint spans as the index state and the
// have message encode them: their count, then per span the gap since the
// previous one's end (or 0) and its length, each a uvarint.
func appendSpans(b []byte, spans []span) []byte {
	b = binary.AppendUvarint(b, uint64(len(spans)))
	var prev uint64
	for _, s := range spans {
		b = binary.AppendUvarint(b, s.start-prev)
		b = binary.AppendUvarint(b, s.end-s.start)
		prev = s.end
	}
	return b
}

var errBadState = errors.New("bad index state")

// decodeIndexState decodes a view's stored progress as indexState.encode
// writes it (see indexState). Anything else is errBadState: a bad magic or
// checksum, keys out of order, a feed without spans, an empty span, spans
// that touch or overlap or end past maxTreeLength, trailing bytes.
func decodeIndexState(b []byte) (*indexState, error) {
	if len(b) < len(magicIndexState)+4 || string(b[:4]) != string(magicIndexState) {
		return nil, fmt.Errorf("%w: no magic", errBadState)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadState)
	}
	r := body[4:]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, fmt.Errorf("%w: truncated", errBadState)
		}
		r = r[n:]
		return v, nil
	}
	st := &indexState{feeds: map[string][]span{}}
	var err error
	if st.version, err = next(); err != nil {
		return nil, err
	}
	nfeeds, err := next()
	if err != nil {
		return nil, err
	}
	if nfeeds > uint64(len(r))/33 {
		return nil, fmt.Errorf("%w: %d feeds in %d bytes", errBadState, nfeeds, len(r))
	}
	prevKey := ""
	for range nfeeds {
		if len(r) < PublicKeySize {
			return nil, fmt.Errorf("%w: truncated key", errBadState)
		}
		key := string(r[:PublicKeySize])
		r = r[PublicKeySize:]
		if key <= prevKey && prevKey != "" {
			return nil, fmt.Errorf("%w: keys out of order", errBadState)
		}
		prevKey = key
		d := &decoder{b: r} // spans as in a have message (wire_codec.go)
		spans, err := decodeSpans(d, maxTreeLength, math.MaxInt)
		if err != nil || len(spans) == 0 {
			return nil, fmt.Errorf("%w: bad spans (%d): %v", errBadState, len(spans), err)
		}
		r = d.b
		st.feeds[key] = spans
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errBadState, len(r))
	}
	return st, nil
}

// Fork file "fork": header (record size 0) ‖ node u64 ‖ for the local proof,
// then the peer's: length u32 ‖ the proof, encoded as the body of a data
// message after its feed id (wire_codec.go appendProof) ‖ CRC u32 of the bytes
// after the header and before it. Both proofs are signed and hold at least
// one block.
const forkFixed = headerSize + 8 + 4 + 4 + 4

func encodeForkFile(node uint64, local, peer *Proof) []byte {
	hdr := encodeHeader(magicFork, 0)
	b := append([]byte(nil), hdr[:]...)
	b = binary.BigEndian.AppendUint64(b, node)
	for _, p := range []*Proof{local, peer} {
		at := len(b)
		b = append(b, 0, 0, 0, 0)
		b = appendProof(b, p)
		binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[headerSize:], castagnoli))
}

var errBadFork = errors.New("bad fork file")

// decodeForkFile decodes a fork file. It checks the header, the CRC and
// that each proof decodes exactly and is signed, not that the proofs
// verify (ForkEvidence.Verify does).
func decodeForkFile(b []byte) (node uint64, local, peer *Proof, err error) {
	hdr := encodeHeader(magicFork, 0)
	switch {
	case len(b) < forkFixed:
		return 0, nil, nil, fmt.Errorf("%w: %d bytes", errBadFork, len(b))
	case [headerSize]byte(b[:headerSize]) != hdr:
		return 0, nil, nil, fmt.Errorf("%w: bad header", errBadFork)
	}
	body, sum := b[headerSize:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return 0, nil, nil, fmt.Errorf("%w: CRC mismatch", errBadFork)
	}
	node, body = binary.BigEndian.Uint64(body), body[8:]
	var proofs [2]*Proof
	for i := range proofs {
		if len(body) < 4 {
			return 0, nil, nil, fmt.Errorf("%w: proof %d is cut", errBadFork, i)
		}
		n := binary.BigEndian.Uint32(body)
		if uint64(n) > uint64(len(body)-4) {
			return 0, nil, nil, fmt.Errorf("%w: proof %d is cut", errBadFork, i)
		}
		p, err := decodeData(&decoder{b: body[4 : 4+n]})
		if err != nil {
			return 0, nil, nil, fmt.Errorf("%w: proof %d: %v", errBadFork, i, err)
		}
		if p.Signature == nil {
			return 0, nil, nil, fmt.Errorf("%w: proof %d is not signed", errBadFork, i)
		}
		proofs[i], body = p, body[4+n:]
	}
	if len(body) != 0 {
		return 0, nil, nil, fmt.Errorf("%w: %d bytes after the proofs", errBadFork, len(body))
	}
	return node, proofs[0], proofs[1], nil
}
