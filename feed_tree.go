package kappa

import (
	"errors"
	"io"
)

var errNoNode = errors.New("node not stored")

// readNode reads node i from the tree file. It returns errNoNode if the
// node is not stored.
func (f *Feed) readNode(i uint64) (storedNode, error) {
	var rec [nodeSize]byte
	off := headerSize + int64(i)*nodeSize
	if _, err := f.ftree().ReadAt(rec[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return storedNode{}, errNoNode
		}
		return storedNode{}, err
	}
	return decodeNode(i, rec[:], f.name, off)
}

// nodeSpan holds the tree records of nodes [lo, lo+n) as read by
// readNodeSpan; n counts only the records read whole.
type nodeSpan struct {
	lo, n uint64
	buf   []byte
}

// readNodeSpan reads the tree records of nodes [lo, hi) with one call.
func (f *Feed) readNodeSpan(lo, hi uint64) (*nodeSpan, error) {
	buf := make([]byte, (hi-lo)*nodeSize)
	n, err := f.ftree().ReadAt(buf, headerSize+int64(lo)*nodeSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return &nodeSpan{lo: lo, n: uint64(n) / nodeSize, buf: buf}, nil
}

// node returns node i as readNode does, from the span if it covers i. A
// node of the span past the end of the file is not stored; a nil span
// covers nothing.
func (s *nodeSpan) node(f *Feed, i uint64) (storedNode, error) {
	if s == nil || i < s.lo || i >= s.lo+uint64(len(s.buf))/nodeSize {
		return f.readNode(i)
	}
	if i >= s.lo+s.n {
		return storedNode{}, errNoNode
	}
	off := (i - s.lo) * nodeSize
	return decodeNode(i, s.buf[off:off+nodeSize], f.name, headerSize+int64(i)*nodeSize)
}

func (f *Feed) readRoots(length uint64) ([]storedNode, error) {
	if length == 0 || length > maxTreeLength {
		return nil, errNoNode
	}
	var idx [64]uint64
	var roots []storedNode
	for _, i := range fullRoots(idx[:0], length) {
		n, err := f.readNode(i)
		if err != nil {
			return nil, err
		}
		roots = append(roots, n)
	}
	return roots, nil
}
