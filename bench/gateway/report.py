#!/usr/bin/env python3
"""Summarises bench/gateway/run.sh results.

Usage: report.py RESULTS_DIR CLK_TCK [--summary FILE]
       report.py --brief GHZ_JSON      (one line about one ghz run)
       report.py --sweep DIR [DIR...]  (one line per concurrency, from each DIR's summary.json)

RESULTS_DIR/rounds.tsv has one line per measured ghz run:
    round  target  ghz_json  proxy_cpu_ticks  users_cpu_ticks
(target is direct, gateway, nginx, pingora or hyper; proxy ticks are "-"
for direct). pingora and hyper are bench/proxies' reference proxies: bare
Pingora (the gateway's core) and bare hyper (the alternative data path).
Prints one line per run, every non-OK status / error ghz saw, then a summary
table of medians over rounds and the gateway-vs-nginx ratios. With
--summary, appends the issue's targets measured at this concurrency (-c 4:
CPU per call; -c 32: CPU per call and throughput, gateway vs nginx) to FILE
(bench/summary.py's format).
"""

import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import summary  # noqa: E402  (bench/summary.py)

# Targets per concurrency (issue 24, item 1): (what, goal), what being the
# proxy CPU per call or the throughput, gateway / nginx.
TARGETS_AT = {
    4: [("cpu", "<= 1.2x")],
    32: [("cpu", "<= 1.0x"), ("rps", ">= 1.0x")],
}

TARGETS = ["direct", "gateway", "nginx", "pingora", "hyper"]
LABELS = {
    "direct": "(a) users-svc direct",
    "gateway": "(b) munity-gateway",
    "nginx": "(c) nginx grpc_pass",
    "pingora": "(d) bare Pingora",
    "hyper": "(e) bare hyper",
}


def percentile(ghz, pct):
    for entry in ghz.get("latencyDistribution") or []:
        if int(entry["percentage"]) == pct:
            return entry["latency"] / 1000.0  # ns -> us
    return float("nan")


def fmt(value, spec="{:.0f}"):
    if value is None or value != value:  # None or NaN
        return "-"
    return spec.format(value)


