// Package gencheck fails when the committed generated Go code
// (clients/go/gptgrpcv1) differs from what clients/gen.sh produces now.
package gencheck

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
)

const generatedDir = "clients/go/gptgrpcv1"

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "clients", "gen.sh")); err != nil {
		t.Fatalf("repository root not found from %s: %v", root, err)
	}
	return root
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files[rel], err = os.ReadFile(path)
		return err
	})
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	return files
}

func TestGeneratedGoCodeIsFresh(t *testing.T) {
	root := repoRoot(t)
	// Read the generator's inputs here so that go test's result cache is
	// invalidated when they change (files read by gen.sh are not tracked).
	readTree(t, filepath.Join(root, "proto"))
	for _, f := range []string{"clients/gen.sh", "clients/versions.env", "clients/go/go.mod"} {
		if _, err := os.ReadFile(filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "clients", "gen.sh"), "--only", "go", "--out", out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("clients/gen.sh failed (run 'make clients-install' first?): %v\n%s", err, b)
	}
	want := readTree(t, filepath.Join(out, generatedDir))
	got := readTree(t, filepath.Join(root, generatedDir))
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	stale := false
	for _, n := range names {
		w, inWant := want[n]
		g, inGot := got[n]
		switch {
		case !inGot:
			t.Errorf("%s/%s is missing", generatedDir, n)
		case !inWant:
			t.Errorf("%s/%s is not generated from proto/ any more", generatedDir, n)
		case !bytes.Equal(w, g):
			t.Errorf("%s/%s differs from the generated code", generatedDir, n)
		default:
			continue
		}
		stale = true
	}
	if stale {
		t.Fatal("generated Go code is stale: run make proto")
	}
}
