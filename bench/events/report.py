#!/usr/bin/env python3
"""Summarises bench/events/run.sh results.

Usage: report.py ROUNDS_TSV CLK_TCK
       report.py --brief GHZ_JSON      (one line about one ghz run)

ROUNDS_TSV has one line per measured ghz run:
    round  concurrency  backend  call  ghz_json  gw  svc  users  events  store
where the last five are CPU clock ticks (utime + stime) spent during the
run by the gateway, the services (users-svc + events-svc), each service
alone and the store (Cassandra + Redis); "-" where a figure does not apply
(`munity dev` is one process: gateway and services are split by thread,
and its store is in-process).

Prints one line per run, every non-OK status / error ghz saw, then the
table: medians over rounds per (backend, call, concurrency). Exits 1 when
any call failed.
"""

import json
import statistics
import sys
from collections import defaultdict

BACKENDS = ["embedded", "cql"]
CALLS = ["GetMe", "CreateEvent", "Vote"]
CPU_KEYS = ["gw", "svc", "users", "events", "store"]


def percentile_ms(ghz, pct):
    for entry in ghz.get("latencyDistribution") or []:
        if int(entry["percentage"]) == pct:
            return entry["latency"] / 1e6  # ns -> ms
    return None


def fmt(value, spec="{:.0f}"):
    if value is None or value != value:  # None or NaN
        return "-"
    return spec.format(value)


def median(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    tsv, clk_tck = sys.argv[1], int(sys.argv[2])
    runs = defaultdict(list)  # (backend, call, c) -> [row]
    problems = []
    with open(tsv) as f:
        for line in f:
            if not line.strip():
                continue
            rnd, c, backend, call, path, *ticks = line.rstrip("\n").split("\t")
            ghz = load(path)
            count = int(ghz.get("count") or 0)
            codes = ghz.get("statusCodeDistribution") or {}
            ok = int(codes.get("OK", 0))
            errors = ghz.get("errorDistribution") or {}

            def per_1k(t, count=count):
                if t.strip() == "-" or count == 0:
                    return None
                return int(t) / clk_tck / count * 1000

            row = {
                "round": int(rnd),
                "count": count,
                "errors": count - ok,
                "rps": float(ghz.get("rps") or 0.0),
                "p50": percentile_ms(ghz, 50),
                "p99": percentile_ms(ghz, 99),
                "codes": codes,
                "messages": errors,
            }
            row.update({k: per_1k(t) for k, t in zip(CPU_KEYS, ticks)})
            key = (backend, call, int(c))
            runs[key].append(row)
            if ok != count or errors:
                problems.append((key, row))

    keys = sorted(runs, key=lambda k: (k[2], BACKENDS.index(k[0]), CALLS.index(k[1])))
    rounds = sorted({r["round"] for rows in runs.values() for r in rows})

    print()
    print("Per run (latency in ms; CPU = utime+stime seconds per 1,000 calls)")
    head = (f"{'rnd':>3} {'backend':<8} {'call':<11} {'-c':>3} {'calls':>7} {'errors':>6} "
            f"{'req/s':>7} {'p50':>7} {'p99':>7} {'gw CPU':>7} {'svc CPU':>7} {'store':>7}")
    print(head)
    for rnd in rounds:
        for key in keys:
            for r in runs[key]:
                if r["round"] != rnd:
                    continue
                print(f"{rnd:>3} {key[0]:<8} {key[1]:<11} {key[2]:>3} {r['count']:>7} {r['errors']:>6} "
                      f"{r['rps']:>7.0f} {fmt(r['p50'], '{:.2f}'):>7} {fmt(r['p99'], '{:.2f}'):>7} "
                      f"{fmt(r['gw'], '{:.3f}'):>7} {fmt(r['svc'], '{:.3f}'):>7} "
                      f"{fmt(r['store'], '{:.3f}'):>7}")

    print()
    if problems:
        print("NON-OK RESPONSES / ERRORS (from ghz statusCodeDistribution / errorDistribution):")
        for key, r in problems:
            print(f"  round {r['round']} {key[0]} {key[1]} -c {key[2]}: {r['count']} calls, "
                  f"{r['count'] - r['errors']} OK")
            for code, n in sorted(r["codes"].items()):
                if code != "OK":
                    print(f"      status {code}: {n}")
            for message, n in sorted(r["messages"].items(), key=lambda kv: -kv[1]):
                print(f"      error x{n}: {message}")
    else:
        print("All calls OK (no non-OK status, no ghz error).")

    print()
    print(f"Summary: medians over {len(rounds)} round(s); latency in ms; "
          "CPU seconds per 1,000 calls (gateway | users-svc + events-svc [users / events] | "
          "Cassandra + Redis)")
    print(f"{'backend':<8} {'call':<11} {'-c':>3} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'gw CPU':>7} {'svc CPU':>7} {'users':>7} {'events':>7} {'store':>7}")
    for key in keys:
        rows = runs[key]
        m = {k: median([r[k] for r in rows]) for k in ["rps", "p50", "p99", *CPU_KEYS]}
        errors = sum(r["errors"] for r in rows)
        print(f"{key[0]:<8} {key[1]:<11} {key[2]:>3} {fmt(m['rps']):>7} "
              f"{fmt(m['p50'], '{:.2f}'):>7} {fmt(m['p99'], '{:.2f}'):>7} {errors:>6} "
              f"{fmt(m['gw'], '{:.3f}'):>7} {fmt(m['svc'], '{:.3f}'):>7} "
              f"{fmt(m['users'], '{:.3f}'):>7} {fmt(m['events'], '{:.3f}'):>7} "
              f"{fmt(m['store'], '{:.3f}'):>7}")
    return 1 if problems else 0


def brief(path):
    ghz = load(path)
    p50 = percentile_ms(ghz, 50)
    print(f"{ghz.get('count', 0)} calls, {ghz.get('rps') or 0:.0f} req/s, "
          f"p50 {fmt(p50, '{:.2f}')} ms, status {ghz.get('statusCodeDistribution')}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--brief":
        brief(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
