package kappa

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// How sessions end, and what their errors say: a peer that vanishes is
// ErrPeerClosed, a silent one ErrTimeout, a slow one neither; a goodbye is
// nil; tampering is ErrProtocol; a local disk failure ErrStorage.

// phases returns a Progress function and a channel that gets each new
// phase the session reports.
func phases() (func(ReplicateProgress), <-chan string) {
	ch := make(chan string, 16)
	var mu sync.Mutex
	last := ""
	return func(p ReplicateProgress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Phase != last {
			last = p.Phase
			ch <- p.Phase
		}
	}, ch
}

// waitPhase waits until a session reports phase.
func waitPhase(t testing.TB, ch <-chan string, phase string) {
	t.Helper()
	deadline := time.NewTimer(hostileWait)
	defer deadline.Stop()
	for {
		select {
		case p := <-ch:
			if p == phase {
				return
			}
		case <-deadline.C:
			t.Fatalf("the session never reported the phase %q", phase)
		}
	}
}

// livePair starts live sessions of a (the initiator) on ca and of b on
// cb, each with its own context, and waits until both report "live".
func livePair(t testing.TB, a, b *Core, ca, cb net.Conn, oa, ob ReplicateOptions) (ctxA, ctxB context.CancelFunc, resA, resB <-chan error) {
	t.Helper()
	pa, pha := phases()
	pb, phb := phases()
	oa.Live, ob.Live = true, true
	oa.Progress, ob.Progress = pa, pb
	ea, eb := make(chan error, 1), make(chan error, 1)
	xa, cancelA := context.WithCancel(ctxT(t))
	xb, cancelB := context.WithCancel(ctxT(t))
	t.Cleanup(cancelA)
	t.Cleanup(cancelB)
	go func() { ea <- a.Replicate(xa, ca, true, &oa) }()
	go func() { eb <- b.Replicate(xb, cb, false, &ob) }()
	waitPhase(t, pha, "live")
	waitPhase(t, phb, "live")
	return cancelA, cancelB, ea, eb
}

func TestProgressReportsLive(t *testing.T) {
	a, b := sharedPair(t, nil)
	appendN(t, mustWriter(t, a, "w"), 3, "a")
	ca, cb := connPair(t, "pipe")
	cancelA, cancelB, ea, eb := livePair(t, a, b, ca, cb, ReplicateOptions{}, ReplicateOptions{})
	cancelA()
	cancelB()
	waitHonest(t, ea)
	waitHonest(t, eb)
}

// A live side whose context ends says goodbye; its peer ends with nil.
func TestLiveSessionEndsWithNilOnTheGoodbyeOfItsPeer(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			appendN(t, mustWriter(t, a, "w"), 3, "a")
			ca, cb := connPair(t, kind)
			cancelA, _, ea, eb := livePair(t, a, b, ca, cb, ReplicateOptions{}, ReplicateOptions{})
			cancelA()
			if err := waitHonest(t, ea); !errors.Is(err, context.Canceled) {
				t.Fatalf("the side whose context ended: %v, want context.Canceled", err)
			}
			if err := waitHonest(t, eb); err != nil {
				t.Fatalf("the side that got the goodbye: %v, want nil", err)
			}
		})
	}
}

// A live session whose peer's connection ends without a goodbye (after
// both sides said done: the moment a hang-up used to pass for one) ends
// with ErrPeerClosed.
func TestLivePeerCutOffIsPeerClosed(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			appendN(t, mustWriter(t, a, "w"), 3, "a")
			ca, cb := connPair(t, kind)
			_, _, ea, eb := livePair(t, a, b, ca, cb, ReplicateOptions{}, ReplicateOptions{})
			cb.Close() // b's connection ends under it: no close_notify
			if err := waitHonest(t, ea); !errors.Is(err, ErrPeerClosed) {
				t.Fatalf("a: %v, want ErrPeerClosed", err)
			}
			if err := waitHonest(t, eb); err == nil {
				t.Fatal("b, whose connection was closed under it: nil")
			}
		})
	}
}

