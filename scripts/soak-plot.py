"""Plots soak-cluster.sh's CSV as one SVG: RSS, open descriptors and
threads of every process over time, one panel each (no plotting library
needed). Redis's RSS has a panel of its own: it holds the data the load
writes (topic histories), so it grows by design and would flatten the
Munity processes' lines. Usage: soak-plot.py soak.csv soak.svg"""
import csv
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
series = defaultdict(lambda: defaultdict(list))  # metric -> process -> [(t, v)]
series["RSS (MiB)"]  # first
for row in rows:
    t = int(row["seconds"])
    rss = "Redis RSS (MiB, stored data)" if row["process"] == "redis" else "RSS (MiB)"
    series[rss][row["process"]].append((t, int(row["rss_kib"]) / 1024))
    series["open descriptors"][row["process"]].append((t, int(row["fds"])))
    series["threads"][row["process"]].append((t, int(row["threads"])))
    series["open streams"]["client"].append((t, int(row["open_streams"])))

colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
width, panel, margin = 900, 220, 60
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
       f'height="{len(series) * (panel + margin) + 20}" font-family="sans-serif" font-size="11">']
t_max = max((int(r["seconds"]) for r in rows), default=1) or 1
for i, (metric, processes) in enumerate(series.items()):
    top = 20 + i * (panel + margin)
    v_max = max((v for points in processes.values() for _, v in points), default=1) or 1
    # RSS from zero hides nothing but a slope: scale from just below the least value.
    v_min = 0
    if metric == "RSS (MiB)":
        v_min = int(min(v for points in processes.values() for _, v in points) * 0.9)
    span = (v_max - v_min) or 1
    svg.append(f'<text x="{margin}" y="{top - 5}" font-size="13">{metric} ({v_min:.0f} to {v_max:.0f})</text>')
    svg.append(f'<rect x="{margin}" y="{top}" width="{width - 2 * margin - 120}" height="{panel}" '
               'fill="none" stroke="#999"/>')
    plot_w = width - 2 * margin - 120
    for j, (process, points) in enumerate(sorted(processes.items())):
        color = colors[j % len(colors)]
        path = " ".join(f"{margin + plot_w * t / t_max:.1f},{top + panel - panel * (v - v_min) / span:.1f}"
                        for t, v in sorted(set(points)))
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        svg.append(f'<text x="{width - margin - 110}" y="{top + 12 + 13 * j}" fill="{color}">{process}</text>')
    svg.append(f'<text x="{margin}" y="{top + panel + 14}">0 s</text>')
    svg.append(f'<text x="{margin + plot_w - 30}" y="{top + panel + 14}">{t_max} s</text>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg))
