#!/usr/bin/env python3
"""Concurrent long-lived server streams through a gRPC proxy (run.sh --streams).

  streams.py run --target HOST:PORT --count N --connections K --hold S
                 --pids PID[,PID...] [--children-of PID] --upstream-port P
                 [--token JWT] --out FILE.json
      Opens N /munity.bench.v1.Ticker/Watch calls ({"service": --service},
      run.sh passes the ticker's "munity.bench.Ticker"): the health_ticker
      example serves grpc.health.v1.Health/Watch under that name too,
      because munity-gateway answers grpc.health.v1.Health itself rather
      than proxying it. --method picks another path; --token sends
      "authorization: Bearer JWT" (the gateway wants one for every method
      the protos do not mark public). The calls are spread round-robin
      over K HTTP/2 connections; it waits until every stream has received its
      first message (Watch sends the current status once, then one message
      per change: the ticker changes it --offered-per-stream times a
      second) or until
      --open-timeout, holds them for S seconds, cancels them, and records the
      proxy's memory (VmRSS/VmHWM from /proc/PID/status) and CPU
      (utime+stime from /proc/PID/stat) before, during and after, and the
      messages received while all streams are held. Needs
      grpcio (installed by run.sh into a venv in its work dir).

  streams.py report CLK_TCK FILE.json [FILE.json ...] [--summary FILE]
      Prints the figures of one or more runs side by side (standard library
      only). Exit status 1 if any stream failed to open or ended with an
      error. --summary appends the issue's two stream targets, gateway vs
      nginx (runs labelled so): messages per proxy CPU-second (>= 2.5x) and
      memory per open stream (<= 1.0x), in bench/summary.py's format.
"""

import argparse
import asyncio
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import summary  # noqa: E402  (bench/summary.py)

# grpc.health.v1.Health/Watch under the name the health_ticker also serves
# it as (the gateway answers grpc.health.v1.Health itself, unproxied).
METHOD = "/munity.bench.v1.Ticker/Watch"
SERVICE = "munity.bench.Ticker"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


# ------------------------------------------------------------ protobuf ----
# HealthCheckRequest {string service = 1;} / HealthCheckResponse {enum status
# = 1;} encoded by hand, so the client needs grpcio only (no protobuf stubs).
def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(service):
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def decode_status(data):
    # Field 1, wire type 0 (tag byte 0x08); absent means 0 (UNKNOWN).
    i, status = 0, 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == 0x08:
            shift = status = 0
            while True:
                b = data[i]
                i += 1
                status |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        else:  # unexpected field: stop parsing, keep what we have
            break
    return status


# -------------------------------------------------------------- /proc ----
def proc_pids(pids, children_of):
    out = list(pids)
    for parent in children_of:
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return sorted(set(out))


def mem_kib(pid):
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def socket_inodes(pids):
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def upstream_conns(pids, port):
    """Established TCP connections of these processes to the upstream port."""
    inodes = socket_inodes(pids)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if (parts[3] == "01" and parts[9] in inodes
                            and int(parts[2].rsplit(":", 1)[1], 16) == port):
                        n += 1
        except OSError:
            pass
    return n


class Sampler:
    def __init__(self, pids, children_of, upstream_port, upstream_pid):
        self.pids, self.children_of, self.port = pids, children_of, upstream_port
        self.upstream_pid = upstream_pid

    def snapshot(self):
        pids = proc_pids(self.pids, self.children_of)
        rss = hwm = ticks = 0
        for pid in pids:
            r, h = mem_kib(pid)
            rss, hwm, ticks = rss + r, hwm + h, ticks + cpu_ticks(pid)
        up_rss, up_hwm = mem_kib(self.upstream_pid) if self.upstream_pid else (0, 0)
        return {"pids": pids, "rss_kib": rss, "hwm_kib": hwm, "ticks": ticks,
                "upstream_conns": upstream_conns(pids, self.port) if self.port else None,
                "upstream_rss_kib": up_rss, "upstream_hwm_kib": up_hwm,
                "upstream_ticks": cpu_ticks(self.upstream_pid) if self.upstream_pid else 0}


