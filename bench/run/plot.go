package main

import (
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
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

// plotScale draws each scale curve as a row: CPU per decision (coord-extproc
// and Valkey) on the left, RSS and Go heap on the right.
func plotScale(path string, curves []*scaleCurve) error {
	grey, blue, red := color.RGBA{R: 120, G: 120, B: 120, A: 255}, color.RGBA{R: 20, G: 100, B: 200, A: 255}, color.RGBA{R: 200, G: 60, B: 40, A: 255}
	rows := make([][]*plot.Plot, len(curves))
	for i, c := range curves {
		cpu, mem := plot.New(), plot.New()
		cpu.Title.Text, mem.Title.Text = "CPU per decision against "+c.Name, "memory against "+c.Name
		cpu.Y.Label.Text, mem.Y.Label.Text = "µs per decision", "MiB per replica"
		for _, p := range []*plot.Plot{cpu, mem} {
			p.X.Label.Text = c.X
			if c.Name != "replicas" {
				p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
			}
			p.Y.Min = 0
			p.Legend.Top, p.Legend.Left = true, true
		}
		series := []struct {
			p     *plot.Plot
			name  string
			color color.Color
			y     func(scalePoint) float64
		}{
			{cpu, "coord-extproc", blue, func(p scalePoint) float64 { return p.CPUMicros }},
			{cpu, "valkey-server", red, func(p scalePoint) float64 { return p.ValkeyCPUMicros }},
			{mem, "RSS", blue, func(p scalePoint) float64 { return p.RSSMiB }},
			{mem, "Go heap in use", grey, func(p scalePoint) float64 { return p.HeapMiB }},
		}
		for _, s := range series {
			var pts plotter.XYs
			for _, p := range c.Points {
				pts = append(pts, plotter.XY{X: float64(p.X), Y: s.y(p)})
			}
			l, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			l.Color, sc.Color = s.color, s.color
			s.p.Add(l, sc)
			s.p.Legend.Add(s.name, l, sc)
		}
		rows[i] = []*plot.Plot{cpu, mem}
	}
	img := vgimg.New(12*vg.Inch, vg.Length(len(curves))*4*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(curves), Cols: 2, PadX: vg.Inch / 4, PadY: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align(rows, tiles, dc)
	for i := range rows {
		for j := range rows[i] {
			rows[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