// init lets the test binary double as a live peer that the test kills:
// KAPPA_LIVE_PEER is "address,shared key in hex".
func init() {
	if spec := os.Getenv("KAPPA_LIVE_PEER"); spec != "" {
		os.Exit(livePeerChild(spec))
	}
}

// livePeerChild dials addr and runs a live session as the initiator. It
// prints "live" once the first exchange is over, and runs until killed.
func livePeerChild(spec string) int {
	addr, keyHex, _ := strings.Cut(spec, ",")
	key, err := hex.DecodeString(keyHex)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	c, err := New(NewMemStorage(), &Options{SharedKey: key})
	if err != nil {
		fmt.Println(err)
		return 2
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	var once sync.Once
	err = c.Replicate(context.Background(), conn, true, &ReplicateOptions{Live: true, Progress: func(p ReplicateProgress) {
		if p.Phase == "live" {
			once.Do(func() { fmt.Println("live") })
		}
	}})
	fmt.Println("ended:", err)
	return 1
}

// A live session whose peer process is killed (SIGKILL) ends with
// ErrPeerClosed.
func TestLivePeerKilledIsPeerClosed(t *testing.T) {
	a := newCore(t, nil)
	appendN(t, mustWriter(t, a, "w"), 3, "a")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := ctxT(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = childEnv(fmt.Sprintf("KAPPA_LIVE_PEER=%s,%x", l.Addr(), a.SharedKey()))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- a.Replicate(ctx, conn, false, &ReplicateOptions{Live: true}) }()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "live" {
		t.Fatalf("the peer process said %q (%v), want live", sc.Text(), sc.Err())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := waitHonest(t, res); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("got %v, want ErrPeerClosed", err)
	}
}

// relay connects ca (for one side) and cb (for the other) through the
// test, which forwards each direction with fwd: dir 0 carries what the
// side on ca writes, dir 1 what the side on cb writes.
func relay(t testing.TB, kind string, fwd func(dir int, src, dst net.Conn)) (ca, cb net.Conn) {
	t.Helper()
	ca, pa := connPair(t, kind)
	pb, cb := connPair(t, kind)
	t.Cleanup(func() { pa.Close(); pb.Close() })
	go func() { fwd(0, pa, pb); pb.Close() }()
	go func() { fwd(1, pb, pa); pa.Close() }()
	return ca, cb
}

// A peer that goes silent (the link forwards nothing more, though it
// stays open) ends a live session with ErrTimeout.
func TestSilentLinkIsTimeout(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			appendN(t, mustWriter(t, a, "w"), 3, "a")
			silence := make(chan struct{})
			stop := make(chan struct{}) // the test is over
			ca, cb := relay(t, kind, func(dir int, src, dst net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						select {
						case <-silence: // nor does it pass the end on
							<-stop
						default:
						}
						return
					}
					select {
					case <-silence: // swallowed
					default:
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
				}
			})
			t.Cleanup(func() { close(stop) })
			opts := ReplicateOptions{Timeout: 2 * time.Second, KeepAlive: 200 * time.Millisecond}
			_, _, ea, eb := livePair(t, a, b, ca, cb, opts, opts)
			close(silence)
			for _, res := range []<-chan error{ea, eb} {
				if err := waitHonest(t, res); !errors.Is(err, ErrTimeout) {
					t.Fatalf("got %v, want ErrTimeout", err)
				}
			}
		})
	}
}

