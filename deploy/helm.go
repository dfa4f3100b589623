package deploy

import (
	"fmt"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
)

// Release names one rendering of a chart: what `helm template NAME DIR
// --namespace NS --values …` would be given.
type Release struct {
	Name, Namespace string
	Values          map[string]any
}

// RenderChart renders the chart in dir with Helm's own loader, values
// (schema included) and template engine, strictly (a template reading a
// value that does not exist fails), after Helm's linter found no error;
// it returns the manifests as one YAML stream, templates in name order.
func RenderChart(dir string, rel Release) ([]byte, error) {
	linted := lint.RunAll(dir, rel.Values, rel.Namespace)
	var lintErrs []string
	for _, m := range linted.Messages {
		if m.Severity >= support.ErrorSev {
			lintErrs = append(lintErrs, m.Error())
		}
	}
	if len(lintErrs) > 0 {
		return nil, fmt.Errorf("helm lint %s: %s", dir, strings.Join(lintErrs, "; "))
	}
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	vals, err := util.ToRenderValues(ch, rel.Values, common.ReleaseOptions{Name: rel.Name, Namespace: rel.Namespace, IsInstall: true}, nil)
	if err != nil {
		return nil, fmt.Errorf("chart %s values: %w", dir, err)
	}
	out, err := engine.Engine{Strict: true}.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", dir, err)
	}
	names := make([]string, 0, len(out))
	for name := range out {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		if strings.TrimSpace(out[name]) == "" {
			continue
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, out[name])
	}
	return []byte(b.String()), nil
}
