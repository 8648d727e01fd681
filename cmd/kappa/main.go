// Command kappa works with kappa databases from the shell: create one or
// join one, append values, print the log, replicate with peers over TCP,
// and check that nothing stored was damaged.
//
// Usage:
//
//	kappa [-db DIR] COMMAND [flags] [arguments]
//
// The commands:
//
//	demo     two databases, two writers, replication over TCP, verification
//	init     create a database, or join one with -key
//	key      print the shared key to hand to a peer
//	append   append values (arguments, or lines of standard input)
//	log      print the entries of every feed (-json, -follow)
//	feeds    list the feeds
//	serve    run the database as a swarm node until interrupted
//	status   list a running serve's peers and their sync state
//	sync     replicate once with a peer
//	verify   re-hash every entry and check every signature
//	stat     count feeds, entries and bytes on disk
//	version  print the module, format and protocol versions
//
// Every command but demo and version works on the database in ./kappa.db, or the one
// named by -db (before the command or after it). Only init creates one.
// "kappa COMMAND -h" describes a command. Flags go before a command's
// arguments: an argument that starts with "-" after the first one is
// refused unless a "--" comes before it, so that a flag put after a value
// ("kappa append v -writer w") is not taken as a value.
//
// A database is locked while a command has it open, and "kappa serve"
// keeps it open. While a serve runs, append, log (-json, -follow; not
// -peer), feeds, stat, key and status on the same database run inside it:
// they find the database locked, connect to the unix socket DIR/control
// (mode 0600, created by serve, removed when it stops) and print what they
// would print on their own, with the same exit status (control.go has the
// protocol). verify, sync and a second serve fail, saying the database is
// being served by process N. A socket left by a serve that was killed is
// ignored by the commands (they only try it when the database is locked)
// and replaced by the next serve. A socket address holds a path of at
// most 103 bytes: on Linux a longer DIR/control is bound and dialled
// through /proc/self/fd; elsewhere serve fails, saying so, if DIR/control
// (tried as given, then absolute) or DIR/.control-N/s, where it is first
// created, is longer.
//
// Serve runs a swarm (Core.Swarm): it listens (-listen, default :7654),
// dials its -peer addresses and, with -lan, the peers it finds on the
// local network, keeps one live session with each peer and dials again,
// with backoff, when one ends. Sessions run over TCP, each authenticated
// with the database's shared key (see Core.Replicate); the dialling side
// sends nothing before the session. A sync's session is not live: it ends
// once both sides hold what the other had, and the serve's live side takes
// that end as a goodbye. "kappa log -follow -peer ADDR" runs a swarm of
// that one peer: it dials the peer again whenever its session ends.
//
// Errors are printed as one line on standard error, and the exit status is
// 1 (2 for a bad command line).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// defaultDB is the database directory when -db is not given.
const defaultDB = "kappa.db"

// env is what a command runs with: a context, the standard files and the
// -db given before the command.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	db     string

	cmd    *command       // the command running
	served *controlServer // set in a serve running a command for a client (control.go)
}

// A command is one verb of the tool. Its run function defines its flags
// with e.flags and parses them with e.parse, which handles -h.
type command struct {
	name    string
	args    string // the synopsis after the name
	summary string
	help    string // what -h prints after the synopsis
	run     func(e *env, c *command, args []string) error

	// viaServe: while a serve holds the database, the command runs
	// inside it, through the control socket (control.go).
	viaServe bool
}

// commands lists the verbs in the order "kappa -h" shows them.
var commands = []*command{
	demoCommand, initCommand, keyCommand, appendCommand, logCommand,
	feedsCommand, serveCommand, statusCommand, syncCommand, verifyCommand,
	statCommand, versionCommand,
}

// untilInterrupted returns e.ctx, ended by SIGINT or SIGTERM, for commands
// that run until interrupted and then shut down in order (serve, sync,
// log -follow, demo, append of standard input). The first signal ends the
// context; a second one kills the process as usual. Other commands leave the signals alone: what
// they write is durable or not, whenever they are stopped. A command run
// inside a serve leaves them to the serve: its client's interrupt, and the
// serve's stop, end e.ctx.
func (e *env) untilInterrupted() (context.Context, context.CancelFunc) {
	if e.served != nil {
		return context.WithCancel(e.ctx)
	}
	ctx, stop := signal.NotifyContext(e.ctx, os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}

// usageError is a bad command line: it exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, db: defaultDB}
	return e.main(args)
}

