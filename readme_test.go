package kappa

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeQuickStart builds the README's quick start as a program of its
// own, against this package, and runs it twice: it must compile as pasted
// and print what the README says.
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Quick start")
	if !ok {
		t.Fatal("README has no quick start")
	}
	_, rest, ok = strings.Cut(rest, "```go\n")
	if !ok {
		t.Fatal("the quick start has no Go block")
	}
	program, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the quick start's Go block does not end")
	}
	repo, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module quickstart\n\ngo 1.25\n\nrequire github.com/kappa-db/kappa-go v0.0.0\n\nreplace github.com/kappa-db/kappa-go => " + repo + "\n"
	for name, content := range map[string]string{"go.mod": gomod, "main.go": program} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goTool, err := exec.LookPath("go") // the go command that runs these tests
	if err != nil {
		t.Skipf("no go command to build the quick start with: %v", err)
	}
	build := exec.CommandContext(ctxT(t), goTool, "build", "-o", "quickstart", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOPROXY=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the quick start does not compile: %v\n%s", err, out)
	}
	for _, want := range []string{"sum: 3\n", "sum: 6\n"} {
		run := exec.CommandContext(ctxT(t), filepath.Join(dir, "quickstart"))
		run.Dir = dir
		out, err := run.CombinedOutput()
		if err != nil || string(out) != want {
			t.Fatalf("quick start printed %q, %v; want %q", out, err, want)
		}
	}
}
