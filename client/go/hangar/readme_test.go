package hangar

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hangar-dev/hangar/client/go/internal/devserver"
)

// The program in client/go/README.md runs as written against a live dev server (only the
// controller URL is changed to the test server's).
func TestTheReadmeProgramRunsAgainstDev(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(devserver.RepoRoot(), "client", "go", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "```go\n")
	if start < 0 {
		t.Fatal("no ```go block in the README")
	}
	program := text[start+len("```go\n"):]
	program = program[:strings.Index(program, "```")]
	if !strings.Contains(program, `"http://127.0.0.1:7070"`) {
		t.Fatal("the README program no longer dials http://127.0.0.1:7070; update this test")
	}
	program = strings.Replace(program, `"http://127.0.0.1:7070"`, `"`+dev.ControllerURL+`"`, 1)
	main := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(main, []byte(program), 0o600); err != nil {
		t.Fatal(err)
	}
	// `go run` inherits scripts/go's environment (GOPATH mode on Debian's packages).
	output, err := exec.Command("go", "run", main).CombinedOutput()
	if err != nil {
		t.Fatalf("go run the README program: %v\n%s", err, output)
	}
	if !strings.Contains(string(output), "dev-drone READY") || !strings.Contains(string(output), "bk-") {
		t.Fatalf("the README program printed:\n%s", output)
	}
}
