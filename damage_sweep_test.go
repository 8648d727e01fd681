package kappa

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The byte-by-byte damage test. A small database (two local writers, a full
// replica, a sparse one, each grown through several signature records, and a
// writer with no entry) is closed, and copies of its files are damaged one
// byte or one cut at a time: every byte flipped, every byte zeroed, every file
// cut at every offset, and every file extended at its end. Each copy is
// opened, and what the database promises is checked (see checkDamagedDB):
//
//   - opening either succeeds or fails with an error matching ErrCorrupt
//     (the test passes no shared key or encoding, so ErrKeyMismatch and
//     ErrEncodingMismatch would be dishonest);
//   - a feed that did not load is listed by Damaged, with an error matching
//     ErrCorrupt, and its files are left as they were;
//   - a loaded feed has its writer's signature for a length it signed, and
//     holds every entry it acknowledged unless a Repair of one of its files
//     explains the loss: damage at the tail looks like a torn write and is
//     cut back (a writer loses its newest append at most), and a replica's
//     bitfield page that claims entries whose leaf or bytes are gone is
//     rebuilt;
//   - a read never returns a wrong value: a present entry reads back equal,
//     or, if the damage hit that feed's data or tree (which opening does not
//     read whole), fails with ErrCorrupt;
//   - no file gets shorter without a Repair that says so, and OnError and
//     OnRepair receive what Damaged and Repairs list;
//   - a writer whose feed did not load cannot be made again by Writer, if
//     the database still knows its name; one that loaded still appends; each
//     replica takes its writer's proofs; the database reopens with nothing
//     more to repair and every entry still present.
//
// Two outcomes are accepted and counted, as nothing stored can tell them
// apart from a crash: a writer's name lives only in its manifest record, so
// when that record is lost Writer makes a new feed (in a new slot; the
// damaged one is kept); and the newest feed, if empty and its record damaged,
// is taken for a creation torn before Writer returned, and its slot reused.
//
// A replica whose newest signature record is damaged (not torn) loads at
// the length before it and lists the damage, which its writer's signature
// heals; a writer signs its length again, sending the damage to OnError with
// a repair; see recoverDamaged.
//
// By default the test damages every offset of every file of the small
// fixture; -short, or the race detector, a seeded sample of offsets of each
// file (replay with -kappa.seed); KAPPA_DAMAGE=full every offset under the
// race detector too; KAPPA_DAMAGE=long every offset of every file of the
// full fixture.

// damageMutation is one way to damage a file.
type damageMutation int

const (
	mutFlip    damageMutation = iota // all bits of one byte flipped
	mutZero                          // one byte set to zero
	mutCut                           // the file cut at an offset
	mutExtend0                       // zero bytes added at the end
	mutExtendR                       // random bytes added at the end
)

func (m damageMutation) String() string {
	return [...]string{"flip", "zero", "cut", "extend with zeros", "extend with random bytes"}[m]
}

// apply returns b damaged by m at off, and false if m changes nothing.
func (m damageMutation) apply(b []byte, off int, r *rand.Rand) ([]byte, bool) {
	b = bytes.Clone(b)
	switch m {
	case mutFlip:
		b[off] ^= 0xff
	case mutZero:
		if b[off] == 0 {
			return nil, false
		}
		b[off] = 0
	case mutCut:
		b = b[:off]
	case mutExtend0:
		b = append(b, make([]byte, 7)...)
	case mutExtendR:
		for range 7 {
			b = append(b, byte(r.IntN(256)))
		}
	}
	return b, true
}

// damageOffsets returns the offsets of a file of n bytes to damage: every
// one, or the header's last byte, the last bytes, and a seeded sample.
func damageOffsets(n int, every bool, sample int, r *rand.Rand) []int {
	if every || n <= sample {
		offs := make([]int, n)
		for i := range offs {
			offs[i] = i
		}
		return offs
	}
	set := map[int]bool{headerSize - 1: true, n - 1: true, n - 2: true}
	for len(set) < sample {
		set[r.IntN(n)] = true
	}
	var offs []int
	for off := range set {
		if off >= 0 && off < n {
			offs = append(offs, off)
		}
	}
	sort.Ints(offs)
	return offs
}

// damageTally counts outcomes.
type damageTally struct {
	opens     int
	outcomes  [4]int
	readErrs  int // opens where some present entry read as ErrCorrupt
	lost      int // opens that lost acknowledged entries, with a repair saying so
	nameLost  int // opens where a writer's manifest record was lost, so Writer made it anew
	emptyLost int // opens that dropped the empty newest feed as a torn creation
	failures  int
	kinds     map[string]int // failures by kind: the message without numbers
	lostBy    map[string]int // opens that lost acknowledged entries, by damage
	readBy    map[string]int // opens with entries that read as ErrCorrupt, by damage
}

func (tl *damageTally) add(res damageResult, kind string) {
	tl.opens++
	tl.outcomes[res.outcome]++
	if tl.lostBy == nil {
		tl.lostBy, tl.readBy = map[string]int{}, map[string]int{}
	}
	if res.readErrs > 0 {
		tl.readErrs++
		tl.readBy[kind]++
	}
	if res.lost > 0 {
		tl.lost++
		tl.lostBy[kind]++
	}
	if res.nameLost > 0 {
		tl.nameLost++
	}
	if res.emptyLost > 0 {
		tl.emptyLost++
	}
	if len(res.problems) > 0 {
		tl.failures++
		if tl.kinds == nil {
			tl.kinds = map[string]int{}
		}
		for _, p := range res.problems {
			tl.kinds[damageKind(p)]++
		}
	}
}

// damageKind returns a problem's message with numbers and hex keys elided.
func damageKind(p string) string {
	var b strings.Builder
	digits := false
	for _, r := range p {
		if r >= '0' && r <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(r)
	}
	return b.String()
}

func (tl *damageTally) String() string {
	return fmt.Sprintf("%d opens: %d clean, %d with repairs, %d with damage listed, %d refused with ErrCorrupt; "+
		"%d with an entry that reads as ErrCorrupt, %d with acknowledged entries cut by a reported repair, "+
		"%d where a writer's name was lost with its manifest record, %d where the empty newest feed was taken for a torn creation",
		tl.opens, tl.outcomes[outcomeClean], tl.outcomes[outcomeRepaired], tl.outcomes[outcomeDamaged], tl.outcomes[outcomeRefused],
		tl.readErrs, tl.lost, tl.nameLost, tl.emptyLost)
}

// TestDamageEveryByteIsReportedOrHarmless damages the fixture database one
// byte or one cut at a time and checks every open; see the top of this
// file. By default it sweeps every offset of every file of the small
// fixture: each byte flipped, each byte zeroed, each file cut at each
// offset and extended at its end (about 11,000 opens, spread over
// GOMAXPROCS workers). With -short it damages a seeded sample of offsets
// of each file (replay with -kappa.seed), and under the race detector a
// larger sample (the sweep looks for wrong answers, which the race
// detector does not change, and is slow under it: CI runs it whole without
// it); KAPPA_DAMAGE=full sweeps every offset under the race detector too.
// With KAPPA_DAMAGE=long, every offset of every file of the full fixture.
func TestDamageEveryByteIsReportedOrHarmless(t *testing.T) {
	long := os.Getenv("KAPPA_DAMAGE") == "long"
	fx := getDamageFixture(t, !long)
	every, sample := true, 0
	switch {
	case long || os.Getenv("KAPPA_DAMAGE") == "full":
	case testing.Short():
		every, sample = false, 3
	case raceEnabled:
		every, sample = false, 12
	}
	seed := testSeed()
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d (replay with -kappa.seed=%d), long=%v, every offset=%v", seed, seed, long, every)
	start := time.Now()

	type damageCase struct {
		name string
		m    damageMutation
		b    []byte
		what string
	}
	var cases []damageCase
	for _, name := range fx.names {
		orig := fx.files[name]
		for _, off := range damageOffsets(len(orig), every, sample, r) {
			for _, m := range []damageMutation{mutFlip, mutZero, mutCut} {
				if b, ok := m.apply(orig, off, r); ok {
					cases = append(cases, damageCase{name, m, b, fmt.Sprintf("%s: %v at %d of %d", name, m, off, len(orig))})
				}
			}
		}
		for _, m := range []damageMutation{mutExtend0, mutExtendR} {
			b, _ := m.apply(orig, 0, r)
			cases = append(cases, damageCase{name, m, b, fmt.Sprintf("%s: %v", name, m)})
		}
	}
	// The cases are independent: each opens its own copy.
	base := fx.restore()
	results := make([]damageResult, len(cases))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(cases) {
					return
				}
				s := damageCopy(base)
				s.setFileBytes(cases[i].name, cases[i].b)
				dc := damageCheck{touched: map[string]bool{cases[i].name: true}, inPlace: cases[i].m == mutFlip || cases[i].m == mutZero}
				results[i] = checkDamagedDB(fx, s, dc)
			}
		})
	}
	wg.Wait()

	var tally damageTally
	const maxFailures = 20
	for i, res := range results {
		tally.add(res, fmt.Sprintf("%s %v", cases[i].name, cases[i].m))
		if len(res.problems) > 0 && tally.failures <= maxFailures {
			t.Errorf("%s (%v): %s", cases[i].what, res.outcome, strings.Join(res.problems, "\n\t"))
		}
	}
	t.Logf("%v; %d files, %d bytes, in %v", &tally, len(fx.names), totalSize(fx), time.Since(start).Round(time.Millisecond))
	t.Logf("opens that cut acknowledged entries, by damage:%s", damageCounts(tally.lostBy))
	t.Logf("opens with entries that read as ErrCorrupt, by damage:%s", damageCounts(tally.readBy))
	if tally.failures > 0 {
		var kinds []string
		for k, n := range tally.kinds {
			kinds = append(kinds, fmt.Sprintf("%6d× %s", n, k))
		}
		sort.Strings(kinds)
		t.Errorf("%d failing cases (the first %d shown above); problems by kind:\n%s", tally.failures, maxFailures, strings.Join(kinds, "\n"))
	}
}

func damageCounts(m map[string]int) string {
	var lines []string
	for k, n := range m {
		lines = append(lines, fmt.Sprintf("\n\t%5d %s", n, k))
	}
	sort.Strings(lines)
	return strings.Join(lines, "")
}

func totalSize(fx *damageFixture) int {
	n := 0
	for _, b := range fx.files {
		n += len(b)
	}
	return n
}
