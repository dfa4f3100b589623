package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

var metricName = regexp.MustCompile(`coord_extproc_[a-z_]+`)

// unknownMetrics lists the coord_extproc_* names text uses that the
// scraped /metrics page does not export (histograms export name_bucket,
// _sum and _count).
func unknownMetrics(text, scraped string) []string {
	exported := map[string]bool{}
	for _, line := range strings.Split(scraped, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
			if len(f) > 3 && f[3] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					exported[f[2]+s] = true
				}
			}
		}
	}
	var missing []string
	for _, name := range metricName.FindAllString(text, -1) {
		if !exported[name] {
			missing = append(missing, name)
		}
	}
	return missing
}

// checkObservability: the shipped dashboard and alert rules use only
// metrics the running server exports (scraped is its /metrics page), and
// the check fails on a copy with a misspelt name.
func checkObservability(t *testing.T, scraped string) {
	t.Helper()
	for _, f := range []string{"../../deploy/observability/dashboard.json", "../../deploy/observability/alerts.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(metricName.FindAllString(string(b), -1)) < 5 {
			t.Fatalf("%s names almost no metric", f)
		}
		if missing := unknownMetrics(string(b), scraped); len(missing) > 0 {
			t.Errorf("%s uses metrics the server does not export: %v", f, missing)
		}
		broken := strings.Replace(string(b), "coord_extproc_stale_answers_total", "coord_extproc_stale_answer_total", 1)
		if broken == string(b) || len(unknownMetrics(broken, scraped)) == 0 {
			t.Errorf("%s: a misspelt metric name would pass", f)
		}
	}
}
