package kappa

import (
	"bytes"
	"testing"
)

// FuzzBeaconDecode: no datagram makes the beacon decoder panic, and a
// datagram it opens re-encodes to the same bytes.
func FuzzBeaconDecode(f *testing.F) {
	key := bytes.Repeat([]byte{7}, 32)
	node := nodeID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	valid := testBeacon(key, beaconKind, 7654, node)
	f.Add(valid)
	f.Add(testBeacon(key, probeKind, 0, node))
	f.Add(testBeacon(bytes.Repeat([]byte{8}, 32), beaconKind, 7654, node))
	f.Add(valid[:beaconLen-1])
	f.Add(append(bytes.Clone(valid), 0))
	f.Add([]byte(beaconMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		c := newBeaconCodec(key)
		in := bytes.Clone(p)
		b, err := c.decode(p)
		if !bytes.Equal(in, p) {
			t.Fatal("decode wrote to its input")
		}
		if err != nil {
			return
		}
		var out [beaconLen]byte
		c.encode(&out, b)
		if !bytes.Equal(out[:], p) {
			t.Fatalf("re-encoded %x, decoded %x", out, p)
		}
	})
}
