package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// status

var statusCommand = &command{
	name:     "status",
	args:     "[-db DIR]",
	summary:  "list a running serve's peers and their sync state",
	viaServe: true,
	help: `
Status asks the "kappa serve" running on the database (through its control
socket, see kappa serve -h) for its state: the serve's process id and
address, whether LAN discovery runs, and one line per peer: its address,
state (connecting, handshaking, syncing, synced, backing off, failed),
where it came from (static: -peer; lan: found on the network; inbound: it
dialled), its node id, how many entries each side lacks while in session
(behind: this node lacks; ahead: the peer lacks), the entries and bytes
received and sent, when it is dialled again, and the last error.

Without a serve running, status prints "not serving" and exits 0. If the
control socket is there but does not answer (a serve takes commands only
from its own user, which root can reach and be refused by; or one that is
stopping), status says so and exits 1. (Another user who is not root is
refused the database directory itself.)`,
	run: func(e *env, c *command, args []string) error {
		if err := e.parseNoArgs(c, e.flags(c, true), args); err != nil {
			return err
		}
		if e.served == nil {
			if err := checkDB(e.db); err != nil {
				return err
			}
			conn, pid, err := dialControl(e.db)
			switch {
			case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
				// No socket, or one a serve left behind.
				fmt.Fprintln(e.stdout, "not serving")
				return nil
			case err != nil:
				return fmt.Errorf("the control socket is there but did not answer "+
					"(a serve takes commands only from its own user; one that is stopping answers none): %w", err)
			}
			return &servedError{conn: conn, pid: pid}
		}
		st := e.served.status()
		listening := "not listening"
		if st.listen != "" {
			listening = "listening on " + st.listen
		}
		fmt.Fprintf(e.stdout, "serving: process %d, %s\n", os.Getpid(), listening)
		fmt.Fprintf(e.stdout, "LAN discovery: %s\n", st.lan)
		peers := e.served.swarm.Peers()
		if len(peers) == 0 {
			fmt.Fprintln(e.stdout, "no peers")
		}
		for _, p := range peers {
			fmt.Fprintf(e.stdout, "peer %s\n", p)
		}
		return nil
	},
}
