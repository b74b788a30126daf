// dashcheck parses Grafana dashboard JSON files strictly with the Grafana
// Foundation SDK's types (unknown fields and wrong types are errors), runs
// its Validate, and requires every panel query to be a Prometheus query with
// an expression. Used by scripts/check-deploy.sh:
//
//	go run . ../../observability/grafana/dashboards/*.json
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

// failure is err unless it is an empty cog.BuildErrors: the SDK's
// generated code returns its (nil) error list typed, which is a non-nil
// error value holding no error.
func failure(err error) error {
	var list cog.BuildErrors
	if errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var d dashboard.Dashboard
	if err := failure(d.UnmarshalJSONStrict(raw)); err != nil {
		return fmt.Errorf("strict parse: %w", err)
	}
	if err := failure(d.Validate()); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	if d.Uid == nil || d.Title == nil {
		return fmt.Errorf("a dashboard needs a uid and a title")
	}
	if len(d.Panels) != 0 && len(d.Panels) != countPanels(raw) {
		return fmt.Errorf("panels lost in parsing")
	}
	if countPanels(raw) == 0 {
		return fmt.Errorf("no panels")
	}
	// The SDK's PanelOrRowPanel drops a panel whose strict parse returned
	// that empty error list, so each panel is parsed again on its own.
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	queries := 0
	for i, rawPanel := range doc.Panels {
		var p dashboard.Panel
		if err := failure(p.UnmarshalJSONStrict(rawPanel)); err != nil {
			return fmt.Errorf("panel %d: strict parse: %w", i, err)
		}
		if err := failure(p.Validate()); err != nil {
			return fmt.Errorf("panel %d: validate: %w", i, err)
		}
		if p.Type == "row" {
			return fmt.Errorf("panel %d: only plain panels are expected, not rows", i)
		}
		title := ""
		if p.Title != nil {
			title = *p.Title
		}
		// Targets likewise (the SDK drops them for the same reason): each
		// one strictly as a Prometheus query.
		var panelDoc struct {
			Targets []json.RawMessage `json:"targets"`
		}
		if err := json.Unmarshal(rawPanel, &panelDoc); err != nil {
			return err
		}
		if len(panelDoc.Targets) == 0 {
			return fmt.Errorf("panel %q has no query", title)
		}
		for j, rawTarget := range panelDoc.Targets {
			var q prometheus.Dataquery
			if err := failure(q.UnmarshalJSONStrict(rawTarget)); err != nil {
				return fmt.Errorf("panel %q, query %d: strict parse: %w", title, j, err)
			}
			if err := failure(q.Validate()); err != nil {
				return fmt.Errorf("panel %q, query %d: validate: %w", title, j, err)
			}
			if q.Datasource == nil || q.Datasource.Type == nil || *q.Datasource.Type != "prometheus" {
				return fmt.Errorf("panel %q, query %d: not a Prometheus query", title, j)
			}
			if q.Expr == "" {
				return fmt.Errorf("panel %q, query %d: empty expression", title, j)
			}
			queries++
		}
	}
	fmt.Printf("dashcheck: %s: %q, %d panels, %d queries\n", path, *d.Title, len(doc.Panels), queries)
	return nil
}

func countPanels(raw []byte) int {
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	_ = json.Unmarshal(raw, &doc)
	return len(doc.Panels)
}

func main() {
	plugins.RegisterDefaultPlugins()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck FILE.json...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "dashcheck: %s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
