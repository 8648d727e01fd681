package main

import (
	"errors"
	"fmt"
	"path/filepath"

	kappa "github.com/kappa-db/kappa-go"
)

// forked counts the forks in a database's damage list.
func forked(ds []kappa.Damage) int {
	n := 0
	for _, d := range ds {
		if errors.Is(d.Err, kappa.ErrForked) {
			n++
		}
	}
	return n
}

// forkProblem describes a forked feed for verify, with what to do.
func forkProblem(core *kappa.Core, d kappa.Damage) string {
	evidence := filepath.Join(core.Dir(), fmt.Sprintf("feeds/%d/fork", d.Slot))
	return fmt.Sprintf("feed %s is forked: its writer's key signed two histories that disagree; "+
		"this database keeps the history it holds and no longer exchanges the feed; the evidence is in %s. "+
		"The key was used in two places (a copied key file, or the same key pair given to two writers): "+
		"keep writing with it in one place only, and have the others write to a new feed",
		shortKey(d.Key), filepath.FromSlash(evidence))
}
