package kappa

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
)

// loadKeys reads the key file, or writes it for a new feed. It reports
// whether the feed is new, the secret key it holds in hand (a new feed's,
// or one given in o), and whether the key file of a feed that is not new
// holds a secret key (stored), which is read again and checked where it is
// first used (secretKeyWriteLocked). blank says whether the feed's other
// files hold nothing past their headers.
func (f *Feed) loadKeys(meta File, o *FeedOptions, blank bool) (fresh bool, secret ed25519.PrivateKey, stored bool, err error) {
	size, err := meta.Size()
	if err != nil {
		return false, nil, false, err
	}
	var buf [metaSize]byte
	if size >= metaSize {
		if _, err := meta.ReadAt(buf[:], 0); err != nil {
			return false, nil, false, err
		}
	}
	if size < metaSize || [8]byte(buf[:8]) != magicKey {
		// A key file that is short or blank is a feed whose creation was
		// torn, unless data was already written under it.
		if !blank || (size >= metaSize && !isZero(buf[:]) && !o.rewriteKey) {
			return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 0, Reason: "key file is missing or damaged but the feed holds data"}
		}
		if size > 0 {
			f.repaired(Repair{File: f.name + fileKey, From: size, To: metaSize, Reason: "torn key file of an empty feed written again"})
		}
		secret, err := f.createKeys(meta, o)
		return true, secret, false, err
	}
	version, pub, inFile, ok := decodeKeyRecord(buf[:])
	if !ok && blank && o.rewriteKey && o.Key != nil && o.SecretKey == nil {
		// A replica created without sync whose key file was torn.
		f.repaired(Repair{File: f.name + fileKey, From: size, To: size, Reason: "torn key file of an empty replica written again"})
		secret, err := f.createKeys(meta, o)
		return true, secret, false, err
	}
	if !ok {
		return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 0, Reason: "checksum mismatch"}
	}
	if version != formatVersion {
		return false, nil, false, &CorruptError{File: f.name + fileKey, Offset: 8, Reason: "feed of " + otherFormat(version)}
	}
	f.key = ed25519.PublicKey(bytes.Clone(pub))
	if inFile != nil {
		// Only the stored secret key's public half is compared here.
		// That its seed derives the public key, which costs about as
		// much as a signature, is checked where the key is first used
		// (secretKeyWriteLocked), which reads the key file again: most
		// feeds of a database are not appended to after opening.
		if !bytes.Equal(inFile[ed25519.SeedSize:], f.key) {
			return false, nil, false, errSecretMismatch(f.name + fileKey)
		}
		stored = true
	}
	if o.Key != nil && !bytes.Equal(o.Key, f.key) {
		return false, nil, false, fmt.Errorf("%w: feed %x is stored here", ErrKeyMismatch, f.key[:8])
	}
	if o.SecretKey != nil {
		kp, err := KeyPairFromSecret(o.SecretKey)
		if err != nil {
			return false, nil, false, err
		}
		if !bytes.Equal(kp.PublicKey, f.key) {
			return false, nil, false, fmt.Errorf("%w: feed %x is stored here", ErrKeyMismatch, f.key[:8])
		}
		secret = kp.SecretKey
	}
	return false, secret, stored, nil
}

