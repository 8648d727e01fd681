package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The view's file, <dir>/kv.log, holds its data and its progress:
//
//	file   = magic "KAPPAKV1" ‖ record*
//	record = uint32 n (big endian) ‖ body (n bytes) ‖ uint32 CRC-32C of body
//	body   = uvarint count ‖ count × op ‖ uvarint m ‖ state (m bytes)
//	op     = 1 ‖ uvarint len ‖ key ‖ feed (32 bytes) ‖ uvarint seq ‖ deleted (0 or 1) ‖ uvarint len ‖ value   add a version
//	       | 2 ‖ uvarint len ‖ key ‖ feed (32 bytes) ‖ uvarint seq                                          remove a version
//
// Each StoreState appends one record: the changes of the batches mapped
// since the previous one and the indexer's progress that covers them,
// then fsyncs. Replay applies the records in order; the progress is the
// state of the last record. A record that does not fit in the file, or
// whose CRC does not match, ends the file: it and everything after it is
// cut (a write torn by a crash), so data and progress always go together.
//
// Compaction writes one record holding every current version (as adds)
// and the state to kv.log.tmp, fsyncs it, renames it over kv.log and
// fsyncs the directory.

const (
	logName   = "kv.log"
	logMagic  = "KAPPAKV1"
	opAdd     = 1
	opRemove  = 2
	maxRecord = 1 << 31 // a body length beyond this is damage
)

// compactMin is the least file size worth compacting (a variable for
// tests).
var compactMin int64 = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord is returned by decodeBody for a body that does not parse.
var errBadRecord = errors.New("kv: malformed record")

// op is one change to the current versions.
type op struct {
	kind    byte
	key     string
	feed    []byte // 32 bytes
	seq     uint64
	deleted bool
	value   []byte
}

func appendOp(b []byte, o op) []byte {
	b = append(b, o.kind)
	b = binary.AppendUvarint(b, uint64(len(o.key)))
	b = append(b, o.key...)
	b = append(b, o.feed...)
	b = binary.AppendUvarint(b, o.seq)
	if o.kind == opAdd {
		d := byte(0)
		if o.deleted {
			d = 1
		}
		b = append(b, d)
		b = binary.AppendUvarint(b, uint64(len(o.value)))
		b = append(b, o.value...)
	}
	return b
}

// opSize is the size of o's encoding.
func opSize(o op) int {
	n := 1 + uvarintLen(uint64(len(o.key))) + len(o.key) + 32 + uvarintLen(o.seq)
	if o.kind == opAdd {
		n += 1 + uvarintLen(uint64(len(o.value))) + len(o.value)
	}
	return n
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// encodeRecord returns a whole record of ops and state.
func encodeLogRecord(ops []op, state []byte) []byte {
	n := uvarintLen(uint64(len(ops))) + uvarintLen(uint64(len(state))) + len(state)
	for _, o := range ops {
		n += opSize(o)
	}
	b := make([]byte, 4, 4+n+4)
	binary.BigEndian.PutUint32(b, uint32(n))
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, o := range ops {
		b = appendOp(b, o)
	}
	b = binary.AppendUvarint(b, uint64(len(state)))
	b = append(b, state...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[4:], castagnoli))
}

// decodeBody decodes a record's body; the ops' slices share body.
func decodeBody(body []byte) ([]op, []byte, error) {
	cnt, k := binary.Uvarint(body)
	if k <= 0 || cnt > uint64(len(body)) {
		return nil, nil, errBadRecord
	}
	body = body[k:]
	ops := make([]op, 0, cnt)
	bytesOf := func() ([]byte, bool) {
		l, k := binary.Uvarint(body)
		if k <= 0 || l > uint64(len(body)-k) {
			return nil, false
		}
		v := body[k : k+int(l)]
		body = body[k+int(l):]
		return v, true
	}
	for range cnt {
		if len(body) == 0 {
			return nil, nil, errBadRecord
		}
		o := op{kind: body[0]}
		body = body[1:]
		if o.kind != opAdd && o.kind != opRemove {
			return nil, nil, errBadRecord
		}
		key, ok := bytesOf()
		if !ok || len(body) < 32 {
			return nil, nil, errBadRecord
		}
		o.key = string(key)
		o.feed, body = body[:32:32], body[32:]
		s, k := binary.Uvarint(body)
		if k <= 0 {
			return nil, nil, errBadRecord
		}
		o.seq, body = s, body[k:]
		if o.kind == opAdd {
			if len(body) == 0 || body[0] > 1 {
				return nil, nil, errBadRecord
			}
			o.deleted, body = body[0] == 1, body[1:]
			if o.value, ok = bytesOf(); !ok {
				return nil, nil, errBadRecord
			}
		}
		ops = append(ops, o)
	}
	state, ok := bytesOf()
	if !ok || len(body) != 0 {
		return nil, nil, errBadRecord
	}
	return ops, state, nil
}

