package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	kappa "github.com/kappa-db/kappa-go"
)

// The control socket. While "kappa serve" holds a database, the commands
// that work beside it (append, log, feeds, stat, key, status) run inside
// the serving process: a command that finds the database locked dials the
// unix socket DIR/control, and the serve runs the same command code on
// its open database, passing the client's standard input, output and
// error through the socket and sending back the exit status. So the
// output is the same as when the command opens the database itself.
//
// The socket is created with mode 0600 (bound inside a new 0700 directory
// in DIR, then renamed into place), in the database directory, which is
// 0700 too; serve removes it when it stops. A socket left behind by a
// serve that was killed is replaced by the next serve; a command ignores
// it: it only dials the socket when the database is locked, and if no
// serve answers there it fails with "database is locked" as before.
//
// The protocol: frames of a type byte, a 4-byte big-endian payload length
// (at most maxFrame) and the payload. The serve speaks first:
//
//	'h' hello: the serve's process id, in decimal
//
// then the client sends one request and, as the serve asks, its input:
//
//	'r' request: a JSON array of strings: the command's name, then its
//	    arguments (flags included; -db is ignored: the serve's own
//	    database is used)
//	'i' standard input: the next bytes, at most as many as asked for
//	'z' standard input ended
//	'c' interrupt: the client got SIGINT or SIGTERM; the command stops
//	    as it would on that signal (log -follow ends, exit status 0)
//
// and the serve sends the command's output and its end:
//
//	'n' need input: 4-byte big-endian count, the most the command reads
//	'o' standard output bytes
//	'e' standard error bytes
//	'x' exit status: one byte; the serve then closes the connection
//
// A client that hangs up ends the command as 'c' does. A serve that stops
// ends the commands it runs as an interrupt would, and sends their exit
// status before it closes.

// controlName is the control socket's name in the database directory.
const controlName = "control"

// maxSocketPath is the longest socket path used: sun_path holds 104 bytes
// on the BSDs and macOS (108 on Linux), its terminating NUL included.
const maxSocketPath = 103

// maxFrame bounds a frame's payload.
const maxFrame = 1 << 20

// Frame types (see above).
const (
	frameHello     = 'h'
	frameRequest   = 'r'
	frameInput     = 'i'
	frameInputEnd  = 'z'
	frameInterrupt = 'c'
	frameNeedInput = 'n'
	frameStdout    = 'o'
	frameStderr    = 'e'
	frameExit      = 'x'
)

// socketAddr returns the address to bind or dial for the socket name in
// dir: the path as given if it fits a socket address, else the absolute
// one, else (on Linux) the path through /proc/self/fd of dir opened; call
// release once bound or dialled. It fails if none fits.
func socketAddr(dir, name string) (addr string, release func(), err error) {
	p := filepath.Join(dir, name)
	if len(p) <= maxSocketPath {
		return p, func() {}, nil
	}
	abs, err := filepath.Abs(p)
	if err == nil && len(abs) <= maxSocketPath {
		return abs, func() {}, nil
	}
	if short, release, ok := dirByDescriptor(dir); ok {
		if q := filepath.Join(short, name); len(q) <= maxSocketPath {
			return q, release, nil
		}
		release()
	}
	return "", nil, fmt.Errorf("the control socket's path %s is %d bytes, past the %d a unix socket address holds: "+
		"serve the database from a shorter path (or run serve in a directory close to it, with a relative -db)",
		p, len(p), maxSocketPath)
}

// readFrame reads one frame from r.
func readFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("control frame of %d bytes, past the %d allowed", n, maxFrame)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return h[0], payload, nil
}

// frameWriter writes frames from many goroutines.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) write(typ byte, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for {
		n := min(len(payload), maxFrame)
		var h [5]byte
		h[0] = typ
		binary.BigEndian.PutUint32(h[1:], uint32(n))
		if _, err := fw.w.Write(append(h[:], payload[:n]...)); err != nil {
			return err
		}
		payload = payload[n:]
		if len(payload) == 0 {
			return nil
		}
	}
}

// frameStream is an io.Writer that sends what is written as frames of typ.
type frameStream struct {
	fw  *frameWriter
	typ byte
}

