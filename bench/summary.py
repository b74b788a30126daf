#!/usr/bin/env python3
"""The summary every bench run.sh appends to with --summary FILE, and
bench/all.sh's table of it.

FILE is TSV, one line per target a bench measured:
    figure <TAB> goal <TAB> measured <TAB> met
(met is yes or no; bench/all.sh writes `failed` in measured for a target
whose bench failed before measuring it). The report scripts import this
module (`sys.path` gets bench/) and call row(); the Rust load clients write
the same lines through bench_kit::summary_row.

  summary.py table FILE   the aligned table `figure | goal | measured | met`,
                          then `N of M targets met`
"""

import sys


def fmt_ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def row(path, figure, goal, measured, met):
    """Appends one target's line to PATH (nothing when PATH is empty)."""
    if not path:
        return
    cells = [str(c).replace("\t", " ").replace("\n", " ") for c in (figure, goal, measured)]
    with open(path, "a") as f:
        f.write("\t".join(cells + ["yes" if met else "no"]) + "\n")


def meets(value, goal):
    """Whether VALUE meets GOAL, `<= N...` or `>= N...` (N may have commas
    and a unit: `>= 0.5x`, `<= 50 ms`, `>= 100,000 records/s`)."""
    op, bound = goal.split()[0], float(goal.split()[1].rstrip("x").replace(",", ""))
    return value is not None and (value <= bound if op == "<=" else value >= bound)


def ratio_row(path, figure, goal, ratio, detail="", valid=True):
    """A row whose goal is `<= X.Yx` or `>= X.Yx` of a ratio (None: not
    measured). valid=False: the run had failures, so the target counts as
    not met whatever the ratio."""
    met = valid and meets(ratio, goal)
    measured = fmt_ratio(ratio) + (f" ({detail})" if detail and ratio is not None else "")
    row(path, figure, goal, measured, met)


def read(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                cells = line.split("\t")
                rows.append((cells + ["", "", "", ""])[:4])
    return rows


def table(path):
    rows = read(path)
    head = ("figure", "goal", "measured", "met")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    print(line(head))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    met = sum(1 for r in rows if r[3] == "yes")
    print()
    print(f"{met} of {len(rows)} targets met")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        table(sys.argv[2])
        sys.exit(0)
    print(__doc__.strip(), file=sys.stderr)
    sys.exit(2)
