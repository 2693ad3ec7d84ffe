#!/usr/bin/env python3
"""Checks docs/grafana/shardmq.json against the metrics shardmq exposes.

    python3 docs/grafana/check.py                       # names from the source
    python3 docs/grafana/check.py --scrape core.txt --scrape http://127.0.0.1:18083/metrics

The dashboard must be valid JSON shaped like an exported dashboard (a DS_PROMETHEUS input,
__requires, schemaVersion, unique panel ids, an `instance` variable, every query on
${DS_PROMETHEUS}). Every metric name in a query must be one the source defines: a string
literal "shardmq_..." in src/ or shards/cluster/ outside the test modules, with `_total` when
it is a counter (as /metrics spells it; see is_counter for how the source is read). A `_total`
name may only be read through rate(), irate() or increase(), a name without it never.

With --scrape (a file or an http:// URL of /metrics, repeatable), every name must also appear in
one of those expositions: a standalone node lacks the cluster and RLOG families, so pass a core's
and a replicant's to cover all of them. Exit status 1 on any error.
"""

import argparse
import json
import os
import re
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "docs", "grafana", "shardmq.json")
SOURCES = [os.path.join(ROOT, "src"), os.path.join(ROOT, "shards", "cluster")]
LITERAL = re.compile(r'"(shardmq_[a-z0-9_]+)"')
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
COUNTER_FUNCS = {"rate", "irate", "increase"}
# PromQL words that are not metric names when they stand alone.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}
SCRAPE_TIMEOUT_S = 5
PANELS_MAX = 500
BOOL_WINDOW_CHARS = 400


def is_counter(text, m):
    """Whether the metric literal m of a source text is a counter, read the way the source
    writes them: a name ending in _total (src/api.rs figure_samples); an entry of an array bound
    to `counters` or `gauges` (shards/cluster samples); else the first true/false after the name,
    before the next name (the `counter` field or tuple element of a Sample, src/storage.rs);
    none means a gauge (src/api.rs metrics and register_rlog)."""
    if m.group(1).endswith("_total"):
        return True
    lets = re.findall(r"\blet\s+(?:mut\s+)?(\w+)", text[:m.start()])
    if lets and lets[-1] in ("counters", "gauges"):
        return lets[-1] == "counters"
    following = LITERAL.search(text, m.end())
    window = text[m.end():following.start() if following else len(text)][:BOOL_WINDOW_CHARS]
    flag = re.search(r"\b(true|false)\b", window)
    return flag is not None and flag.group(1) == "true"


def source_names():
    """Metric names the source defines, as /metrics spells them (a counter with _total), each
    with the file that defines it."""
    names = {}
    for top in SOURCES:
        for dirpath, _, files in os.walk(top):
            for name in sorted(files):
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read().split("#[cfg(test)]")[0]
                for m in LITERAL.finditer(text):
                    exposed = m.group(1)
                    if is_counter(text, m) and not exposed.endswith("_total"):
                        exposed += "_total"
                    names.setdefault(exposed, os.path.relpath(path, ROOT))
    return names


def scraped_names(sources):
    """Sample names of OpenMetrics/Prometheus text expositions (files or http URLs)."""
    names = set()
    for src in sources:
        if src.startswith(("http://", "https://")):
            with urllib.request.urlopen(src, timeout=SCRAPE_TIMEOUT_S) as resp:
                text = resp.read().decode("utf-8")
        else:
            with open(src, encoding="utf-8") as f:
                text = f.read()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def metric_refs(expr):
    """(name, inside a counter function) for every metric name in a PromQL expression."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    refs, stack = [], []  # stack: per open parenthesis, the function it belongs to
    pos = 0
    while pos < len(expr):
        c = expr[pos]
        m = IDENT.match(expr, pos)
        if m and not (pos > 0 and (expr[pos - 1].isdigit() or expr[pos - 1] == ".")):
            word, pos = m.group(0), m.end()
            rest = expr[pos:].lstrip()
            if rest.startswith("("):
                stack.append(word)
                pos = len(expr) - len(rest) + 1
            elif word.lower() not in KEYWORDS:
                refs.append((word, any(f in COUNTER_FUNCS for f in stack)))
            continue
        if c == "(":
            stack.append("")
        elif c == ")" and stack:
            stack.pop()
        pos += 1
    return refs


def panels_of(dashboard):
    """Every panel, rows' nested panels included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    assert len(out) <= PANELS_MAX, f"{len(out)} panels: at most {PANELS_MAX}"
    return out


def check(dashboard, known, scraped=None):
    """The list of errors; empty when the dashboard is fine."""
    errors = []
    inputs = [i.get("name") for i in dashboard.get("__inputs", [])]
    if "DS_PROMETHEUS" not in inputs:
        errors.append("__inputs: no DS_PROMETHEUS datasource input")
    if not any(r.get("id") == "prometheus" for r in dashboard.get("__requires", [])):
        errors.append("__requires: no prometheus datasource")
    if not isinstance(dashboard.get("schemaVersion"), int):
        errors.append("schemaVersion: missing")
    variables = [v.get("name") for v in dashboard.get("templating", {}).get("list", [])]
    if "instance" not in variables:
        errors.append("templating: no `instance` variable")
    ids = [p.get("id") for p in panels_of(dashboard)]
    if len(ids) != len(set(ids)):
        errors.append(f"panel ids are not unique: {sorted(i for i in ids if ids.count(i) > 1)}")
    for p in panels_of(dashboard):
        for t in p.get("targets", []):
            where = f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}"
            if (t.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
                errors.append(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
            expr = t.get("expr", "")
            if not expr:
                errors.append(f"{where}: no expr")
            for name, in_counter_func in metric_refs(expr):
                if name not in known:
                    errors.append(f"{where}: {name} is not a metric of the source")
                elif scraped is not None and name not in scraped:
                    errors.append(f"{where}: {name} is in none of the scraped expositions")
                elif name.endswith("_total") and not in_counter_func:
                    errors.append(f"{where}: counter {name} outside rate/irate/increase")
                elif not name.endswith("_total") and in_counter_func:
                    errors.append(f"{where}: {name} (not a counter) inside rate/irate/increase")
    return errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dashboard", default=DASHBOARD)
    p.add_argument("--scrape", action="append", default=[],
                   help="a /metrics exposition: file or http(s) URL (repeatable)")
    a = p.parse_args(argv)
    with open(a.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    known = source_names()
    scraped = scraped_names(a.scrape) if a.scrape else None
    errors = check(dashboard, known, scraped)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    used = {n for pnl in panels_of(dashboard) for t in pnl.get("targets", [])
            for n, _ in metric_refs(t.get("expr", ""))}
    families = {n.removesuffix("_total") for n in known}
    unused = sorted(f for f in families if f not in used and f + "_total" not in used)
    queries = sum(len(pnl.get("targets", [])) for pnl in panels_of(dashboard))
    checked = "the source" + (f" and {len(a.scrape)} scrape(s)" if scraped is not None else "")
    print(f"{os.path.relpath(a.dashboard)}: {len(panels_of(dashboard))} panels, {queries} queries, "
          f"{len(used)} metric names, checked against {checked}: "
          + (f"{len(errors)} error(s)" if errors else "ok"))
    if unused:
        print("metric families of the source on no panel: " + ", ".join(unused))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
