package hangar

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hangar-dev/hangar/client/go/internal/devserver"
)

// The committed code under client/go/gen is what scripts/gen-go makes from proto/ today.
func TestGeneratedCodeMatchesTheProtos(t *testing.T) {
	repo := devserver.RepoRoot()
	fresh := filepath.Join(t.TempDir(), "gen")
	command := exec.Command(filepath.Join(repo, "scripts", "gen-go"), fresh)
	if output, err := command.CombinedOutput(); err != nil {
		t.Fatalf("scripts/gen-go: %v\n%s", err, output)
	}
	committed := filepath.Join(repo, "client", "go", "gen")
	freshFiles, committedFiles := files(t, fresh), files(t, committed)
	var stale []string
	for name, content := range freshFiles {
		if old, ok := committedFiles[name]; !ok || !bytes.Equal(old, content) {
			stale = append(stale, name)
		}
	}
	for name := range committedFiles {
		if _, ok := freshFiles[name]; !ok {
			stale = append(stale, name+" (no longer generated)")
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Fatalf("client/go/gen is stale; run scripts/gen and commit the result: %v", stale)
	}
	if len(freshFiles) == 0 {
		t.Fatal("scripts/gen-go generated nothing")
	}
}

func files(t *testing.T, root string) map[string][]byte {
	t.Helper()
	found := map[string][]byte{}
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		content, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		relative, _ := filepath.Rel(root, path)
		found[relative] = content
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
