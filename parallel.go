package kappa

import (
	"runtime"
	"sync/atomic"
	"time"
)

// shareWork calls work(w, c) once for each chunk c in [0, chunks), on the
// calling goroutine (worker w = 0) and on up to workers−1 helpers (w = 1,
// 2, …; no more than GOMAXPROCS allows), and returns when every call has returned. Calls for different
// chunks may run at once and must touch different memory.
//
// Chunks are taken in turn from a shared counter, so the caller never
// waits for a helper to start: a helper that starts late finds fewer chunks
// left, or none, and the caller has done them itself. At the end the
// caller waits only for the chunks a helper took and is still working on.
//
// Why not simply a goroutine per part: on a virtual machine a goroutine
// woken on an idle CPU can take 100 µs or more to start, about what a large
// append's build takes, and a fixed split made the caller wait for it
// (measured: appends built in two fixed halves were slower than on one
// goroutine). So helpers also linger for lingerFor after their work,
// yielding, and join the next call's work at once: a writer appending
// large batches back to back keeps its helpers running.
func shareWork(workers, chunks int, work func(w, c int)) {
	helpers := min(workers, chunks, runtime.GOMAXPROCS(0)) - 1
	if helpers <= 0 {
		for c := range chunks {
			work(0, c)
		}
		return
	}
	s := &sharedWork{chunks: int64(chunks), workers: int64(workers), work: work, finished: make(chan struct{})}
	s.joined.Store(1) // the caller
	sharing.work.Store(s)
	for {
		alive := sharing.helpers.Load()
		if alive >= int32(helpers) {
			break
		}
		if sharing.helpers.CompareAndSwap(alive, alive+1) {
			go helpShare()
		}
	}
	s.take(0)
	sharing.work.CompareAndSwap(s, nil)
	// What is left is at most one chunk per helper, each already running:
	// yield a little before sleeping, since waking the caller again costs
	// more than a chunk's work.
	for range 64 {
		if s.done.Load() == s.chunks {
			return
		}
		runtime.Gosched()
	}
	<-s.finished
}

// lingerFor is how long a helper of shareWork waits for more work before
// it ends.
const lingerFor = 500 * time.Microsecond

// sharing holds the call of shareWork that helpers join, and how many
// helpers there are.
var sharing struct {
	work    atomic.Pointer[sharedWork]
	helpers atomic.Int32
}

// helpShare is a helper of shareWork: it joins the calls posted in
// sharing.work until none came for lingerFor.
func helpShare() {
	defer sharing.helpers.Add(-1)
	var last *sharedWork
	idle := time.Now()
	for {
		if s := sharing.work.Load(); s != nil && s != last {
			last = s
			if w := s.joined.Add(1) - 1; w < s.workers {
				s.take(int(w))
			}
			idle = time.Now()
			continue
		}
		if time.Since(idle) > lingerFor {
			return
		}
		runtime.Gosched()
	}
}

// sharedWork is one call of shareWork: the chunks taken and finished so
// far. It is not reused, so that a helper that joins after the call
// returned only finds that no chunk is left.
type sharedWork struct {
	next, done atomic.Int64
	joined     atomic.Int64 // workers that joined, the caller included
	chunks     int64
	workers    int64
	work       func(w, c int)
	finished   chan struct{} // closed by whoever finishes the last chunk
}

func (s *sharedWork) take(w int) {
	for {
		c := s.next.Add(1) - 1
		if c >= s.chunks {
			return
		}
		s.work(w, int(c))
		if s.done.Add(1) == s.chunks {
			close(s.finished)
		}
	}
}
