#!/usr/bin/env python3
"""Drops CQL keyspaces: bench/events/run.sh's clean-up of its CQL backend.

Usage: cql_drop.py HOST:PORT KEYSPACE [KEYSPACE...]

Speaks the CQL native protocol v4 over a plain socket (STARTUP, then one
QUERY `DROP KEYSPACE IF EXISTS` per keyspace), like the probe in
scripts/cassandra.sh, so no driver or cqlsh is needed. Exits 1 if any drop
failed.
"""

import re
import socket
import struct
import sys


def frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_frame(s):
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(s, 9))
    return opcode, recv_exact(s, length)


def string(b):
    return struct.pack(">H", len(b)) + b


def error_text(body):
    code = struct.unpack(">i", body[:4])[0]
    (n,) = struct.unpack(">H", body[4:6])
    return "error 0x%04x: %s" % (code, body[6:6 + n].decode("utf-8", "replace"))


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    keyspaces = sys.argv[2:]
    s = socket.create_connection((host, int(port)), timeout=10)
    s.settimeout(60)  # schema changes are slow on a busy node
    s.sendall(frame(0, 0x01, struct.pack(">H", 1) + string(b"CQL_VERSION") + string(b"3.0.0")))
    opcode, body = read_frame(s)
    if opcode != 0x02:  # READY
        raise SystemExit("STARTUP: " + (error_text(body) if opcode == 0 else "opcode 0x%02x" % opcode))
    failed = 0
    for i, keyspace in enumerate(keyspaces, start=1):
        if not re.fullmatch(r"[A-Za-z0-9_]{1,48}", keyspace):
            print(f"cql_drop.py: not a keyspace name: {keyspace!r}", file=sys.stderr)
            failed += 1
            continue
        q = f"DROP KEYSPACE IF EXISTS {keyspace}".encode()
        s.sendall(frame(i, 0x07, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)))
        opcode, body = read_frame(s)
        if opcode == 0x00:
            print(f"cql_drop.py: {keyspace}: {error_text(body)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
