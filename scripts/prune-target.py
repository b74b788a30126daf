#!/usr/bin/env python3
"""Removes stale test and binary executables from a cargo target dir.

Every rebuild of a crate whose dependencies changed leaves its old test
executables behind under new hashes (half a GB each with debug info), and
CI's target dir lives from one clone to the next: on a shared disk it grew
to 60 GB. This keeps, for each executable in <target>/<profile>/deps, the
newest one built from the same source file (two crates may both have a
`tests/scale_out.rs`); cargo rebuilds anything it still wants.

    python3 scripts/prune-target.py TARGET_DIR
"""

import os
import re
import sys

HASHED = re.compile(r"^(.+)-[0-9a-f]{16}$")


def first_source(dep_file):
    """The first source file a `.d` file names (the crate's root)."""
    try:
        with open(dep_file, encoding="utf-8", errors="replace") as f:
            line = f.readline()
    except OSError:
        return None
    _, _, sources = line.partition(": ")
    return sources.split(" ", 1)[0].strip() or None


def prune(deps):
    newest = {}
    for name in os.listdir(deps):
        path = os.path.join(deps, name)
        match = HASHED.match(name)
        if not match or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        key = (match.group(1), first_source(path + ".d"))
        newest.setdefault(key, []).append((os.path.getmtime(path), path))
    freed = 0
    for versions in newest.values():
        versions.sort(reverse=True)
        for _, path in versions[1:]:
            freed += os.path.getsize(path)
            for stale in (path, path + ".d"):
                try:
                    os.remove(stale)
                except FileNotFoundError:
                    pass
    return freed


def main():
    target = sys.argv[1]
    freed = 0
    for profile in sorted(os.listdir(target)) if os.path.isdir(target) else []:
        deps = os.path.join(target, profile, "deps")
        if os.path.isdir(deps):
            freed += prune(deps)
    print(f"prune-target: {freed / 1e9:.1f} GB of stale executables removed from {target}")


if __name__ == "__main__":
    main()
