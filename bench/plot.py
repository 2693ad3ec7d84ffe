#!/usr/bin/env python3
"""SVG bar charts of a bench/compare run, with the Python standard library only.

Reads the JSON lines bench/compare writes ($WORK/results.jsonl: one record per broker and
scenario, the idle-memory scenario named "idle") and writes into --out:

  throughput.svg      msg/s received by subscribers, per scenario ("row") and broker
  p99.svg             p99 latency (publisher encode to subscriber decode), per row and broker
  per-cpu-second.svg  messages received per broker CPU-second (only if records carry CPU time)
  idle-memory.svg     broker RSS per idle connection, per broker

Rows are horizontal bar groups, one bar per broker, the value printed at the end of each bar.
Saturation rows (`-sat`) and fixed-load rows (`-fixed`) are separate panels with their own axis,
since their values differ by orders of magnitude; a panel whose values still span more than
LOG_RATIO_MIN is drawn on a log axis (the p99 latencies usually are). Each broker keeps one
colour in every chart.

    python3 bench/plot.py --results /tmp/shardmq-compare.X/results.jsonl --out docs/benchmarks
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
from typing import Callable, NamedTuple, Optional
from xml.sax.saxutils import escape, quoteattr

# A panel whose largest value over its smallest exceeds this gets a log axis.
LOG_RATIO_MIN = 100
# Colour-blind-safe (Okabe-Ito); known brokers keep theirs in every run.
BROKER_COLOURS = {
    "shardmq": "#0072B2",
    "mosquitto": "#E69F00",
    "rumqttd": "#009E73",
    "flashmq": "#D55E00",
    "emqx": "#CC79A7",
    "nanomq": "#56B4E9",
}
SPARE_COLOURS = ["#7F3C8D", "#8C6D31", "#3969AC", "#A5AA99", "#E73F74", "#11A579"]
DASHBOARD_SUFFIX = "-dashboard"

WIDTH = 960
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
FONT_PX = 12
CHAR_PX = 6.8  # average advance of a FONT_PX character, for layout
BAR_PX = 15
BAR_GAP_PX = 2
GROUP_GAP_PX = 12
MARGIN_PX = 16
TICKS_MAX = 6
BROKERS_MAX = len(BROKER_COLOURS) + len(SPARE_COLOURS)
ROWS_MAX = 200


def load(path):
    """The records of a results file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scenario_order(records):
    """Scenario names other than "idle", in the order of the run, each "X-dashboard"
    (bench/compare's dashboard-open row) right after its plain row X."""
    names = list(dict.fromkeys(r["scenario"] for r in records if r.get("scenario") != "idle"))
    pos = {s: i for i, s in enumerate(names)}
    return sorted(names, key=lambda s: pos.get(s.removesuffix(DASHBOARD_SUFFIX), pos[s]))


def broker_colours(brokers):
    """A colour per broker: the known ones fixed, others from the spare list by name."""
    assert len(brokers) <= BROKERS_MAX, f"{len(brokers)} brokers: at most {BROKERS_MAX} colours"
    spare = iter(SPARE_COLOURS)
    return {b: BROKER_COLOURS.get(b) or next(spare) for b in sorted(brokers)}


def panel_of(scenario):
    if "-sat" in scenario:
        return "saturation"
    if "-fixed" in scenario:
        return "fixed offered load"
    return "other"


# --- value formats ------------------------------------------------------------------------


def count_full(x):
    return f"{x:,.0f}"


def count_short(x):
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def duration_us(x, short=False):
    """A duration given in µs, in the unit that fits: 463 µs, 24.0 ms, 1.41 s; short (for
    ticks): no trailing zeros."""
    for div, unit, spec in ((1e6, "s", ".2f"), (1e3, "ms", ".1f"), (1.0, "µs", ".0f")):
        if x >= div or div == 1.0:
            return f"{x / div:{'g' if short else spec}} {unit}"
    raise AssertionError("unreachable: the last unit takes every value")


def duration_short_us(x):
    return duration_us(x, short=True)


def bytes_full(x):
    return f"{x:,.0f} B"


# --- metrics: what each chart reads ---------------------------------------------------------


def recv_rate(r):
    return r.get("recv_rate")


def p99_us(r):
    return (r.get("latency_us") or {}).get("p99")


def per_cpu_second(r):
    received, cpu = r.get("received"), r.get("broker_cpu_s")
    if received is None or not cpu:
        return None
    return received / cpu


def idle_bytes(r):
    return r.get("bytes_per_conn")


class Chart(NamedTuple):
    """What one SVG shows: file name, title, axis title, the value of a record (None: no
    result), the format of a bar's label and of a tick."""

    file: str
    title: str
    axis_title: str
    value: Callable[[dict], Optional[float]]
    fmt: Callable[[float], str]
    tick_fmt: Callable[[float], str]


