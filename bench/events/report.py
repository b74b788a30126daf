#!/usr/bin/env python3
"""Summarises bench/events/run.sh results.

Usage: report.py ROUNDS_TSV CLK_TCK [VOTES_TSV] [--summary FILE]
       report.py --brief GHZ_JSON      (one line about one ghz run)
       report.py --vote-events OUT.json|- LIST_EVENTS_PAGE.json...

ROUNDS_TSV has one line per measured ghz run:
    round  concurrency  backend  call  ghz_json  gw  svc  users  events  store
where the last five are CPU clock ticks (utime + stime) spent during the
run by the gateway, the services (users-svc + events-svc), each service
alone and the store (Cassandra + Redis); "-" where a figure does not apply
(`munity dev` is one process: gateway and services are split by thread,
and its store is in-process).

Prints one line per run, every non-OK status / error ghz saw, then the
table: medians over rounds per (backend, call, concurrency). Exits 1 when
any call failed. --summary appends issue 24's targets this run measured
(calls/s against GetMe's on the same backend and concurrency, TARGETS
below) to FILE, in bench/summary.py's format.

VOTES_TSV has one line per Vote ghz run:
    backend  warmup|measured  pairs  ghz_json
(each run by a voter of its own, over `pairs` (event, option) pairs in
turn) and one per backend:
    backend  stored  votes  -
(the votes stored at the end, summed over the vote events). Prints per
backend the Vote calls, the distinct (user, event, option) votes they could
cast, and how many were new votes; exits 1 when the stored votes are not
what the calls should have cast.

--vote-events reads ListEvents responses (grpcurl JSON) of the vote
events, writes to OUT.json (unless "-") ghz's Vote data: a JSON array of
one VoteRequest per (event, option) pair, events first (element i: event
i mod E, option i div E, so calls in flight together hit different
events), and prints "EVENTS PAIRS VOTES" (VOTES: the vote counts summed).
"""

import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import summary  # noqa: E402  (bench/summary.py)

BACKENDS = ["embedded", "cql"]
CALLS = ["GetMe", "CreateEvent", "Vote"]
CPU_KEYS = ["gw", "svc", "users", "events", "store"]
# Issue 24's targets: (backend, call, concurrency, goal of calls/s against
# GetMe's, figure).
TARGETS = [
    ("embedded", "Vote", 4, ">= 0.5x", "events Vote vs GetMe, embedded, -c 4"),
    ("embedded", "Vote", 32, ">= 0.5x", "events Vote vs GetMe, embedded, -c 32"),
    ("embedded", "CreateEvent", 32, ">= 0.5x", "events CreateEvent vs GetMe, embedded, -c 32"),
    ("cql", "Vote", 32, ">= 0.3x", "events Vote vs GetMe on Cassandra, -c 32"),
]


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


def main(args, summary_path):
    tsv, clk_tck = args[0], int(args[1])
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
    medians = {}
    for key in keys:
        rows = runs[key]
        m = {k: median([r[k] for r in rows]) for k in ["rps", "p50", "p99", *CPU_KEYS]}
        errors = sum(r["errors"] for r in rows)
        medians[key] = (m["rps"], errors)
        print(f"{key[0]:<8} {key[1]:<11} {key[2]:>3} {fmt(m['rps']):>7} "
              f"{fmt(m['p50'], '{:.2f}'):>7} {fmt(m['p99'], '{:.2f}'):>7} {errors:>6} "
              f"{fmt(m['gw'], '{:.3f}'):>7} {fmt(m['svc'], '{:.3f}'):>7} "
              f"{fmt(m['users'], '{:.3f}'):>7} {fmt(m['events'], '{:.3f}'):>7} "
              f"{fmt(m['store'], '{:.3f}'):>7}")
    failed = bool(problems)
    if len(args) > 2:
        failed |= votes(args[2])
    if summary_path:
        write_summary(summary_path, medians)
    return 1 if failed else 0


