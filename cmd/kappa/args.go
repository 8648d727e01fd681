package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// afterFlags returns the arguments that follow fl's flags in args, which
// fl has parsed. The flag package stops at the first argument that is no
// flag and takes the rest as arguments, so "kappa append v -writer w"
// would append "-writer" and "w" as values, for good: feeds cannot be
// edited. So an argument that looks like a flag ("-" followed by
// anything) after the first argument is refused, unless a "--" came
// before it. That "--" may stand before the first argument, where the flag
// package takes it, or among the arguments, where it is dropped (the
// first one only: a later "--" is an argument).
func afterFlags(fl *flag.FlagSet, args []string) ([]string, error) {
	rest := fl.Args()
	if endedByDashes(fl, args[:len(args)-len(rest)]) {
		return rest, nil
	}
	for i, a := range rest {
		if a == "--" {
			return append(rest[:i:i], rest[i+1:]...), nil
		}
		if looksLikeFlag(a) {
			return nil, usagef("%q after the argument %q looks like a flag: flags go before the arguments; "+
				"if %q is meant as an argument, put \"--\" before the arguments", a, rest[0], a)
		}
	}
	return rest, nil
}

// looksLikeFlag reports whether a would be taken for a flag before the
// arguments: "-" or "--" followed by anything ("-" alone is an argument).
func looksLikeFlag(a string) bool { return len(a) > 1 && a[0] == '-' }

// endedByDashes reports whether the flags in parsed (the arguments fl
// consumed) ended with "--", rather than with a flag's value "--", as in
// "-writer --". It walks them as the flag package does.
func endedByDashes(fl *flag.FlagSet, parsed []string) bool {
	for i := 0; i < len(parsed); i++ {
		s := parsed[i]
		if s == "--" {
			return true // the flag package stops here
		}
		name := strings.TrimPrefix(strings.TrimPrefix(s, "-"), "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fl.Lookup(name)
		if f == nil {
			continue // Parse succeeded, so this does not happen
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		i++ // the flag's value
	}
	return false
}

// checkNotFile returns an error if path exists and is no directory: a
// database is a directory, and -db names it, not a file in it. A path that
// does not exist passes (init creates it; other commands then say there is
// no database).
func checkNotFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() {
		return nil
	}
	msg := fmt.Sprintf("%s is a file, not a database directory: -db wants the directory that holds the database", path)
	if parent := filepath.Dir(path); filepath.Base(path) == dbFile && checkDB(parent) == nil {
		msg += fmt.Sprintf(" (-db %s)", parent)
	}
	return errors.New(msg)
}