// main runs the command line args in e and returns the exit status.
func (e *env) main(args []string) int {
	err := e.dispatch(args)
	var ex *exitStatus
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ex):
		return ex.code // what a serve's run of the command said
	}
	fmt.Fprintln(e.stderr, errorLine(err))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// dispatch parses the global flags (-db) and runs the command args name,
// with "kappa help COMMAND" as "kappa COMMAND -h".
func (e *env) dispatch(args []string) error {
	top := flag.NewFlagSet("kappa", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	dst := &e.db
	if e.served != nil {
		dst = new(string) // the serve's own database (see flags)
	}
	top.StringVar(dst, "db", e.db, "")
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.usage()
			return err
		}
		return usagef("%v (see kappa -h)", err)
	}
	if top.NArg() == 0 {
		return usagef("no command given (see kappa -h)")
	}
	name, args := top.Arg(0), top.Args()[1:]
	if name == "help" {
		if len(args) == 0 || args[0] == "help" { // kappa help help
			e.usage()
			return nil
		}
		name, args = args[0], []string{"-h"} // kappa help COMMAND
	}
	for _, c := range commands {
		if c.name == name {
			return e.runCommand(c, args)
		}
	}
	return usagef("unknown command %q (see kappa -h)", name)
}

func (e *env) runCommand(c *command, args []string) error {
	e.cmd = c
	err := c.run(e, c, args)
	var se *servedError
	if errors.As(err, &se) {
		return e.runRemote(se.conn, c, args)
	}
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return usagef("%s: %s (see kappa %s -h)", c.name, ue.msg, c.name)
	}
	return fmt.Errorf("%s: %w", c.name, err)
}

// flags returns an empty flag set for c; withDB adds -db, which defaults to
// the -db given before the command.
func (e *env) flags(c *command, withDB bool) *flag.FlagSet {
	fl := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	if withDB {
		dst := &e.db
		if e.served != nil {
			// A serve runs the command on its own database, whatever
			// path the client named it by.
			dst = new(string)
		}
		fl.StringVar(dst, "db", e.db, "the database `DIR`ectory")
	}
	return fl
}

// parse parses c's flags and returns the arguments after them. For -h it
// prints c's usage and returns flag.ErrHelp. An argument that looks like a
// flag after the first argument is refused (see afterFlags).
func (e *env) parse(c *command, fl *flag.FlagSet, args []string) ([]string, error) {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.commandUsage(c, fl)
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	return afterFlags(fl, args)
}

func (e *env) usage() {
	fmt.Fprintf(e.stdout, "Usage: kappa [-db DIR] COMMAND [flags] [arguments]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(e.stdout, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(e.stdout, "\nThe database is %s unless -db DIR says otherwise.\n", defaultDB)
	fmt.Fprintf(e.stdout, "Run \"kappa COMMAND -h\" for a command's flags.\n")
}

func (e *env) commandUsage(c *command, fl *flag.FlagSet) {
	fmt.Fprintf(e.stdout, "Usage: %s\n\n%s\n", strings.TrimSpace("kappa "+c.name+" "+c.args), strings.TrimSpace(c.help))
	n := 0
	fl.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintf(e.stdout, "\nFlags:\n")
	fl.SetOutput(e.stdout)
	fl.PrintDefaults()
	fl.SetOutput(io.Discard)
}

// errorLine formats err as the one line the tool prints for it.
func errorLine(err error) string { return "kappa: " + cleanMsg(err) }

// cleanMsg returns err's message on one line, without the "kappa: " that
// the package's errors start with wherever they are wrapped: the tool
// prefixes its lines with it once.
func cleanMsg(err error) string {
	msg := strings.NewReplacer("\r\n", "; ", "\n", "; ", "\r", " ").Replace(err.Error())
	msg = strings.NewReplacer(": kappa: ", ": ", "; kappa: ", "; ").Replace(msg)
	return strings.TrimSpace(strings.TrimPrefix(msg, "kappa: "))
}
