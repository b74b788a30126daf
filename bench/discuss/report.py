#!/usr/bin/env python3
"""bench/discuss report.

  report.py ROUNDS.tsv [--summary FILE]
                                    (the table, ratios and targets; with
                                    --summary, the targets also go to FILE
                                    in bench/summary.py's format)
  report.py --brief GHZ_JSON        (one line about one ghz run)
  report.py --react REACT.json REACTIONS_PER_POST POSTS_PAGE.json...
                                    (writes the React requests: one per
                                    (post, kind) pair, posts first; prints
                                    posts and pairs)

ROUNDS.tsv: round, concurrency, call, ghz JSON path (one line a run).
Per (call, concurrency): the median over rounds of calls/s, p50 and p99;
errors summed. Ratios are calls/s against GetMe at the same concurrency.
Exit status 1 when any call failed.
"""

import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import summary  # noqa: E402  (bench/summary.py)

CALLS = ["GetMe", "CreatePost", "React", "ListPosts"]
KINDS = ["REACTION_KIND_LIKE", "REACTION_KIND_LOVE", "REACTION_KIND_LAUGH",
         "REACTION_KIND_WOW", "REACTION_KIND_SAD"]


def load(path):
    with open(path) as f:
        return json.load(f)


def percentile_ms(ghz, pct):
    for entry in ghz.get("latencyDistribution") or []:
        if int(entry["percentage"]) == pct:
            return entry["latency"] / 1e6  # ns -> ms
    return None


def errors(ghz):
    return sum(n for code, n in (ghz.get("statusCodeDistribution") or {}).items() if code != "OK")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec="{:.0f}"):
    return "-" if value is None else spec.format(value)


def main(path, summary_path=None):
    runs = defaultdict(list)
    with open(path) as f:
        for line in f:
            _round, c, call, out = line.rstrip("\n").split("\t")
            runs[(call, int(c))].append(load(out))
    concurrencies = sorted({c for _, c in runs})
    failed = 0
    print(f"{'call':<11} {'-c':>3} {'calls/s':>8} {'x GetMe':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    table = {}
    errors_at = defaultdict(int)  # (call, c) -> failed calls
    for c in concurrencies:
        base = median(g.get("rps") for g in runs.get(("GetMe", c), []))
        for call in CALLS:
            ghz = runs.get((call, c))
            if not ghz:
                continue
            rps = median(g.get("rps") for g in ghz)
            p50 = median(percentile_ms(g, 50) for g in ghz)
            p99 = median(percentile_ms(g, 99) for g in ghz)
            errs = sum(errors(g) for g in ghz)
            failed += errs
            errors_at[(call, c)] = errs
            ratio = rps / base if rps and base else None
            table[(call, c)] = (rps, ratio, p99)
            print(f"{call:<11} {c:>3} {fmt(rps):>8} {fmt(ratio, '{:.2f}'):>8} "
                  f"{fmt(p50, '{:.2f}'):>7} {fmt(p99, '{:.2f}'):>7} {errs:>6}")
    if 32 in concurrencies:
        print()
        print("targets at -c 32 (embedded storage):")
        for call in ["CreatePost", "React"]:
            _, ratio, _ = table.get((call, 32), (None, None, None))
            verdict = "-" if ratio is None else ("met" if ratio >= 0.5 else "NOT met")
            print(f"  {call} >= 0.5x GetMe calls/s: {fmt(ratio, '{:.2f}')}x, {verdict}")
        _, _, p99 = table.get(("ListPosts", 32), (None, None, None))
        verdict = "-" if p99 is None else ("met" if p99 <= 20 else "NOT met")
        print(f"  feed page (ListPosts) p99 <= 20 ms: {fmt(p99, '{:.2f}')} ms, {verdict}")
        if summary_path:
            write_summary(summary_path, table, errors_at)
    if failed:
        print(f"\n{failed} calls failed")
        return 1
    return 0


def write_summary(path, table, errors_at):
    """The targets at -c 32, one summary line each (failed calls: not met)."""
    base, _, _ = table.get(("GetMe", 32), (None, None, None))
    for call in ["CreatePost", "React"]:
        rps, ratio, _ = table.get((call, 32), (None, None, None))
        errs = errors_at[(call, 32)] + errors_at[("GetMe", 32)]
        note = f"; {errs} calls failed" if errs else ""
        summary.ratio_row(path, f"discuss {call} vs GetMe, embedded, -c 32", ">= 0.5x", ratio,
                          f"{fmt(rps, '{:,.0f}')} vs {fmt(base, '{:,.0f}')} calls/s{note}",
                          valid=not errs)
    _, _, p99 = table.get(("ListPosts", 32), (None, None, None))
    errs = errors_at[("ListPosts", 32)]
    goal = "<= 20 ms"
    summary.row(path, "discuss feed page p99, embedded, -c 32", goal,
                fmt(p99, "{:.1f} ms") + (f" ({errs} calls failed)" if errs else ""),
                not errs and summary.meets(p99, goal))


def react(out, pages):
    posts = []
    for page in pages:
        posts += [p["id"] for p in load(page).get("posts") or []]
    requests = [{"postId": post, "kind": kind} for kind in KINDS for post in posts]
    with open(out, "w") as f:
        json.dump(requests, f, separators=(",", ":"))
        f.write("\n")
    print(len(posts), len(requests))


def brief(path):
    ghz = load(path)
    print(f"{ghz.get('count', 0)} calls, {ghz.get('rps') or 0:.0f} calls/s, "
          f"p50 {fmt(percentile_ms(ghz, 50), '{:.2f}')} ms, p99 {fmt(percentile_ms(ghz, 99), '{:.2f}')} ms, "
          f"status {ghz.get('statusCodeDistribution')}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--brief":
        brief(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) >= 3 and sys.argv[1] == "--react":
        react(sys.argv[2], sys.argv[3:])
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[2] == "--summary":
        sys.exit(main(sys.argv[1], sys.argv[3]))
    sys.exit(main(sys.argv[1]))
