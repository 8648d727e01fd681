package kappa

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Sizes of keys and signatures, in bytes.
const (
	PublicKeySize = ed25519.PublicKeySize  // 32
	SecretKeySize = ed25519.PrivateKeySize // 64: seed followed by the public key
	SignatureSize = ed25519.SignatureSize  // 64
)

// KeyPair is a feed's ed25519 identity. The public key names the feed; the
// secret key, when present, makes it writable.
type KeyPair struct {
	PublicKey ed25519.PublicKey
	SecretKey ed25519.PrivateKey
}

// NewKeyPair generates a key pair from crypto/rand.
func NewKeyPair() (KeyPair, error) {
	pub, sec, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generate key pair: %w", err)
	}
	return KeyPair{PublicKey: pub, SecretKey: sec}, nil
}

// KeyPairFromSecret rebuilds a key pair from a 64-byte secret key (the form
// crypto/ed25519 and libsodium use) or a 32-byte seed.
func KeyPairFromSecret(secret []byte) (KeyPair, error) {
	var sec ed25519.PrivateKey
	switch len(secret) {
	case ed25519.SeedSize:
		sec = ed25519.NewKeyFromSeed(secret)
	case SecretKeySize:
		sec = ed25519.NewKeyFromSeed(secret[:ed25519.SeedSize])
		if !hmac.Equal(sec[ed25519.SeedSize:], secret[ed25519.SeedSize:]) {
			return KeyPair{}, fmt.Errorf("key pair: %w: secret key does not hold its own public key", ErrInvalidKey)
		}
	default:
		return KeyPair{}, fmt.Errorf("key pair: %w: secret key is %d bytes, want %d or %d", ErrInvalidKey, len(secret), ed25519.SeedSize, SecretKeySize)
	}
	return KeyPair{PublicKey: sec.Public().(ed25519.PublicKey), SecretKey: sec}, nil
}

// DiscoveryKey returns the 32-byte name under which peers can look for a feed
// without learning its public key: HMAC-SHA256 keyed by the public key over a
// fixed label. It cannot be inverted, so knowing it does not let a peer
// verify, and so read, the feed.
func DiscoveryKey(publicKey []byte) [32]byte {
	m := hmac.New(sha256.New, publicKey)
	m.Write([]byte("kappa discovery key v1"))
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// signable is the message a feed signs: the hash of its roots followed by its
// length, big-endian.
func signable(treeHash [32]byte, length uint64) [40]byte {
	var msg [40]byte
	copy(msg[:32], treeHash[:])
	binary.BigEndian.PutUint64(msg[32:], length)
	return msg
}

// signRoots signs the state of a feed of the given length.
func signRoots(secret ed25519.PrivateKey, treeHash [32]byte, length uint64) []byte {
	msg := signable(treeHash, length)
	return ed25519.Sign(secret, msg[:])
}

// verifyRoots reports whether sig signs the state (treeHash, length) under
// publicKey. Lengths are checked first: crypto/ed25519 panics on a key of the
// wrong size.
func verifyRoots(publicKey []byte, treeHash [32]byte, length uint64, sig []byte) bool {
	if len(publicKey) != PublicKeySize || len(sig) != SignatureSize {
		return false
	}
	msg := signable(treeHash, length)
	return ed25519.Verify(publicKey, msg[:], sig)
}