ROW_CHARTS = [
    Chart("throughput.svg",
          "Throughput: messages per second received by subscribers (higher is better)",
          "msg/s", recv_rate, count_full, count_short),
    Chart("p99.svg", "p99 latency, publisher encode to subscriber decode (lower is better)",
          "p99 latency", p99_us, duration_us, duration_short_us),
    Chart("per-cpu-second.svg", "Messages received per broker CPU-second (higher is better)",
          "messages per broker CPU-second (utime + stime)", per_cpu_second, count_full,
          count_short),
]
IDLE_CHART = Chart("idle-memory.svg", "Broker memory per idle connection (lower is better)",
                   "bytes of broker RSS per idle connection", idle_bytes, bytes_full, count_short)


# --- axes -----------------------------------------------------------------------------------


class Axis:
    """Maps values to pixels over [x0, x1]: linear from 0, or log10 over whole decades."""

    def __init__(self, values, x0, x1):
        positive = [v for v in values if v > 0]
        self.x0, self.x1 = x0, x1
        hi = max(positive, default=1.0)
        lo = min(positive, default=1.0)
        self.log = hi / lo > LOG_RATIO_MIN
        if self.log:
            self.lo_exp = math.ceil(math.log10(lo)) - 1
            self.hi_exp = max(math.ceil(math.log10(hi)), self.lo_exp + 1)
        else:
            self.step = nice_step(hi / (TICKS_MAX - 1))
            self.hi = self.step * math.ceil(hi / self.step)

    def px(self, v):
        if self.log:
            if v <= 0:
                return self.x0
            t = (math.log10(v) - self.lo_exp) / (self.hi_exp - self.lo_exp)
        else:
            t = v / self.hi
        return self.x0 + max(0.0, min(1.0, t)) * (self.x1 - self.x0)

    def ticks(self):
        if self.log:
            return [10.0 ** e for e in range(self.lo_exp, self.hi_exp + 1)]
        n = round(self.hi / self.step)
        return [i * self.step for i in range(n + 1)]


def nice_step(raw):
    """The smallest 1, 2 or 5 times a power of ten that is at least raw."""
    if raw <= 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= raw:
            return m * 10.0 ** exp
    raise AssertionError("unreachable: 10 x 10^exp >= raw")


# --- SVG ------------------------------------------------------------------------------------


def text_px(s, px=FONT_PX):
    return len(s) * CHAR_PX * px / FONT_PX


def text(x, y, s, size=FONT_PX, anchor="start", weight="normal", fill="#222", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{extra}>{escape(s)}</text>')


class Svg:
    def __init__(self, title):
        self.title = title
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def render(self, height):
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
                f'viewBox="0 0 {WIDTH} {height:.0f}" role="img" font-family={quoteattr(FONT)}>'
                f'<title>{escape(self.title)}</title>'
                f'<rect width="100%" height="100%" fill="#ffffff"/>')
        return head + "\n" + "\n".join(self.parts) + "\n</svg>\n"


def header(svg, title, subtitle, brokers, colours):
    """Title, subtitle and the legend; returns the y below them."""
    svg.add(text(MARGIN_PX, 26, title, size=16, weight="bold"))
    svg.add(text(MARGIN_PX, 46, subtitle, size=FONT_PX, fill="#555"))
    x, y = MARGIN_PX, 68
    for b in brokers:
        svg.add(f'<rect class="legend" data-broker={quoteattr(b)} x="{x}" y="{y - 10}" '
                f'width="12" height="12" fill="{colours[b]}"/>')
        svg.add(text(x + 17, y, b))
        x += 17 + text_px(b) + 22
    return y + 16


def bar(parts, broker, row, x, y, width, colour, label):
    parts.append(f'<rect class="bar" data-broker={quoteattr(broker)} data-row={quoteattr(row)} '
                 f'x="{x:.1f}" y="{y:.1f}" width="{max(width, 0.5):.1f}" height="{BAR_PX}" '
                 f'fill="{colour}"><title>{escape(f"{broker}, {row}: {label}")}</title></rect>')
    parts.append(text(x + width + 4, y + BAR_PX - 3.5, label, size=11, extra=' class="value"'))


def missing_bar(parts, broker, row, x, y, colour):
    parts.append(f'<rect class="bar missing" data-broker={quoteattr(broker)} '
                 f'data-row={quoteattr(row)} x="{x}" y="{y:.1f}" width="3" height="{BAR_PX}" '
                 f'fill="{colour}"/>')
    parts.append(text(x + 7, y + BAR_PX - 3.5, f"n/a ({broker}: no result)", size=11,
                      fill="#888", extra=' class="value"'))


def columns(groups, chart):
    """The x of the axis origin (right of the widest row label) and of its end (left of room
    for the widest bar label), the same for every panel of a chart."""
    labels = [chart.fmt(v) for _, bars in groups for _, v in bars if v is not None] or ["0"]
    x0 = MARGIN_PX + max(text_px(g) for g, _ in groups) + 12
    return x0, WIDTH - MARGIN_PX - max(text_px(s, 11) for s in labels) - 8


