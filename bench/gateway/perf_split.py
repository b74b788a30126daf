#!/usr/bin/env python3
"""Where each proxy's CPU goes per call, from run.sh --perf's recordings.

Usage: perf_split.py RESULTS_DIR FREQ   (run.sh --perf calls it)

For each results/perf_<target>.data that round 1 recorded, `perf report`
gives the samples per symbol (no children: each sample counted once, where
it was taken); the symbol's crate or library puts it in a group, and the
group's samples over the round's calls (round1_<target>.json, ghz's count)
at FREQ samples per second give microseconds of CPU per call. Prints one
table: a column per proxy, a row per group.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter

TARGETS = ["gateway", "nginx", "pingora", "hyper"]
GROUPS = [
    "kernel", "allocation", "memcpy", "libc, other", "h2", "hyper", "pingora",
    "tokio", "http, bytes", "Rust core, std", "ours (munity)", "nginx", "other",
]
ALLOCATION = re.compile(r"^(malloc|free|cfree|realloc|calloc|_int_\w+|unlink_chunk\S*|malloc_consolidate|tcache\w*|__libc_(malloc|free|calloc|realloc)|sysmalloc)$")
MEMCPY = re.compile(r"^__(memcpy|memmove|memset|memcmp|memchr)\w*$")
CRATE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def group_of(dso, symbol):
    if dso.startswith("[kernel") or symbol.startswith("[k] "):
        return "kernel"
    symbol = symbol.removeprefix("[.] ").strip()
    if dso.startswith("libc"):
        if ALLOCATION.match(symbol):
            return "allocation"
        if MEMCPY.match(symbol):
            return "memcpy"
        return "libc, other"
    if dso == "nginx":
        return "nginx"
    match = CRATE.search(symbol)
    crate = match.group(1) if match else ""
    if crate == "h2":
        return "h2"
    if crate in ("hyper", "hyper_util"):
        return "hyper"
    if crate.startswith("pingora"):
        return "pingora"
    if crate.startswith("tokio"):
        return "tokio"
    if crate in ("http", "bytes", "httparse"):
        return "http, bytes"
    if crate in ("core", "alloc", "std", "hashbrown"):
        return "Rust core, std"
    if crate.startswith("munity") or crate == "bench_proxies":
        return "ours (munity)"
    return "other"


def samples_by_group(path):
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "-q",
         "-g", "none", "-F", "sample,dso,sym", "--percent-limit", "0"],
        capture_output=True, text=True, check=False,
    ).stdout
    groups = Counter()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        groups[group_of(parts[1], parts[2])] += int(parts[0])
    return groups


def main(results_dir, freq):
    columns = []
    for target in TARGETS:
        data = os.path.join(results_dir, f"perf_{target}.data")
        ghz = os.path.join(results_dir, f"round1_{target}.json")
        if not (os.path.exists(data) and os.path.exists(ghz)):
            continue
        with open(ghz) as f:
            calls = int(json.load(f).get("count") or 0)
        if calls:
            columns.append((target, samples_by_group(data), calls))
    if not columns:
        print("perf_split: no perf recordings found", file=sys.stderr)
        return 1
    print()
    print(f"Where the proxy's CPU goes, us per call (perf, {freq} samples/s, round 1; self time by symbol's crate)")
    print(f"{'':<16}" + "".join(f"{t:>10}" for t, _, _ in columns))
    us = lambda n, calls: n / freq / calls * 1e6  # noqa: E731
    for group in GROUPS:
        if not any(g[group] for _, g, _ in columns):
            continue
        print(f"{group:<16}" + "".join(f"{us(g[group], calls):>10.1f}" for _, g, calls in columns))
    print(f"{'total':<16}" + "".join(f"{us(sum(g.values()), calls):>10.1f}" for _, g, calls in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