// TestSlowMovingLinkIsNotATimeout: a link that moves a steady 500 bytes/s
// is slow, not dead: a message that takes several times Timeout to cross it
// gets there. (TLS sends records of about 1.2 KiB at first: one takes more
// than Timeout to write.) Over a net.Conn (here net.Pipe, which buffers
// nothing) writes have deadlines; over any other io.ReadWriteCloser they go
// in pieces.
func TestSlowMovingLinkIsNotATimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 5 KiB at 500 bytes/s")
	}
	for _, kind := range []string{"pipe", "rwc"} {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			w := mustWriter(t, a, "w")
			if _, err := w.Append(bytes.Repeat([]byte("slow"), 1280)); err != nil {
				t.Fatal(err)
			}
			const perTick, tick = 50, 100 * time.Millisecond // 500 bytes/s
			throttle := make(chan struct{})                  // closed once the handshake is over
			ca, cb := relay(t, "pipe", func(dir int, src, dst net.Conn) {
				buf := make([]byte, 32<<10)
				ticker := time.NewTicker(tick)
				defer ticker.Stop()
				for {
					n := len(buf)
					select {
					case <-throttle:
						<-ticker.C
						n = perTick
					default:
					}
					n, err := src.Read(buf[:n])
					if err != nil {
						return
					}
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
			})
			var ra, rb io.ReadWriteCloser = ca, cb
			if kind == "rwc" {
				ra, rb = struct{ io.ReadWriteCloser }{ca}, struct{ io.ReadWriteCloser }{cb}
			}
			var once sync.Once
			var start time.Time
			// A timeout long enough that a busy machine's pause is not a
			// dead link, and a block that takes two of them to move.
			opts := &ReplicateOptions{Timeout: 4 * time.Second, KeepAlive: time.Second}
			ob := *opts
			ob.Progress = func(p ReplicateProgress) {
				if p.Phase == "exchange" {
					once.Do(func() { start = time.Now(); close(throttle) })
				}
			}
			ctx := ctxT(t)
			eb := make(chan error, 1)
			go func() { eb <- b.Replicate(ctx, rb, false, &ob) }()
			if err := a.Replicate(ctx, ra, true, opts); err != nil {
				t.Fatalf("a: %v", err)
			}
			if err := waitHonest(t, eb); err != nil {
				t.Fatalf("b: %v", err)
			}
			took := time.Since(start)
			t.Logf("the exchange took %v", took)
			if took < 2*opts.Timeout {
				t.Fatalf("the exchange took only %v: the link was not slow", took)
			}
			checkHas(t, a, b)
		})
	}
}

// tlsRecords forwards TLS records from src to dst, and flips a bit in the
// middle of the first application-data record after armed is closed.
func tlsRecords(src, dst net.Conn, armed <-chan struct{}) {
	r := bufio.NewReader(src)
	flipped := false
	for {
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		body := make([]byte, int(h[3])<<8|int(h[4]))
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		select {
		case <-armed:
			if !flipped && h[0] == 23 && len(body) > 0 {
				body[len(body)/2] ^= 1
				flipped = true
			}
		default:
		}
		if _, err := dst.Write(append(h[:], body...)); err != nil {
			return
		}
	}
}

// A TLS record altered on the way (it fails authentication: bad_record_mac)
// is ErrProtocol: the stream that arrived breaks the protocol.
func TestTamperedRecordIsProtocolError(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			a, b := sharedPair(t, nil)
			appendN(t, mustWriter(t, b, "w"), 5, "b")
			armed := make(chan struct{})
			ca, cb := relay(t, kind, func(dir int, src, dst net.Conn) {
				if dir == 1 { // what b (the responder, which holds the data) sends
					tlsRecords(src, dst, armed)
					return
				}
				io.Copy(dst, src)
			})
			var once sync.Once
			oa := &ReplicateOptions{Progress: func(p ReplicateProgress) {
				if p.Phase == "exchange" {
					once.Do(func() { close(armed) })
				}
			}}
			ctx := ctxT(t)
			eb := make(chan error, 1)
			go func() { eb <- b.Replicate(ctx, cb, false, nil) }()
			err := a.Replicate(ctx, ca, true, oa)
			t.Logf("a: %v", err)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("the side that got the altered record: %v, want ErrProtocol", err)
			}
			if err := waitHonest(t, eb); !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrPeerClosed) {
				t.Fatalf("its peer: %v, want ErrProtocol (the alert) or ErrPeerClosed", err)
			}
		})
	}
}