// createKeys writes the key file of a new feed, and returns its secret key
// (nil for a replica).
func (f *Feed) createKeys(meta File, o *FeedOptions) (ed25519.PrivateKey, error) {
	// Read-only, where there is no key file at all this would create a
	// feed; but a Core's replica (rewriteKey) is the repair of a creation
	// torn before its files were durable: its manifest record has the key.
	if _, none := meta.(*memFileRO); none && !o.rewriteKey {
		return nil, fmt.Errorf("%w: there is no feed here to open", ErrReadOnly)
	}
	var secret ed25519.PrivateKey
	switch {
	case o.SecretKey != nil:
		kp, err := KeyPairFromSecret(o.SecretKey)
		if err != nil {
			return nil, err
		}
		if o.Key != nil && !bytes.Equal(o.Key, kp.PublicKey) {
			return nil, fmt.Errorf("%w: secret key does not match public key", ErrInvalidKey)
		}
		f.key, secret = kp.PublicKey, kp.SecretKey
	case o.Key != nil:
		f.key = ed25519.PublicKey(bytes.Clone(o.Key))
	case f.cfg.readOnly: // a new key pair would be a new feed
		return nil, fmt.Errorf("%w: the key file holds no key, and none was given", ErrReadOnly)
	default:
		kp, err := NewKeyPair()
		if err != nil {
			return nil, err
		}
		f.key, secret = kp.PublicKey, kp.SecretKey
	}
	if f.cfg.readOnly {
		return secret, nil // the repair was reported; the file is left as it is
	}
	buf := encodeKeyRecord(f.key, secret)
	if _, err := meta.WriteAt(buf[:], 0); err != nil {
		return nil, err
	}
	if !f.cfg.noSync && !o.lazy {
		return secret, meta.Sync()
	}
	return secret, nil
}

// secretKeyWriteLocked returns a writable feed's secret key, reading it from
// the key file on first use: an idle writer does not hold it. Called under
// writeMu.
func (f *Feed) secretKeyWriteLocked() (ed25519.PrivateKey, error) {
	ws := f.scratchWriteLocked()
	if ws.secret != nil {
		return ws.secret, nil
	}
	secret, err := f.readSecretKey()
	if err != nil {
		return nil, err
	}
	ws.secret = secret
	return secret, nil
}

// readSecretKey reads the secret key from the key file, checking it
// against the feed's public key.
func (f *Feed) readSecretKey() (ed25519.PrivateKey, error) {
	stored, err := f.readStoredSecret()
	if err != nil {
		return nil, err
	}
	if stored == nil {
		return nil, errKeyFileChanged(f.name + fileKey)
	}
	return f.storedSecret(stored)
}

// readStoredSecret reads the key file again, and returns the secret key it
// holds (nil if none), unchecked. A record that fails its CRC, or holds
// another public key, is ErrCorrupt.
func (f *Feed) readStoredSecret() ([]byte, error) {
	name := f.name + fileKey
	meta, err := f.cfg.store.Open(name, false)
	if err != nil {
		return nil, err
	}
	defer meta.Close()
	var buf [metaSize]byte
	if _, err := meta.ReadAt(buf[:], 0); errors.Is(err, io.EOF) {
		return nil, errKeyFileChanged(name) // cut short
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	_, pub, stored, ok := decodeKeyRecord(buf[:])
	if !ok || !bytes.Equal(pub, f.key) {
		return nil, errKeyFileChanged(name)
	}
	return bytes.Clone(stored), nil
}

// errKeyFileChanged is the error of a writer's key file that no longer
// holds its key pair.
func errKeyFileChanged(name string) error {
	return &CorruptError{File: name, Offset: 0, Reason: "the key file no longer holds the feed's key pair"}
}

// storedSecret checks the secret key stored in the key file against the
// feed's public key.
func (f *Feed) storedSecret(stored []byte) (ed25519.PrivateKey, error) {
	kp, err := KeyPairFromSecret(stored)
	if err != nil || !bytes.Equal(kp.PublicKey, f.key) {
		return nil, errSecretMismatch(f.name + fileKey)
	}
	return kp.SecretKey, nil
}

// errSecretMismatch is the error of a key file whose secret key is not the
// feed's public key's.
func errSecretMismatch(name string) error {
	return &CorruptError{File: name, Offset: keySecretOff, Reason: "secret key does not match public key"}
}

// Key returns the feed's public key.
func (f *Feed) Key() ed25519.PublicKey { return f.key }

// DiscoveryKey returns the feed's discovery key; see DiscoveryKey.
func (f *Feed) DiscoveryKey() [32]byte { return DiscoveryKey(f.key) }

// Writable reports whether the feed holds its secret key.
func (f *Feed) Writable() bool { return f.writable }
