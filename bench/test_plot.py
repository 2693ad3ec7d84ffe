"""Tests of bench/plot.py: python3 -m unittest discover -s bench -p 'test_*.py'"""

import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
BROKERS = ["shardmq", "mosquitto", "rumqttd"]
ROWS = ["1to1-q0-16B-sat", "1to1-q0-16B-sat-dashboard", "1to1-q0-16B-fixed", "fanout-q0-16B-sat"]


def record(broker, scenario, rate, p99, received=None, cpu=None, **extra):
    r = {"command": "pubsub", "summary": True, "broker": broker, "scenario": scenario, "rc": 0,
         "recv_rate": rate, "latency_us": {"p50": p99 / 3, "p99": p99}, **extra}
    if received is not None:
        r["received"] = received
    if cpu is not None:
        r["broker_cpu_s"] = cpu
    return r


# A small run in bench/compare's order: shardmq first (with its dashboard row), a failed
# mosquitto scenario (no summary), rumqttd without a fan-out row, and the idle records.
FIXTURE = [
    record("shardmq", "1to1-q0-16B-sat", 1263987.0, 24000, 6319935, 5.0),
    record("shardmq", "1to1-q0-16B-sat-dashboard", 1203987.0, 26000, 6019935, 5.1,
           api_poll={"overview": {"requests": 3, "status": {"404": 3}, "failed": 0}}),
    record("shardmq", "1to1-q0-16B-fixed", 19999.0, 1500, 99995, 4.7),
    record("shardmq", "fanout-q0-16B-sat", 2218819.0, 6800, 11094095, 3.3),
    {"broker": "shardmq", "scenario": "idle", "bytes_per_conn": 4860.2, "connect_succ": 10000},
    record("mosquitto", "1to1-q0-16B-sat", 67891.0, 1412400, 339455, 5.2),
    {"broker": "mosquitto", "scenario": "1to1-q0-16B-fixed", "rc": 1},
    record("mosquitto", "fanout-q0-16B-sat", 77583.0, 209200, 387915, 5.2),
    {"broker": "mosquitto", "scenario": "idle", "bytes_per_conn": 14970.0, "connect_succ": 10000},
    record("rumqttd", "1to1-q0-16B-sat", 295411.0, 243400, 1477055, 5.1),
    record("rumqttd", "1to1-q0-16B-fixed", 19998.0, 5000, 99990, 4.1),
    {"broker": "rumqttd", "scenario": "idle", "bytes_per_conn": 30000.0, "connect_succ": 9000},
]


def texts(root, cls=None):
    return ["".join(t.itertext()) for t in root.iter(SVG + "text")
            if cls is None or t.get("class") == cls]


class PlotTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.tmp.name, "benchmarks")

    def tearDown(self):
        self.tmp.cleanup()

    def run_plot(self, records):
        results = os.path.join(self.tmp.name, "results.jsonl")
        with open(results, "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(r) for r in records) + "\n\n")
        args = ["--results", results, "--out", self.out, "--date", "2026-12-02",
                "--machine", "2 CPUs, Linux 6.18.44"]
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            self.assertEqual(plot.main(args), 0)
        return {name: ET.parse(os.path.join(self.out, name)).getroot()
                for name in sorted(os.listdir(self.out))}

    def test_every_chart_is_svg_with_every_broker_and_row(self):
        svgs = self.run_plot(FIXTURE)
        self.assertEqual(sorted(svgs), ["idle-memory.svg", "p99.svg", "per-cpu-second.svg",
                                        "throughput.svg"])
        for name, root in svgs.items():
            self.assertEqual(root.tag, SVG + "svg", name)
            words = texts(root)
            self.assertIn("2026-12-02", " ".join(words), name)
            self.assertIn("2 CPUs, Linux 6.18.44", " ".join(words), name)
            for b in BROKERS:
                self.assertIn(b, words, f"{name}: legend lacks {b}")
            if name != "idle-memory.svg":
                for row in ROWS:
                    self.assertIn(row, words, f"{name}: no row {row}")

    def test_values_are_printed_on_the_bars(self):
        svgs = self.run_plot(FIXTURE)
        self.assertIn("1,263,987", texts(svgs["throughput.svg"]))
        self.assertIn("1.41 s", texts(svgs["p99.svg"]))
        self.assertIn("1,263,987", texts(svgs["per-cpu-second.svg"]))  # 6,319,935 / 5.0 s
        self.assertIn("4,860 B", texts(svgs["idle-memory.svg"]))
        # The failed mosquitto scenario is shown as such, not as a zero.
        self.assertTrue(any(t.startswith("n/a (mosquitto") for t in texts(svgs["throughput.svg"])))

    def test_a_broker_has_one_colour_in_every_chart(self):
        colours = {}
        for name, root in self.run_plot(FIXTURE).items():
            for rect in root.iter(SVG + "rect"):
                b = rect.get("data-broker")
                if b:
                    colours.setdefault(b, set()).add(rect.get("fill"))
        self.assertEqual(sorted(colours), sorted(BROKERS))
        for b, fills in colours.items():
            self.assertEqual(len(fills), 1, f"{b}: {fills}")
        self.assertEqual(len({next(iter(f)) for f in colours.values()}), len(BROKERS))

    def test_the_dashboard_row_follows_its_plain_row(self):
        later = [{**FIXTURE[1], "broker": "shardmq"}]
        order = plot.scenario_order(FIXTURE[2:] + FIXTURE[:1] + later)
        self.assertEqual(order.index("1to1-q0-16B-sat-dashboard"),
                         order.index("1to1-q0-16B-sat") + 1)
        rows = texts(self.run_plot(FIXTURE)["throughput.svg"], "row")
        self.assertEqual(rows.index("1to1-q0-16B-sat-dashboard"), rows.index("1to1-q0-16B-sat") + 1)

    def test_log_axis_only_when_values_span_over_a_hundred_times(self):
        svgs = self.run_plot(FIXTURE)
        # Saturation p99: 6.8 ms .. 1.41 s (207x); fixed: 1.5 .. 5 ms.
        self.assertEqual(texts(svgs["p99.svg"], "axis-title"),
                         ["p99 latency, log scale", "p99 latency"])
        # Saturation msg/s: 67,891 .. 2,218,819 is 33x.
        self.assertEqual(texts(svgs["throughput.svg"], "axis-title"), ["msg/s", "msg/s"])

    def test_no_cpu_time_no_per_cpu_chart(self):
        os.makedirs(self.out)
        stale = os.path.join(self.out, "per-cpu-second.svg")
        open(stale, "w").close()
        records = [{k: v for k, v in r.items() if k != "broker_cpu_s"} for r in FIXTURE]
        self.assertEqual(sorted(self.run_plot(records)),
                         ["idle-memory.svg", "p99.svg", "throughput.svg"])

    def test_idle_counts_that_differ_are_named(self):
        subtitle = texts(self.run_plot(FIXTURE)["idle-memory.svg"])[1]
        self.assertIn("shardmq 10,000, mosquitto 10,000, rumqttd 9,000", subtitle)

    def test_axis(self):
        axis = plot.Axis([20000.0, 1263987.0], 0, 100)
        self.assertFalse(axis.log)
        self.assertEqual(axis.ticks(), [0, 500000, 1000000, 1500000])
        self.assertEqual(axis.px(1500000), 100)
        axis = plot.Axis([463.0, 1412400.0], 0, 100)
        self.assertTrue(axis.log)
        self.assertEqual(axis.ticks(), [100, 1000, 10000, 100000, 1000000, 10000000])
        self.assertEqual(axis.px(1000), 20)
        self.assertEqual([plot.nice_step(x) for x in (0.3, 1, 1.1, 3, 7, 4500)],
                         [0.5, 1, 2, 5, 10, 5000])


if __name__ == "__main__":
    unittest.main()
