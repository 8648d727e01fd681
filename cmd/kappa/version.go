package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	kappa "github.com/kappa-db/kappa-go"
)

// version

var versionCommand = &command{
	name:    "version",
	args:    "",
	summary: "print the module, format and protocol versions",
	help: `
Version prints the version of the module the command was built from, as
the Go toolchain recorded it: for a build from a clone, a pseudo-version
(v0.0.0-DATE-COMMIT), or "(devel)" when version control stamping is off;
with the commit when the build recorded one. Then the version of the on-disk format
(doc/FORMAT.md) the command reads and writes, the version of the
replication protocol (doc/PROTOCOL.md) it speaks, and the Go version.`,
	run: func(e *env, c *command, args []string) error {
		if err := e.parseNoArgs(c, e.flags(c, false), args); err != nil {
			return err
		}
		module, version := "github.com/kappa-db/kappa-go", "unknown"
		var commit string
		if bi, ok := debug.ReadBuildInfo(); ok {
			if bi.Main.Path != "" {
				module = bi.Main.Path
			}
			if bi.Main.Version != "" {
				version = bi.Main.Version
			}
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if commit != "" && modified {
				commit += " (with uncommitted changes)"
			}
		}
		fmt.Fprintf(e.stdout, "kappa %s %s\n", module, version)
		if commit != "" {
			fmt.Fprintf(e.stdout, "commit %s\n", commit)
		}
		fmt.Fprintf(e.stdout, "format version %d\nprotocol version %d.%d\n%s\n",
			kappa.FormatVersion, kappa.ProtocolMajor, kappa.ProtocolMinor, runtime.Version())
		return nil
	},
}