# ---------------------------------------------------------------- run ----
async def run(args):
    import grpc  # only the run mode needs grpcio

    sampler = Sampler(args.pids, args.children_of, args.upstream_port, args.upstream_pid)
    request = encode_request(args.service)
    n, k = args.count, args.connections
    deadline = args.hold + args.open_timeout + 60  # sent as grpc-timeout

    counts = [0] * n
    first_at = [None] * n
    ended = [None] * n  # None while running; else (code, details)
    statuses = collections.Counter()
    opened = 0
    all_open = asyncio.Event()
    closing = False

    before = sampler.snapshot()

    # One channel per connection: a local subchannel pool and a distinct
    # channel argument keep grpc-core from sharing one TCP connection.
    channels = [
        grpc.aio.insecure_channel(args.target, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("munity.bench.connection", i),
        ])
        for i in range(k)
    ]
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    watch = [ch.unary_stream(args.method, request_serializer=lambda b: b,
                             response_deserializer=decode_status) for ch in channels]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    calls = []

    async def one(i):
        nonlocal opened
        call = calls[i]
        try:
            async for status in call:
                counts[i] += 1
                statuses[SERVING_STATUS.get(status, str(status))] += 1
                if first_at[i] is None:
                    first_at[i] = time.monotonic()
                    opened += 1
                    if opened == n:
                        all_open.set()
            ended[i] = ("OK (server ended the stream)", "")
        except asyncio.CancelledError:
            ended[i] = ("CANCELLED", "cancelled by the client" if closing else "cancelled early")
        except grpc.aio.AioRpcError as e:
            if closing and e.code() == grpc.StatusCode.CANCELLED:
                ended[i] = ("CANCELLED", "cancelled by the client")
            else:
                ended[i] = (e.code().name, e.details() or "")

    t_start = time.monotonic()
    for i in range(n):
        calls.append(watch[i % k](request, timeout=deadline, metadata=metadata))
    tasks = [asyncio.create_task(one(i)) for i in range(n)]

    # Open phase: until every stream has its first message (or timeout).
    samples = []
    open_deadline = t_start + args.open_timeout
    while not all_open.is_set() and time.monotonic() < open_deadline:
        if all(e is not None for e in ended):
            break
        try:
            await asyncio.wait_for(all_open.wait(), min(0.5, max(0.01, open_deadline - time.monotonic())))
        except asyncio.TimeoutError:
            pass
    t_open = time.monotonic()

    def live():
        return sum(1 for i in range(n) if first_at[i] is not None and ended[i] is None)

    open_at_hold_start = live()
    messages_at_hold_start = sum(counts)
    hold_start = sampler.snapshot()
    samples.append(hold_start)
    print(f"streams: {open_at_hold_start}/{n} open after {t_open - t_start:.2f} s; holding {args.hold} s",
          file=sys.stderr, flush=True)

    # Hold phase: sample memory every --sample-interval seconds.
    hold_end_at = time.monotonic() + args.hold
    while True:
        left = hold_end_at - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(args.sample_interval, left))
        samples.append(sampler.snapshot())
    open_at_hold_end = live()
    messages_at_hold_end = sum(counts)
    hold_end = sampler.snapshot()
    samples.append(hold_end)
    t_hold_end = time.monotonic()

    # Close: cancel every call, wait for the tasks, close the connections.
    closing = True
    for c in calls:
        c.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    t_closed = time.monotonic()
    for ch in channels:
        await ch.close()
    await asyncio.sleep(args.settle)
    after = sampler.snapshot()

    opened_total = sum(1 for f in first_at if f is not None)
    errors = collections.Counter(
        f"{e[0]}: {e[1]}" for e in ended
        if e is not None and e[1] != "cancelled by the client")
    never_opened = n - opened_total
    result = {
        "target": args.target, "label": args.label, "count": n, "connections": k,
        "hold_s": args.hold, "settle_s": args.settle,
        "open_time_s": t_open - t_start,
        "all_open": opened_total == n,
        "last_first_message_s": (max(f for f in first_at if f is not None) - t_start) if opened_total else None,
        "opened_total": opened_total, "never_opened": never_opened,
        "open_at_hold_start": open_at_hold_start, "open_at_hold_end": open_at_hold_end,
        "messages": sum(counts), "statuses": dict(statuses), "service": args.service,
        "method": args.method,
        "hold_messages": messages_at_hold_end - messages_at_hold_start,
        "offered_per_stream": args.offered_per_stream,
        "run_s": t_closed - t_start, "hold_measured_s": t_hold_end - t_open,
        "errors": dict(errors),
        "before": before, "hold_start": hold_start, "hold_end": hold_end, "after": after,
        "during_rss_max_kib": max(s["rss_kib"] for s in samples),
        "during_hwm_max_kib": max(s["hwm_kib"] for s in samples),
        "during_upstream_conns_max": max((s["upstream_conns"] or 0) for s in samples),
        "during_upstream_rss_max_kib": max(s["upstream_rss_kib"] for s in samples),
        "samples": len(samples),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


# ------------------------------------------------------------- report ----
def mib(kib):
    return f"{kib / 1024:.1f}"


def hold_cpu_s(r, clk_tck):
    return (r["hold_end"]["ticks"] - r["hold_start"]["ticks"]) / clk_tck


def rss_per_stream_kib(r):
    return (r["during_rss_max_kib"] - r["before"]["rss_kib"]) / max(1, r["open_at_hold_start"])


def write_summary(path, clk_tck, runs, failed):
    """Gateway vs nginx: messages per proxy CPU-second and memory per stream."""
    by = {r["label"]: r for r in runs}
    g, n = by.get("gateway"), by.get("nginx")
    if g is None or n is None:
        return
    note = "; some streams failed" if failed else ""

    def per_cpu_s(r):
        cpu = hold_cpu_s(r, clk_tck)
        return r["hold_messages"] / cpu if cpu > 0 and r["hold_messages"] else None

    pg, pn = per_cpu_s(g), per_cpu_s(n)
    ratio = pg / pn if pg and pn else None
    mg, mn = rss_per_stream_kib(g), rss_per_stream_kib(n)
    # The reference proxies' ratios to nginx (bench/proxies), when measured.
    bare = [(name, by[label]) for name, label in (("Pingora", "bare-pingora"), ("hyper", "bare-hyper"))
            if label in by]
    per_cpu_ref = "".join(
        f"; bare {name} {per_cpu_s(r) / pn:.2f}x" for name, r in bare if per_cpu_s(r) and pn)
    memory_ref = "".join(
        f"; bare {name} {rss_per_stream_kib(r) / mn:.2f}x" for name, r in bare if mn > 0)
    summary.ratio_row(path, "streams: messages per proxy CPU-second, gateway vs nginx", ">= 2.5x",
                      ratio, f"{pg or 0:,.0f} vs {pn or 0:,.0f} messages/CPU-s{per_cpu_ref}{note}",
                      valid=not failed)
    summary.ratio_row(path, "memory per open stream, gateway vs nginx", "<= 1.0x",
                      mg / mn if mn > 0 else None, f"{mg:.1f} vs {mn:.1f} KiB{memory_ref}{note}",
                      valid=not failed)


def report(clk_tck, files, summary_path=None):
    runs = [json.load(open(p)) for p in files]
    labels = [r["label"] for r in runs]
    rows = []

    def row(name, fn):
        rows.append((name, [fn(r) for r in runs]))

    row("streams requested", lambda r: f"{r['count']} / {r['connections']} conns")
    row("open at once (hold start)", lambda r: f"{r['open_at_hold_start']}")
    row("open at once (hold end)", lambda r: f"{r['open_at_hold_end']}")
    row("time to open all (s)", lambda r: f"{r['last_first_message_s']:.2f}" if r["all_open"] else f"not all ({r['open_time_s']:.1f} s)")
    row("messages received", lambda r: f"{r['messages']}")
    row("messages/s over the run", lambda r: f"{r['messages'] / r['run_s']:.1f} ({r['run_s']:.1f} s)")
    row("messages/s offered while held", lambda r: f"{r['offered_per_stream'] * r['open_at_hold_start']:.0f}" if r.get("offered_per_stream") else "-")
    row("messages/s received while held", lambda r: f"{r['hold_messages'] / r['hold_measured_s']:.0f}")
    row("messages per proxy CPU-s", lambda r: f"{r['hold_messages'] / hold_cpu_s(r, clk_tck):,.0f}" if r["hold_messages"] and hold_cpu_s(r, clk_tck) > 0 else "-")
    row("proxy CPU s per 100k messages", lambda r: f"{hold_cpu_s(r, clk_tck) / max(1, r['hold_messages']) * 1e5:.2f}" if r["hold_messages"] else "-")
    row("RSS before (MiB)", lambda r: mib(r["before"]["rss_kib"]))
    row("RSS all open, max (MiB)", lambda r: mib(r["during_rss_max_kib"]))
    row("RSS after close (MiB)", lambda r: mib(r["after"]["rss_kib"]))
    row("HWM before (MiB)", lambda r: mib(r["before"]["hwm_kib"]))
    row("HWM all open, max (MiB)", lambda r: mib(r["during_hwm_max_kib"]))
    row("HWM after close (MiB)", lambda r: mib(r["after"]["hwm_kib"]))
    row("RSS per open stream (KiB)", lambda r: f"{rss_per_stream_kib(r):.1f}")
    row("CPU s during hold", lambda r: f"{(r['hold_end']['ticks'] - r['hold_start']['ticks']) / clk_tck:.2f} ({r['hold_measured_s']:.1f} s)")
    row("CPU s opening streams", lambda r: f"{(r['hold_start']['ticks'] - r['before']['ticks']) / clk_tck:.2f}")
    row("CPU s closing streams", lambda r: f"{(r['after']['ticks'] - r['hold_end']['ticks']) / clk_tck:.2f}")
    row("proxy->upstream TCP conns", lambda r: f"{r['during_upstream_conns_max']}")
    row("upstream RSS before (MiB)", lambda r: mib(r["before"]["upstream_rss_kib"]))
    row("upstream RSS all open (MiB)", lambda r: mib(r["during_upstream_rss_max_kib"]))
    row("proxy processes", lambda r: f"{len(r['hold_start']['pids'])}")

    name_w = max(len(n) for n, _ in rows) + 2
    width = max(len(x) for x in labels + [v for _, vals in rows for v in vals]) + 2
    print(f"{'':<{name_w}}" + "".join(f"{x:>{width}}" for x in labels))
    for name, vals in rows:
        print(f"{name:<{name_w}}" + "".join(f"{v:>{width}}" for v in vals))

    failed = False
    for r in runs:
        if r["never_opened"] or r["errors"] or r["open_at_hold_end"] != r["count"]:
            failed = True
        if r["errors"] or r["never_opened"]:
            print(f"\n{r['label']}: problems")
            if r["never_opened"]:
                print(f"  {r['never_opened']} stream(s) never received a message before close")
            for msg, c in sorted(r["errors"].items(), key=lambda x: -x[1]):
                print(f"  {c:6d} × {msg}")
        other = {s: c for s, c in r["statuses"].items() if s != "SERVING"}
        # The ticker upstream flips between SERVING and NOT_SERVING on purpose.
        if other and not r.get("offered_per_stream"):
            print(f"\n{r['label']}: non-SERVING statuses received: {other}")
    if summary_path:
        write_summary(summary_path, clk_tck, runs, failed)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--target", required=True)
    r.add_argument("--label", default="proxy")
    r.add_argument("--count", type=int, default=1000)
    r.add_argument("--connections", type=int, default=10)
    r.add_argument("--hold", type=float, default=10)
    r.add_argument("--open-timeout", type=float, default=20)
    r.add_argument("--settle", type=float, default=2, help="seconds after close before the 'after' sample")
    r.add_argument("--sample-interval", type=float, default=0.5)
    r.add_argument("--method", default=METHOD, help="the server-streaming path to call")
    r.add_argument("--service", default=SERVICE)
    r.add_argument("--token", default="", help="sent as 'authorization: Bearer TOKEN'")
    r.add_argument("--pids", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    r.add_argument("--children-of", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    r.add_argument("--upstream-port", type=int, default=0)
    r.add_argument("--upstream-pid", type=int, default=0, help="the upstream, for its RSS")
    r.add_argument("--offered-per-stream", type=float, default=0,
                   help="messages/s the upstream sends on each stream (the ticker's flips/s), for the report")
    r.add_argument("--out", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("clk_tck", type=int)
    rep.add_argument("files", nargs="+")
    rep.add_argument("--summary", default="", help="append the two stream targets here (bench/summary.py)")
    args = p.parse_args()
    if args.cmd == "run":
        asyncio.run(run(args))
        return 0
    return report(args.clk_tck, args.files, args.summary)


if __name__ == "__main__":
    sys.exit(main())