// A connection reset during the handshake is the network: ErrPeerClosed.
func TestResetDuringHandshakeIsPeerClosed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Read(make([]byte, 1)) // the ClientHello has begun
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	err = newCore(t, nil).Replicate(ctxT(t), conn, true, nil)
	t.Logf("got %v", err)
	if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrPeerClosed", err)
	}
}

// A disk that fails during a session is ErrStorage, and the cause is
// still there for errors.Is.
func TestStorageFailureDuringSessionIsErrStorage(t *testing.T) {
	a := newCore(t, nil)
	w := mustWriter(t, a, "w")
	appendN(t, w, 5, "a")
	ms := NewMemStorage()
	b, err := New(ms, &Options{SharedKey: a.SharedKey()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.AddFeed(w.Key()); err != nil {
		t.Fatal(err)
	}
	ms.failNextWrite(syscall.ENOSPC)
	_, eb := replicatePair(t, "pipe", a, b, nil, nil)
	t.Logf("b: %v", eb)
	if !errors.Is(eb, ErrStorage) || !errors.Is(eb, syscall.ENOSPC) {
		t.Fatalf("b: %v, want ErrStorage wrapping ENOSPC", eb)
	}
	if errors.Is(eb, ErrPeerClosed) || errors.Is(eb, ErrProtocol) || errors.Is(eb, ErrVerify) {
		t.Fatalf("b: %v also matches a network or peer error", eb)
	}
}

// TestFeedFloodIsBoundedPerSession: a peer with the shared key that offers
// many new feeds gets at most MaxNewFeeds of them added per session; feeds
// the database holds do not count, and the session goes on.
func TestFeedFloodIsBoundedPerSession(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			honest := newCore(t, nil)
			var known [][]byte
			for range 3 {
				kp := mustKeyPair(t)
				if _, err := honest.AddFeed(kp.PublicKey); err != nil {
					t.Fatal(err)
				}
				known = append(known, kp.PublicKey)
			}
			var mu sync.Mutex
			var last ReplicateProgress
			opts := &ReplicateOptions{MaxNewFeeds: 10, Progress: func(p ReplicateProgress) {
				mu.Lock()
				last = p
				mu.Unlock()
			}}
			h := meetHostile(t, kind, honest, opts)
			h.drain()
			var msgs [][]byte
			for i := range uint64(50) {
				key := make([]byte, 32)
				rand.Read(key)
				if i%10 == 0 && i/10 < 3 {
					key = known[i/10]
				}
				msgs = append(msgs, feedMsg(i, key))
			}
			if err := h.send(msgs...); err != nil {
				t.Fatal(err)
			}
			h.endCleanly()
			if n := len(honest.Feeds()); n != 3+10 {
				t.Fatalf("%d feeds, want the 3 it held and 10 new", n)
			}
			mu.Lock()
			defer mu.Unlock()
			if last.FeedsNotAdded != 50-3-10 || last.Feeds != 3+10 {
				t.Fatalf("progress: %d feeds taken, %d not added; want 13, 37", last.Feeds, last.FeedsNotAdded)
			}
		})
	}
}

// Without MaxNewFeeds, DefaultMaxNewFeeds holds.
func TestFeedFloodDefaultBound(t *testing.T) {
	if testing.Short() {
		t.Skip("adds a thousand feeds")
	}
	honest := newCore(t, nil)
	h := meetHostile(t, "pipe", honest, nil)
	h.drain()
	var msgs [][]byte
	for i := range uint64(DefaultMaxNewFeeds + 20) {
		key := make([]byte, 32)
		rand.Read(key)
		msgs = append(msgs, feedMsg(i, key))
	}
	if err := h.send(msgs...); err != nil {
		t.Fatal(err)
	}
	h.endCleanly()
	if n := len(honest.Feeds()); n != DefaultMaxNewFeeds {
		t.Fatalf("%d feeds, want %d", n, DefaultMaxNewFeeds)
	}
}

