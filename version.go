package kappa

// FormatVersion is the version of the on-disk format (doc/FORMAT.md) this
// package reads and writes. Open refuses a database of another version.
const FormatVersion = formatVersion

// ProtocolMajor and ProtocolMinor are the version of the replication
// protocol (doc/PROTOCOL.md) this package speaks. Peers whose major
// versions differ refuse each other (ErrVersion).
const (
	ProtocolMajor = protoMajor
	ProtocolMinor = protoMinor
)
