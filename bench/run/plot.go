package main

import (
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plot draws p50 and p99 latency against offered load for the ceiling
// and the cached scenario.
func (r *report) plot(path string) error {
	p := plot.New()
	p.Title.Text = "ext_proc latency against offered load (open loop)"
	p.X.Label.Text = "offered load (requests/s)"
	p.Y.Label.Text = "latency (µs)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	styles := map[string]color.Color{"1-ceiling": color.RGBA{R: 120, G: 120, B: 120, A: 255}, "2-cached": color.RGBA{R: 20, G: 100, B: 200, A: 255}}
	for _, name := range []string{"1-ceiling", "2-cached"} {
		for _, q := range []string{"p50", "p99"} {
			var pts plotter.XYs
			for _, s := range r.Sweep {
				if s.Scenario == name {
					pts = append(pts, plotter.XY{X: s.Offered, Y: s.Micros[q]})
				}
			}
			if len(pts) == 0 {
				continue
			}
			l, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			l.Color, sc.Color = styles[name], styles[name]
			if q == "p99" {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				sc.Shape = draw.TriangleGlyph{}
			}
			p.Add(l, sc)
			p.Legend.Add(name+" "+q, l, sc)
		}
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
