//go:build race

package kappa

const raceEnabled = true