def write_summary(path, medians):
    """The targets this run measured: calls/s of the call against GetMe's."""
    for backend, call, c, goal, figure in TARGETS:
        if (backend, call, c) not in medians or (backend, "GetMe", c) not in medians:
            continue
        (rps, errors), (base, base_errors) = medians[(backend, call, c)], medians[(backend, "GetMe", c)]
        ratio = rps / base if rps and base else None
        note = f"; {errors + base_errors} calls failed" if errors + base_errors else ""
        summary.ratio_row(path, figure, goal, ratio,
                          f"{fmt(rps, '{:,.0f}')} vs {fmt(base, '{:,.0f}')} calls/s{note}",
                          valid=not note)


def votes(path):
    """Prints the Vote lines; True when stored votes and calls disagree."""
    runs = defaultdict(list)  # backend -> [(kind, pairs, count, ok)]
    stored = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            backend, kind, value, ghz_path = line.rstrip("\n").split("\t")
            if kind == "stored":
                stored[backend] = int(value) if value.strip() else None
                continue
            ghz = load(ghz_path)
            count = int(ghz.get("count") or 0)
            ok = int((ghz.get("statusCodeDistribution") or {}).get("OK", 0))
            runs[backend].append((kind, int(value), count, ok))
    mismatch = False
    print()
    print("Vote as a write: each Vote run (warm-up, every round and -c) by a voter of its own, "
          "over the (event, option) pairs in turn; a run's calls are new votes up to its pairs")
    for backend in BACKENDS:
        if backend not in runs:
            continue
        measured = [r for r in runs[backend] if r[0] == "measured"]
        calls = sum(r[2] for r in measured)
        combos = sum(r[1] for r in measured)
        new = sum(min(r[2], r[1]) for r in measured)
        pairs = sorted({r[1] for r in measured})
        shape = (f"{len(measured)} voters x {pairs[0]} pairs" if len(pairs) == 1
                 else f"{len(measured)} voters, {'/'.join(map(str, pairs))} pairs")
        largest = max((r[2] for r in measured), default=0)
        pct = 100.0 * new / calls if calls else 100.0
        print(f"  {backend:<8} {calls} measured Vote calls in {len(measured)} runs (largest {largest}); "
              f"{combos} distinct (user, event, option) votes available ({shape}): "
              f"{new} new votes ({pct:.1f}%)")
        # Every Vote run, warm-up included, against the votes stored.
        ok_calls = sum(r[3] for r in runs[backend])
        expected = sum(min(r[3], r[1]) for r in runs[backend])
        errors = any(r[3] != r[2] for r in runs[backend])
        got = stored.get(backend)
        if got is None:
            verdict = "not read"
        elif got == expected:
            verdict = ("every OK call cast a new vote" if expected == ok_calls
                       else f"{expected} new votes, {ok_calls - expected} repeats "
                            "(runs with more calls than pairs)")
        elif errors:
            verdict = f"expected about {expected} (some calls failed)"
        else:
            verdict = f"MISMATCH: expected {expected}"
            mismatch = True
        print(f"  {'':<8} stored votes {got if got is not None else '-'}, "
              f"OK Vote calls incl. warm-up {ok_calls}: {verdict}")
    return mismatch


def vote_events(out, pages):
    events = []
    for path in pages:
        events.extend(load(path).get("events") or [])
    width = max((len(e.get("options") or []) for e in events), default=0)
    requests = [{"eventId": e["id"], "optionId": option}
                for option in range(width)
                for e in events if option < len(e.get("options") or [])]
    if out != "-":
        with open(out, "w") as f:
            json.dump(requests, f, separators=(",", ":"))
            f.write("\n")
    stored = sum(int(o.get("votes") or 0) for e in events for o in e.get("options") or [])
    print(len(events), len(requests), stored)


def brief(path):
    ghz = load(path)
    p50 = percentile_ms(ghz, 50)
    print(f"{ghz.get('count', 0)} calls, {ghz.get('rps') or 0:.0f} req/s, "
          f"p50 {fmt(p50, '{:.2f}')} ms, status {ghz.get('statusCodeDistribution')}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--brief":
        brief(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) >= 3 and sys.argv[1] == "--vote-events":
        vote_events(sys.argv[2], sys.argv[3:])
        sys.exit(0)
    args = sys.argv[1:]
    summary_path = None
    if "--summary" in args:
        i = args.index("--summary")
        summary_path = args[i + 1]
        del args[i:i + 2]
    sys.exit(main(args, summary_path))