def median(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main(results_dir, clk_tck, summary_path=None):
    runs = defaultdict(list)  # target -> [row]
    problems = []
    with open(f"{results_dir}/rounds.tsv") as f:
        for line in f:
            if not line.strip():
                continue
            rnd, target, path, proxy_ticks, users_ticks = line.split("\t")
            with open(path) as g:
                ghz = json.load(g)
            count = int(ghz.get("count") or 0)
            codes = ghz.get("statusCodeDistribution") or {}
            ok = int(codes.get("OK", 0))
            errors = ghz.get("errorDistribution") or {}
            per_100k = lambda ticks: (  # noqa: E731
                None if ticks.strip() == "-" or count == 0
                else int(ticks) / clk_tck / count * 100_000
            )
            row = {
                "round": int(rnd),
                "count": count,
                "ok": ok,
                "rps": float(ghz.get("rps") or 0.0),
                "p50": percentile(ghz, 50),
                "p99": percentile(ghz, 99),
                "avg": (ghz.get("average") or 0) / 1000.0,
                "proxy_cpu": per_100k(proxy_ticks),
                "users_cpu": per_100k(users_ticks),
                "codes": codes,
                "errors": errors,
            }
            runs[target].append(row)
            if ok != count or errors:
                problems.append((target, row))

    print()
    print("Per round (CPU = utime+stime seconds per 100k requests; latency in us)")
    print(f"{'round':>5} {'target':<22} {'requests':>9} {'non-OK':>7} {'req/s':>9} "
          f"{'p50':>7} {'p99':>7} {'proxy CPU':>10} {'users CPU':>10}")
    rounds = sorted({r["round"] for rows in runs.values() for r in rows})
    for rnd in rounds:
        for target in TARGETS:
            for r in runs.get(target, []):
                if r["round"] != rnd:
                    continue
                print(f"{rnd:>5} {LABELS[target]:<22} {r['count']:>9} {r['count'] - r['ok']:>7} "
                      f"{r['rps']:>9.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} "
                      f"{fmt(r['proxy_cpu'], '{:.2f}'):>10} {fmt(r['users_cpu'], '{:.2f}'):>10}")

    print()
    if problems:
        print("NON-OK RESPONSES / ERRORS (from ghz statusCodeDistribution / errorDistribution):")
        for target, r in problems:
            print(f"  round {r['round']} {LABELS[target]}: {r['count']} requests, {r['ok']} OK")
            for code, n in sorted(r["codes"].items()):
                if code != "OK":
                    print(f"      status {code}: {n}")
            for message, n in sorted(r["errors"].items(), key=lambda kv: -kv[1]):
                print(f"      error x{n}: {message}")
    else:
        print("All calls OK on every target (no non-OK status, no ghz error).")

    med = {}
    for target in TARGETS:
        rows = runs.get(target, [])
        med[target] = {k: median([r[k] for r in rows])
                       for k in ("rps", "p50", "p99", "proxy_cpu", "users_cpu")}
        med[target]["non_ok"] = sum(r["count"] - r["ok"] for r in rows)
        med[target]["requests"] = sum(r["count"] for r in rows)

    print()
    print(f"Summary: medians over {len(rounds)} round(s)")
    print(f"{'target':<22} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} "
          f"{'proxy CPU s/100k':>17} {'users CPU s/100k':>17} {'non-OK/total':>14}")
    for target in TARGETS:
        m = med[target]
        print(f"{LABELS[target]:<22} {fmt(m['rps']):>9} {fmt(m['p50']):>8} {fmt(m['p99']):>8} "
              f"{fmt(m['proxy_cpu'], '{:.2f}'):>17} {fmt(m['users_cpu'], '{:.2f}'):>17} "
              f"{str(m['non_ok']) + '/' + str(m['requests']):>14}")

    g, n, d = med["gateway"], med["nginx"], med["direct"]
    print()
    print("Ratios (of the medians above)")
    print(f"  throughput gateway/nginx:        {fmt(ratio(g['rps'], n['rps']), '{:.2f}')}x")
    print(f"  proxy CPU per request gw/nginx:  {fmt(ratio(g['proxy_cpu'], n['proxy_cpu']), '{:.2f}')}x")
    print(f"  throughput gateway/direct:       {fmt(ratio(g['rps'], d['rps']), '{:.2f}')}x")
    print(f"  throughput nginx/direct:         {fmt(ratio(n['rps'], d['rps']), '{:.2f}')}x")
    add = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
    print(f"  added p50 over direct, gateway:  {fmt(add(g['p50'], d['p50']), '{:+.0f}')} us")
    print(f"  added p50 over direct, nginx:    {fmt(add(n['p50'], d['p50']), '{:+.0f}')} us")
    print(f"  added p99 over direct, gateway:  {fmt(add(g['p99'], d['p99']), '{:+.0f}')} us")
    print(f"  added p99 over direct, nginx:    {fmt(add(n['p99'], d['p99']), '{:+.0f}')} us")
    bp, bh = med["pingora"], med["hyper"]
    if bp["rps"] is not None or bh["rps"] is not None:
        print("  reference proxies (check nothing):")
        print(f"    proxy CPU per request, bare Pingora/nginx: {fmt(ratio(bp['proxy_cpu'], n['proxy_cpu']), '{:.2f}')}x"
              f", bare hyper/nginx: {fmt(ratio(bh['proxy_cpu'], n['proxy_cpu']), '{:.2f}')}x")
        print(f"    throughput, bare Pingora/nginx: {fmt(ratio(bp['rps'], n['rps']), '{:.2f}')}x"
              f", bare hyper/nginx: {fmt(ratio(bh['rps'], n['rps']), '{:.2f}')}x")
        # The gateway relays h2c gRPC on hyper (gateway.grpc_relay, the
        # default): its core is bare hyper's; with the relay off, Pingora's.
        print(f"    the gateway's own work (gateway CPU / bare hyper's, its core's): "
              f"{fmt(ratio(g['proxy_cpu'], bh['proxy_cpu']), '{:.2f}')}x"
              f"; gateway CPU / bare Pingora's: {fmt(ratio(g['proxy_cpu'], bp['proxy_cpu']), '{:.2f}')}x")
    with open(f"{results_dir}/summary.json", "w") as f:
        json.dump({"concurrency": concurrency_of(results_dir), "median": med}, f)
    write_summary(summary_path, concurrency_of(results_dir), g, n, valid=not problems,
                  bare=(med["pingora"], med["hyper"]))
    if d["p50"] is not None and all(
        m["p50"] is not None and d["p50"] > m["p50"] for m in (g, n)
    ):
        print()
        print(f"WARNING: the direct path (p50 {d['p50']:.0f} us) is SLOWER than both proxied paths,")
        print("  so the 'added latency' figures are meaningless. p50s near 40 ms are the signature of")
        print("  Nagle's algorithm meeting delayed ACKs: users-svc's accepted sockets lack TCP_NODELAY")
        print("  (tonic ignores Server::tcp_nodelay with serve_with_incoming*; GrpcHost sets it on")
        print("  its TcpIncoming in platform/src/server.rs).")
    return 1 if problems else 0


def write_summary(path, concurrency, g, n, valid, bare=None):
    """The targets measured at this concurrency, one summary line each
    (valid=False: some calls failed, so no target counts as met). bare:
    the medians of bare Pingora and bare hyper, whose ratios to nginx are
    added to each line's detail (what the core costs, and the alternative)."""
    if not path:
        return
    note = "" if valid else "; some calls failed"

    def reference(key):
        if not bare:
            return ""
        p, h = (fmt(ratio(b[key], n[key]), "{:.2f}x") for b in bare)
        return f"; bare Pingora {p}, bare hyper {h}"
    # proxy CPU is in seconds per 100k calls: x 10 = us per call
    us = lambda m: fmt(m["proxy_cpu"] and m["proxy_cpu"] * 10, "{:.1f}")  # noqa: E731
    for what, goal in TARGETS_AT.get(concurrency, []):
        if what == "cpu":
            summary.ratio_row(path, f"gateway CPU per call vs nginx, -c {concurrency}", goal,
                              ratio(g["proxy_cpu"], n["proxy_cpu"]),
                              f"{us(g)} vs {us(n)} us/call{reference('proxy_cpu')}{note}", valid)
        else:
            summary.ratio_row(path, f"gateway throughput vs nginx, -c {concurrency}", goal,
                              ratio(g["rps"], n["rps"]),
                              f"{fmt(g['rps'], '{:,.0f}')} vs {fmt(n['rps'], '{:,.0f}')} req/s"
                              f"{reference('rps')}{note}",
                              valid)


def concurrency_of(results_dir):
    """run.sh writes each concurrency's results under .../c<N>."""
    name = results_dir.rstrip("/").rsplit("/", 1)[-1]
    return int(name[1:]) if name[:1] == "c" and name[1:].isdigit() else None


def sweep(dirs):
    """One line per concurrency from the summary.json files main() wrote."""
    print()
    print("Sweep: medians per concurrency (gateway vs nginx; added p50 over direct)")
    print(f"{'-c':>4} {'gw req/s':>9} {'nginx req/s':>12} {'thr gw/nginx':>13} "
          f"{'CPU gw/nginx':>13} {'added p50 gw':>13} {'added p50 nginx':>16} "
          f"{'CPU pingora/nginx':>18} {'CPU hyper/nginx':>16}")
    rows = []
    for d in dirs:
        with open(f"{d}/summary.json") as f:
            rows.append(json.load(f))
    for row in sorted(rows, key=lambda r: r["concurrency"] or 0):
        g, n, x = (row["median"][t] for t in ("gateway", "nginx", "direct"))
        empty = {"proxy_cpu": None}
        bp, bh = (row["median"].get(t, empty) for t in ("pingora", "hyper"))
        add = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
        print(f"{row['concurrency'] or '?':>4} {fmt(g['rps']):>9} {fmt(n['rps']):>12} "
              f"{fmt(ratio(g['rps'], n['rps']), '{:.2f}x'):>13} "
              f"{fmt(ratio(g['proxy_cpu'], n['proxy_cpu']), '{:.2f}x'):>13} "
              f"{fmt(add(g['p50'], x['p50']), '{:+.0f} us'):>13} "
              f"{fmt(add(n['p50'], x['p50']), '{:+.0f} us'):>16} "
              f"{fmt(ratio(bp['proxy_cpu'], n['proxy_cpu']), '{:.2f}x'):>18} "
              f"{fmt(ratio(bh['proxy_cpu'], n['proxy_cpu']), '{:.2f}x'):>16}")


def brief(path):
    with open(path) as f:
        ghz = json.load(f)
    print(f"{ghz.get('count', 0)} calls, {ghz.get('rps') or 0:.0f} req/s, "
          f"p50 {percentile(ghz, 50):.0f} us, status {ghz.get('statusCodeDistribution')}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--brief":
        brief(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) >= 3 and sys.argv[1] == "--sweep":
        sweep(sys.argv[2:])
        sys.exit(0)
    args = sys.argv[1:]
    summary_path = None
    if "--summary" in args:
        i = args.index("--summary")
        summary_path = args[i + 1]
        del args[i:i + 2]
    sys.exit(main(args[0], int(args[1]), summary_path))