def panel(svg, y, name, groups, colours, chart, x0, x1):
    """One panel: a heading, then per group (label, [(broker, value or None)]) its bars over the
    grid, then the axis. Returns the y below it."""
    axis = Axis([v for _, bars in groups for _, v in bars if v is not None], x0, x1)
    if name:
        svg.add(text(MARGIN_PX, y + 14, name, size=13, weight="bold"))
        y += 22
    top = y
    parts = []
    for g, bars in groups:
        h = len(bars) * (BAR_PX + BAR_GAP_PX) - BAR_GAP_PX
        parts.append(text(x0 - 8, y + h / 2 + 4, g, anchor="end", extra=' class="row"'))
        for broker, v in bars:
            if v is None:
                missing_bar(parts, broker, g, x0, y, colours[broker])
            else:
                bar(parts, broker, g, x0, y, axis.px(v) - x0, colours[broker], chart.fmt(v))
            y += BAR_PX + BAR_GAP_PX
        y += GROUP_GAP_PX - BAR_GAP_PX
    bottom = y - GROUP_GAP_PX + 6
    for t in axis.ticks():
        x = axis.px(t)
        svg.add(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        svg.add(text(x, bottom + 14, chart.tick_fmt(t) if t else "0", size=11, anchor="middle",
                     fill="#555"))
    svg.parts.extend(parts)
    svg.add(f'<line x1="{x0}" y1="{top - 4}" x2="{x0}" y2="{bottom}" stroke="#888"/>')
    scale = ", log scale" if axis.log else ""
    svg.add(text((x0 + x1) / 2, bottom + 32, chart.axis_title + scale, anchor="middle",
                 fill="#333", extra=' class="axis-title"'))
    return bottom + 48


def row_chart(records, brokers, colours, chart, subtitle):
    """A grouped bar chart: one group per scenario, panels by saturation / fixed load. None when
    no record has a value."""
    by = {(r["broker"], r["scenario"]): r for r in records}
    rows = scenario_order(records)
    assert len(rows) <= ROWS_MAX, f"{len(rows)} scenarios: at most {ROWS_MAX}"
    if not any(chart.value(by[k]) is not None for k in by if k[1] != "idle"):
        return None
    panels = {}
    for s in rows:
        bars = [(b, chart.value(by[(b, s)])) for b in brokers if (b, s) in by]
        panels.setdefault(panel_of(s), []).append((s, bars))
    x0, x1 = columns([g for groups in panels.values() for g in groups], chart)
    svg = Svg(chart.title)
    y = header(svg, chart.title, subtitle, brokers, colours)
    for name, groups in panels.items():
        y = panel(svg, y, name if len(panels) > 1 else "", groups, colours, chart, x0, x1)
    return svg.render(y)


def idle_chart(records, brokers, colours, chart, subtitle):
    """One bar per broker of the idle scenario; None when there is none."""
    idle = {r["broker"]: r for r in records if r.get("scenario") == "idle"}
    if not any(chart.value(r) is not None for r in idle.values()):
        return None
    held = {b: r.get("connect_succ") for b, r in idle.items()}
    if len(set(held.values())) == 1 and None not in held.values():
        subtitle += f"; {next(iter(held.values())):,} idle connections"
    else:
        subtitle += "; idle connections held: " + ", ".join(
            f"{b} {'n/a' if n is None else f'{n:,}'}" for b, n in held.items())
    groups = [(b, [(b, chart.value(idle[b]))]) for b in brokers if b in idle]
    svg = Svg(chart.title)
    y = header(svg, chart.title, subtitle, brokers, colours)
    y = panel(svg, y, "", groups, colours, chart, *columns(groups, chart))
    return svg.render(y)


def machine_line():
    u = platform.uname()
    return f"{os.cpu_count()} CPUs, {u.system} {u.release}"


def write_charts(records, out, date, machine):
    """Writes every chart the records have data for into out; removes a chart of ours that has
    none (so a rerun leaves no stale file). Returns the paths written."""
    brokers = list(dict.fromkeys(r["broker"] for r in records))
    colours = broker_colours(brokers)
    subtitle = f"bench/compare, {date}, {machine}"
    os.makedirs(out, exist_ok=True)
    written = []
    charts = [(row_chart, c) for c in ROW_CHARTS] + [(idle_chart, IDLE_CHART)]
    for draw, chart in charts:
        path = os.path.join(out, chart.file)
        svg = draw(records, brokers, colours, chart, subtitle)
        if svg is None:
            if os.path.exists(path):
                os.remove(path)
            print(f"plot: no data for {chart.file}, not written", file=sys.stderr)
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg)
        written.append(path)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", required=True, help="results.jsonl of a bench/compare run")
    p.add_argument("--out", required=True, help="directory for the SVG files")
    p.add_argument("--date", help="date in the titles (default: the results file's mtime)")
    p.add_argument("--machine",
                   help="machine in the titles (default: CPUs and kernel of this host)")
    a = p.parse_args(argv)
    records = load(a.results)
    date = a.date or datetime.date.fromtimestamp(os.path.getmtime(a.results)).isoformat()
    for path in write_charts(records, a.out, date, a.machine or machine_line()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
