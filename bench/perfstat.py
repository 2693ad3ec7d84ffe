"""Shared by the bench/why-*.sh scripts: what `perf stat -x,` and shardmq-bench --json wrote."""

import json


def perf_counts(path):
    """Event name -> count, from a `perf stat -x,` CSV (lines "count,unit,event,..."); events
    perf could not count ("<not supported>", "<not counted>") are left out."""
    counts = {}
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) > 2:
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                pass
    return counts


def bench_summary(path, accept=lambda o: o.get("summary")):
    """The last JSON line of a shardmq-bench --json output that `accept` takes (by default the
    summary), or {} if none."""
    found = {}
    for line in open(path):
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if isinstance(o, dict) and accept(o):
            found = o
    return found
