//go:build !race

package kappa

const raceEnabled = false
