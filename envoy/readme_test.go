package envoy

import (
	"os"
	"strings"
	"testing"
)

// README's Envoy snippet is envoy.yaml's, line for line (indentation
// aside), and README and compose name the one pinned version.
func TestReadmeSnippetMatchesEnvoyYAML(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Adding coord-extproc to an existing Envoy")
	if !ok {
		t.Fatal("README has no Envoy section")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	snippet, _, ok := strings.Cut(rest, "```")
	if !ok || snippet == "" {
		t.Fatal("README's Envoy section has no yaml snippet")
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(file), "\n") {
		lines[strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- "))] = true
	}
	for _, l := range strings.Split(snippet, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- "))
		if l != "" && !lines[l] {
			t.Errorf("README snippet line %q is not in envoy/envoy.yaml", l)
		}
	}
	if !strings.Contains(string(readme), "Envoy v"+Version) || !strings.Contains(string(readme), "envoyproxy/envoy:v"+Version) || !strings.Contains(string(readme), "minimum supported version is "+MinVersion) {
		t.Errorf("README does not name Envoy v%s, its image and the minimum %s", Version, MinVersion)
	}
}