func (s frameStream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.fw.write(s.typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// decodeRequest decodes a request's payload: a command name and its
// arguments.
func decodeRequest(payload []byte) ([]string, error) {
	var args []string
	if err := json.Unmarshal(payload, &args); err != nil {
		return nil, fmt.Errorf("control request: %w", err)
	}
	if len(args) == 0 {
		return nil, errors.New("control request: no command")
	}
	return args, nil
}

// The serving side.

// controlServer runs commands for clients of the control socket of a
// serve's database.
type controlServer struct {
	core   *kappa.Core
	swarm  *kappa.Swarm
	db     string // the database directory, as serve was given it
	path   string // the socket's path
	ln     *net.UnixListener
	status func() serveStatus // what status prints of the serve itself

	ctx    context.Context // ended when serve stops
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// serveStatus is what "kappa status" says of the serve beside its peers.
type serveStatus struct {
	listen string // the address it listens on
	lan    string // "on", or "off" with why
}

// listenControl creates dir's control socket, with mode 0600 from the
// start: it is bound inside a new directory that only this user can enter
// and renamed into place, replacing a socket left by a serve that was
// killed. Call it with the database locked.
func listenControl(dir string) (*net.UnixListener, string, error) {
	// (Checked first, so that a path too long fails before anything is
	// created.)
	_, release, err := socketAddr(dir, controlName)
	if err != nil {
		return nil, "", err
	}
	release()
	path := filepath.Join(dir, controlName)
	tmp, err := os.MkdirTemp(dir, ".control-") // mode 0700
	if err != nil {
		return nil, "", fmt.Errorf("control socket: %w", err)
	}
	defer os.Remove(tmp)
	bound := filepath.Join(tmp, "s")
	addr, release, err := socketAddr(tmp, "s")
	if err != nil {
		return nil, "", err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	release()
	if err != nil {
		return nil, "", fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // it is renamed: serve removes it by its new name
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		os.Remove(bound)
		return nil, "", fmt.Errorf("control socket: %w", err)
	}
	if err := os.Rename(bound, path); err != nil {
		ln.Close()
		os.Remove(bound)
		return nil, "", fmt.Errorf("control socket: %w", err)
	}
	return ln, path, nil
}

// startControl starts serving commands on dir's control socket.
func startControl(ctx context.Context, core *kappa.Core, sw *kappa.Swarm, dir string, status func() serveStatus) (*controlServer, error) {
	ln, path, err := listenControl(dir)
	if err != nil {
		return nil, err
	}
	cs := &controlServer{core: core, swarm: sw, db: dir, path: path, ln: ln, status: status}
	cs.ctx, cs.cancel = context.WithCancel(ctx)
	cs.wg.Add(1)
	go func() { defer cs.wg.Done(); cs.acceptLoop() }()
	return cs, nil
}

func (cs *controlServer) acceptLoop() {
	stop := context.AfterFunc(cs.ctx, func() { cs.ln.Close() })
	defer stop()
	for delay := time.Duration(0); ; {
		conn, err := cs.ln.Accept()
		if err != nil {
			if cs.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-cs.ctx.Done():
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		cs.wg.Add(1)
		go func() { defer cs.wg.Done(); cs.handle(conn) }()
	}
}

// close stops accepting, ends the commands running (as an interrupt
// would), waits for them and removes the socket.
func (cs *controlServer) close() {
	cs.cancel()
	cs.ln.Close()
	cs.wg.Wait()
	os.Remove(cs.path)
}

// handle runs one client's command.
func (cs *controlServer) handle(conn net.Conn) {
	defer conn.Close()
	if !peerIsUs(conn) {
		return
	}
	fw := &frameWriter{w: conn}
	if fw.write(frameHello, []byte(strconv.Itoa(os.Getpid()))) != nil {
		return
	}
	br := bufio.NewReader(conn)
	typ, payload, err := readFrame(br)
	if err != nil || typ != frameRequest {
		return
	}
	ctx, cancel := context.WithCancel(cs.ctx)
	defer cancel()
	in := &remoteStdin{fw: fw, ctx: ctx, ch: make(chan []byte)}
	var clientEnded atomic.Bool // interrupted, or hung up
	go func() {
		// The client's input and interrupt; a hang-up ends the command.
		defer cancel()
		for {
			typ, payload, err := readFrame(br)
			if err != nil {
				clientEnded.Store(true)
				return
			}
			switch typ {
			case frameInput, frameInputEnd:
				if typ == frameInputEnd {
					payload = nil
				}
				select {
				case in.ch <- payload:
				case <-ctx.Done():
					return
				}
			case frameInterrupt:
				clientEnded.Store(true)
				return
			}
		}
	}()
	e := &env{ctx: ctx, stdin: in, stdout: frameStream{fw, frameStdout}, stderr: frameStream{fw, frameStderr}, db: cs.db, served: cs}
	code := 1
	if args, err := decodeRequest(payload); err != nil {
		fmt.Fprintln(e.stderr, errorLine(err))
	} else {
		code = runForClient(e, args)
	}
	if cs.ctx.Err() != nil && !clientEnded.Load() {
		// The serve's stop ended the command, as an interrupt would
		// (a follow exits 0), not its user: say so.
		fmt.Fprintf(e.stderr, "kappa: the serve (process %d) stopped, and ended the command\n", os.Getpid())
	}
	fw.write(frameExit, []byte{byte(code)})
}

// runForClient runs a client's command line args (a command's name, then
// its arguments) in e, if the command runs through a serve, and returns
// its exit status. It is set in init: commands refers to serve, which
// refers to it.
var runForClient func(e *env, args []string) int

func init() {
	runForClient = func(e *env, args []string) int {
		for _, c := range commands {
			if c.name == args[0] && c.viaServe {
				return e.main(args)
			}
		}
		fmt.Fprintln(e.stderr, errorLine(fmt.Errorf("%q does not run through a serve", args[0])))
		return 2
	}
}

// remoteStdin is a command's standard input read from its client: each
// Read asks the client for bytes.
type remoteStdin struct {
	fw  *frameWriter
	ctx context.Context
	ch  chan []byte // what the client sent; nil: the input ended
	buf []byte
	eof bool
}

func (r *remoteStdin) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(r.buf) == 0 && !r.eof {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(min(len(p), 64<<10)))
		if err := r.fw.write(frameNeedInput, n[:]); err != nil {
			return 0, err
		}
		select {
		case b := <-r.ch:
			r.buf, r.eof = b, b == nil
		case <-r.ctx.Done():
			return 0, errInterrupted
		}
	}
	if len(r.buf) == 0 && r.eof {
		return 0, io.EOF
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// servedCore returns the serve's open database when e runs a command for
// a client of the control socket, nil otherwise.
func (e *env) servedCore() *kappa.Core {
	if e.served == nil {
		return nil
	}
	return e.served.core
}

// closeDB closes core, unless it is a serve's, which stays open.
func (e *env) closeDB(core *kappa.Core) error {
	if e.served != nil && core == e.served.core {
		return nil
	}
	return core.Close()
}

// The client side.

// servedError says that a serve holds the database and answers on its
// control socket, conn: the command runs there (runRemote).
type servedError struct {
	conn net.Conn
	pid  int
}

func (e *servedError) Error() string {
	return fmt.Sprintf("the database is being served by process %d", e.pid)
}

// exitStatus is the exit status of a command a serve ran.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// servedOr is what a command does with locked, the error opening a
// locked database: if a serve answers on the control socket, a command
// that runs through it gets a servedError to do so, and another command
// an error saying the database is being served; otherwise locked.
func (e *env) servedOr(locked error) error {
	conn, pid, err := dialControl(e.db)
	if err != nil {
		return locked
	}
	if e.cmd != nil && e.cmd.viaServe {
		return &servedError{conn: conn, pid: pid}
	}
	conn.Close()
	return fmt.Errorf("the database is being served by process %d (kappa serve); stop it first", pid)
}

// dialControl dials dir's control socket and reads the serve's hello.
func dialControl(dir string) (net.Conn, int, error) {
	path := filepath.Join(dir, controlName)
	addr, release, err := socketAddr(dir, controlName)
	if err != nil {
		return nil, 0, err
	}
	conn, err := net.DialTimeout("unix", addr, 30*time.Second)
	release()
	if err != nil {
		return nil, 0, err
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	typ, payload, err := readFrame(conn)
	conn.SetReadDeadline(time.Time{})
	if err == nil && typ != frameHello {
		err = errors.New("no hello")
	}
	var pid int
	if err == nil {
		pid, err = strconv.Atoi(string(payload))
	}
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("control socket %s: %w", path, err)
	}
	return conn, pid, nil
}

// runRemote runs c with args in the serve at the other end of conn,
// passing standard input, output and error, and returns its exit status
// as an exitStatus (nil for 0). The first SIGINT or SIGTERM is passed on
// as an interrupt; a second one kills the process as usual.
func (e *env) runRemote(conn net.Conn, c *command, args []string) error {
	defer conn.Close()
	req, err := json.Marshal(append([]string{c.name}, args...))
	if err != nil {
		return err
	}
	fw := &frameWriter{w: conn}
	if err := fw.write(frameRequest, req); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-sigs:
			signal.Stop(sigs) // a second signal kills, as usual
			fw.write(frameInterrupt, nil)
		case <-done:
		}
	}()
	br := bufio.NewReader(conn)
	for {
		typ, payload, err := readFrame(br)
		if err != nil {
			return errors.New("the serving process went away before the command ended")
		}
		switch typ {
		case frameStdout:
			e.stdout.Write(payload)
		case frameStderr:
			e.stderr.Write(payload)
		case frameNeedInput:
			if len(payload) != 4 {
				return errors.New("control socket: bad input request")
			}
			n := min(binary.BigEndian.Uint32(payload), 64<<10)
			go func() {
				buf := make([]byte, max(n, 1))
				k, err := e.stdin.Read(buf)
				if k > 0 {
					fw.write(frameInput, buf[:k])
				} else if err != nil {
					fw.write(frameInputEnd, nil)
				} else {
					fw.write(frameInput, nil)
				}
			}()
		case frameExit:
			if len(payload) != 1 {
				return errors.New("control socket: bad exit status")
			}
			if payload[0] == 0 {
				return nil
			}
			return &exitStatus{int(payload[0])}
		}
	}
}