// readMessages reads every message until the stream ends.
func readMessages(br *bufio.Reader) ([][]byte, error) {
	var msgs [][]byte
	for {
		msg, err := readFrame(br, maxMessage)
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, msg)
	}
}

// TestResponderShowsNoProofToAnUnprovenInitiator: a responder shows nothing
// that depends on the shared key to an initiator that has not proven it: a
// wrong proof gets a hello with no mac, no proof at all gets nothing. So a
// peer cannot test guesses of the key offline.
func TestResponderShowsNoProofToAnUnprovenInitiator(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind+"/wrong proof", func(t *testing.T) {
			honest := newCore(t, nil)
			raw, res := startHonest(t, kind, honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			wrong := bytes.Repeat([]byte{7}, 32)
			if _, err := c.Write(helloWith(t, c, true, wrong, protoMajor, protoMinor)); err != nil {
				t.Fatal(err)
			}
			msgs, err := readMessages(br)
			t.Logf("received %d messages (%v)", len(msgs), err)
			raw.Close()
			if err := waitHonest(t, res); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("the responder: %v, want ErrUnauthorized", err)
			}
			cs := c.ConnectionState()
			ekm, _ := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
			if len(msgs) != 1 || len(msgs[0]) != 1+len(helloMagic)+2+32 || msgs[0][0] != msgHello {
				t.Fatalf("received %q, want one hello", msgs)
			}
			mac := msgs[0][3+len(helloMagic):]
			if bytes.Equal(mac, helloMAC(honest.SharedKey(), ekm, false)) || !bytes.Equal(mac, make([]byte, 32)) {
				t.Fatalf("the refusal carries the mac %x, want zeros", mac)
			}
		})
		t.Run(kind+"/no proof", func(t *testing.T) {
			honest := newCore(t, nil)
			raw, res := startHonest(t, kind, honest, false, nil)
			c, br := tlsOnly(t, raw, true)
			c.CloseWrite()
			msgs, err := readMessages(br)
			raw.Close()
			if err := waitHonest(t, res); !errors.Is(err, ErrPeerClosed) {
				t.Fatalf("the responder: %v, want ErrPeerClosed", err)
			}
			if len(msgs) != 0 {
				t.Fatalf("received %q (%v), want nothing", msgs, err)
			}
		})
	}
}

// An initiator still meets a 1.0 responder, which sends its hello at
// once, before it has checked the initiator's.
func TestInitiatorMeetsA10Responder(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			honest := newCore(t, nil)
			raw, res := startHonest(t, kind, honest, true, nil)
			c, br := tlsOnly(t, raw, false)
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(helloWith(t, c, false, honest.SharedKey(), 1, 0))
				werr <- err
			}()
			msg, err := readFrame(br, 64)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			cs := c.ConnectionState()
			ekm, _ := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
			if !bytes.Equal(msg[3+len(helloMagic):helloLen], helloMAC(honest.SharedKey(), ekm, true)) {
				t.Fatal("the initiator's hello does not prove the key")
			}
			h := &hostile{t: t, raw: raw, tls: c, br: br, honest: res}
			h.endCleanly()
		})
	}
}

// Why the session looks under TLS: crypto/tls reports a close_notify and
// a connection that ends between two records alike, as io.EOF.
func TestTLSReportsGoodbyeAndHangUpAlike(t *testing.T) {
	for _, goodbye := range []bool{true, false} {
		ca, cb := connPair(t, "tcp")
		cfg, err := tlsConfig()
		if err != nil {
			t.Fatal(err)
		}
		client, server := tls.Client(ca, cfg), tls.Server(cb, cfg)
		go func() {
			defer ca.Close()
			client.Handshake()
			client.Write([]byte("x"))
			if goodbye {
				client.CloseWrite()
			}
			ca.(*net.TCPConn).CloseWrite() // a FIN, between two records
			io.Copy(io.Discard, ca)
		}()
		got, err := io.ReadAll(server)
		server.Close()
		if string(got) != "x" || err != nil {
			t.Fatalf("goodbye %v: read %q, %v; want x and io.EOF (nil from ReadAll)", goodbye, got, err)
		}
	}
}