// replay reads a log's bytes: it calls apply for each op of each whole
// record, and returns the last record's state and the length of the file's
// whole prefix (where a torn or damaged tail begins). A file that does not
// start with the magic is an error.
func replay(b []byte, apply func(op)) (state []byte, good int64, err error) {
	if len(b) < len(logMagic) || string(b[:len(logMagic)]) != logMagic {
		return nil, 0, fmt.Errorf("kv: %s: not a key-value log (no magic %q)", logName, logMagic)
	}
	off := len(logMagic)
	for {
		if len(b)-off < 8 {
			return state, int64(off), nil
		}
		n := binary.BigEndian.Uint32(b[off:])
		if uint64(n) > uint64(len(b)-off-8) || n >= maxRecord {
			return state, int64(off), nil
		}
		body := b[off+4 : off+4+int(n)]
		if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[off+4+int(n):]) {
			return state, int64(off), nil
		}
		ops, st, err := decodeBody(body)
		if err != nil {
			return state, int64(off), nil
		}
		for _, o := range ops {
			apply(o)
		}
		state = st
		off += 8 + int(n)
	}
}

// logFile is the open log.
type logFile struct {
	dir  string
	f    *os.File
	size int64
}

// openLog opens (creating) dir's log, replays it into apply, cuts a torn
// tail, and returns it with the last state stored.
func openLog(dir string, apply func(op)) (*logFile, []byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("kv: %w", err)
	}
	path := filepath.Join(dir, logName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := writeFileSynced(dir, []byte(logMagic)); err != nil {
			return nil, nil, err
		}
		b = []byte(logMagic)
	} else if err != nil {
		return nil, nil, fmt.Errorf("kv: %w", err)
	}
	state, good, err := replay(b, apply)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("kv: %w", err)
	}
	if good < int64(len(b)) {
		// A torn tail: cut it, so that the next record follows the last
		// whole one.
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("kv: cut the torn tail of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("kv: %w", err)
		}
	}
	return &logFile{dir: dir, f: f, size: good}, state, nil
}

// write appends one record and fsyncs. On failure it cuts what it may have
// written, so that the file ends with the last whole record.
func (l *logFile) write(rec []byte) error {
	if l.f == nil {
		return fmt.Errorf("kv: log: %w", os.ErrClosed)
	}
	_, err := l.f.WriteAt(rec, l.size)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		if terr := l.f.Truncate(l.size); terr != nil {
			// The file may end in a partial record; replay cuts it.
			// Refuse further writes: they would follow it.
			l.f.Close()
			l.f = nil
		}
		return fmt.Errorf("kv: write %s: %w", logName, err)
	}
	l.size += int64(len(rec))
	return nil
}

// replace replaces the log by one holding only rec (a snapshot): write a
// temporary file, fsync, rename, fsync the directory.
func (l *logFile) replace(rec []byte) error {
	b := make([]byte, 0, len(logMagic)+len(rec))
	b = append(append(b, logMagic...), rec...)
	renamed, err := writeFileSynced(l.dir, b)
	if err != nil && !renamed {
		return err
	}
	// Renamed (even if the directory's fsync failed): the old file is
	// gone from the directory, so appends go to the new one.
	f, oerr := os.OpenFile(filepath.Join(l.dir, logName), os.O_RDWR, 0)
	if oerr != nil {
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
		return fmt.Errorf("kv: %w", oerr)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size = f, int64(len(b))
	return err
}

// writeFileSynced makes dir's log hold b, atomically: kv.log.tmp, fsync,
// rename, fsync of the directory.
func writeFileSynced(dir string, b []byte) (renamed bool, err error) {
	tmp := filepath.Join(dir, logName+".tmp")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false, fmt.Errorf("kv: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, logName))
		renamed = err == nil
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		if !renamed {
			os.Remove(tmp)
		}
		return renamed, fmt.Errorf("kv: write %s: %w", logName, err)
	}
	return true, nil
}

// syncDir fsyncs a directory, so that a rename in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

func (l *logFile) close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("kv: %w", err)
	}
	return nil
}