// A live side answers a goodbye with its own: its close_notify reaches the
// peer before the connection ends.
func TestLiveSideAnswersAGoodbyeWithItsOwn(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			honest := newCore(t, nil)
			appendN(t, mustWriter(t, honest, "w"), 3, "a")
			raw, res := startHonest(t, kind, honest, false, &ReplicateOptions{Live: true})
			s := &session{core: &Core{key: honest.SharedKey()}, raw: raw, initiator: true}
			if err := s.handshake(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			h := &hostile{t: t, raw: raw, tls: s.tls, br: s.br, honest: res}
			if err := h.send(syncedMessage{}.encode(), doneMessage{}.encode()); err != nil {
				t.Fatal(err)
			}
			h.until(msgDone)
			h.drain()
			h.tls.CloseWrite()
			if err := <-h.drained; err != nil {
				t.Fatalf("the live side's stream ended with %v", err)
			}
			if s.rawEnded.Load() {
				t.Fatal("the live side closed the connection without a goodbye")
			}
			if err := h.result(); err != nil {
				t.Fatalf("the live side: %v, want nil", err)
			}
		})
	}
}

// A complete session waits for the peer's goodbye for up to the timeout;
// a context that ends meanwhile cuts the wait short, and the session is
// still complete: nil.
func TestContextEndCutsTheWaitForAGoodbye(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the goodbye's 5 s")
	}
	honest := newCore(t, nil)
	mine, theirs := connPair(t, "tcp")
	defer mine.Close()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	res := make(chan error, 1)
	go func() {
		res <- honest.Replicate(ctx, theirs, false, &ReplicateOptions{Timeout: time.Hour})
	}()
	s := &session{core: &Core{key: honest.SharedKey()}, raw: mine, initiator: true}
	if err := s.handshake(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, raw: mine, tls: s.tls, br: s.br, honest: res}
	if err := h.send(syncedMessage{}.encode(), doneMessage{}.encode()); err != nil {
		t.Fatal(err)
	}
	h.drain()
	if err := <-h.drained; err != nil { // its goodbye; this side says none
		t.Fatalf("the honest side's stream: %v", err)
	}
	cancel()
	if err := h.result(); err != nil {
		t.Fatalf("a complete session: %v, want nil", err)
	}
}

// TestCompleteSessionEndsNilHoweverTheConnectionEnds: once a non-live
// session is complete (both sides sent done), Replicate returns nil, even
// when the peer's done comes with the connection's reset, or with bytes
// that fail TLS, right behind it (a peer killed, or a path that breaks,
// just after its done): everything was exchanged and verified. Each round
// sends the done and the end in one go, so that the honest side's reader
// often takes both before its loop looks.
func TestCompleteSessionEndsNilHoweverTheConnectionEnds(t *testing.T) {
	honest := newCore(t, nil)
	appendN(t, mustWriter(t, honest, "w"), 3, "a")
	for _, end := range []string{"reset", "tls-garbage"} {
		t.Run(end, func(t *testing.T) {
			for round := range 20 {
				h := meetHostile(t, "tcp", honest, nil)
				if err := h.send(syncedMessage{}.encode()); err != nil {
					t.Fatal(err)
				}
				h.until(msgDone) // the honest side has sent its done
				done := frames(doneMessage{}.encode())
				switch end {
				case "reset":
					h.tls.Write(done)
					h.raw.(*net.TCPConn).SetLinger(0)
					h.raw.Close()
				case "tls-garbage":
					// A record of application data that fails authentication.
					h.tls.Write(done)
					h.raw.Write([]byte{23, 3, 3, 0, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32})
				}
				if err := h.result(); err != nil {
					t.Fatalf("round %d: a complete session ended with %v, want nil", round, err)
				}
				h.raw.Close()
			}
		})
	}
}
