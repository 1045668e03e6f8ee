"""The load harness (runner.run, summarize, the command line) and the
regression comparison of ``./run_tests --compare``.

``run`` is driven by fake load functions that return fixed ``(t0, t1)``
pairs, so every percentile is known exactly and no test reads a clock.
"""

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import unittest

import audit_checks
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = {"count", "concurrency", "rps", "p50_ms", "p90_ms",
               "p95_ms", "p99_ms", "avg_ms"}


class FakeLoad:
    """A load function whose n-th timed call reports ``latencies_ms[n]``.

    Warmup calls (the first ``warmup``) report ``warmup_ms``, which no
    metric may include.  Records the thread of every timed call.
    """

    def __init__(self, latencies_ms, warmup=0, warmup_ms=10 ** 6,
                 barrier=None):
        self.latencies_ms = list(latencies_ms)
        self.warmup = warmup
        self.warmup_ms = warmup_ms
        self.barrier = barrier
        self.calls = 0
        self.threads = []
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            n = self.calls
            self.calls += 1
        if n < self.warmup:
            return 0.0, self.warmup_ms / 1000.0
        with self.lock:
            self.threads.append(threading.get_ident())
        if self.barrier is not None:
            self.barrier.wait(30)
        return 0.0, self.latencies_ms[n - self.warmup] / 1000.0


class RunCallsTest(unittest.TestCase):

    def test_load_fn_is_called_warmup_plus_total_times(self):
        for warmup, total, concurrency in ((0, 1, 1), (3, 17, 4),
                                           (5, 40, 40)):
            with self.subTest(warmup=warmup, total=total):
                load = FakeLoad([1.0] * total, warmup=warmup)
                metrics, latencies = runner.run(load, warmup, total,
                                                concurrency)
                self.assertEqual(load.calls, warmup + total)
                self.assertEqual(metrics["count"], total)
                self.assertEqual(len(latencies), total)


class RunUsesConcurrencyThreadsTest(unittest.TestCase):

    def test_timed_calls_run_on_exactly_concurrency_threads_at_once(self):
        # Every timed call waits until `concurrency` calls are waiting,
        # so the run can only finish if that many run side by side.
        concurrency = 6
        load = FakeLoad([2.0] * 24, warmup=2,
                        barrier=threading.Barrier(concurrency))
        metrics, _ = runner.run(load, 2, 24, concurrency)
        self.assertEqual(len(load.threads), 24)
        self.assertEqual(len(set(load.threads)), concurrency)
        self.assertNotIn(threading.get_ident(), load.threads)
        self.assertEqual(metrics["concurrency"], concurrency)


class RunLatenciesComeFromThePairsTest(unittest.TestCase):

    def test_five_latencies_give_interpolated_percentiles(self):
        load = FakeLoad([30.0, 10.0, 50.0, 20.0, 40.0], warmup=3)
        metrics, latencies = runner.run(load, 3, 5, 2)
        self.assertEqual(sorted(round(x, 9) for x in latencies),
                         [10.0, 20.0, 30.0, 40.0, 50.0])
        expected = {"p50_ms": 30.0, "p90_ms": 46.0, "p95_ms": 48.0,
                    "p99_ms": 49.6, "avg_ms": 30.0}
        for key, value in expected.items():
            with self.subTest(key=key):
                self.assertAlmostEqual(metrics[key], value, places=9)

    def test_a_hundred_latencies_give_the_linear_percentiles(self):
        load = FakeLoad([float(ms) for ms in range(100, 0, -1)])
        metrics, _ = runner.run(load, 0, 100, 8)
        expected = {"p50_ms": 50.5, "p90_ms": 90.1, "p95_ms": 95.05,
                    "p99_ms": 99.01, "avg_ms": 50.5}
        for key, value in expected.items():
            with self.subTest(key=key):
                self.assertAlmostEqual(metrics[key], value, places=9)

    def test_warmup_latencies_are_left_out(self):
        load = FakeLoad([1.0, 1.0, 1.0], warmup=4, warmup_ms=9999.0)
        metrics, latencies = runner.run(load, 4, 3, 3)
        self.assertEqual(len(latencies), 3)
        self.assertAlmostEqual(max(latencies), 1.0, places=9)
        self.assertAlmostEqual(metrics["p99_ms"], 1.0, places=9)


class RunMetricsKeysTest(unittest.TestCase):

    def test_metrics_hold_exactly_the_contract_keys(self):
        metrics, _ = runner.run(FakeLoad([1.0] * 10), 0, 10, 2)
        self.assertEqual(set(metrics), METRIC_KEYS)
        self.assertEqual(metrics["count"], 10)
        self.assertEqual(metrics["concurrency"], 2)
        self.assertIsInstance(metrics["rps"], float)
        self.assertGreater(metrics["rps"], 0)


class SummarizeTest(unittest.TestCase):

    def test_one_latency_is_every_percentile_and_the_average(self):
        metrics = runner.summarize([7.5], 2.0, 3)
        self.assertEqual(metrics, {
            "count": 1, "concurrency": 3, "rps": 0.5, "p50_ms": 7.5,
            "p90_ms": 7.5, "p95_ms": 7.5, "p99_ms": 7.5, "avg_ms": 7.5})

    def test_two_latencies_are_interpolated_between(self):
        metrics = runner.summarize([100.0, 0.0], 4.0, 1)
        self.assertEqual(metrics["rps"], 0.5)
        for key, value in (("p50_ms", 50.0), ("p90_ms", 90.0),
                           ("p95_ms", 95.0), ("p99_ms", 99.0),
                           ("avg_ms", 50.0)):
            with self.subTest(key=key):
                self.assertAlmostEqual(metrics[key], value, places=9)

    def test_rps_is_requests_over_elapsed_seconds(self):
        self.assertEqual(runner.summarize([1.0] * 30, 1.5, 4)["rps"], 20.0)


class RunnerCommandLineTest(unittest.TestCase):
    """``runner.py`` seeds a small dataset and benchmarks both modules."""

    @classmethod
    def setUpClass(cls):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = os.path.join(tmp, "data")
            out = os.path.join(tmp, "out.json")
            cls.done = subprocess.run(
                [sys.executable, os.path.join(ROOT, "runner.py"),
                 "--total", "20", "--concurrency", "4", "--warmup", "2",
                 "--data-dir", data_dir, "--rows", "500", "--json", out],
                cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                timeout=120)
            cls.document = None
            if os.path.exists(out):
                with open(out, encoding="utf-8") as f:
                    cls.document = json.load(f)
            cls.events = None
            db_path = os.path.join(data_dir, "audit.db")
            if os.path.exists(db_path):
                conn = sqlite3.connect(db_path)
                try:
                    cls.events = conn.execute(
                        "SELECT count(*) FROM audit_events").fetchone()[0]
                finally:
                    conn.close()

    def setUp(self):
        self.assertEqual(self.done.returncode, 0,
                         self.done.stderr.decode())

    def assert_pair(self, results):
        self.assertEqual(set(results), {"baseline", "enhanced", "rps_ratio",
                                        "p95_ratio", "p99_ratio"})
        base, enh = results["baseline"], results["enhanced"]
        self.assertAlmostEqual(results["rps_ratio"],
                               enh["rps"] / base["rps"])
        self.assertAlmostEqual(results["p99_ratio"],
                               enh["p99_ms"] / base["p99_ms"])
        for name in ("baseline", "enhanced"):
            metrics = results[name]
            with self.subTest(implementation=name):
                self.assertEqual(set(metrics), METRIC_KEYS)
                self.assertEqual(metrics["count"], 20)
                self.assertEqual(metrics["concurrency"], 4)
                self.assertGreater(metrics["rps"], 0)
                self.assertLessEqual(metrics["p50_ms"], metrics["p99_ms"])

    def test_it_seeds_the_given_directory_with_the_given_rows(self):
        self.assertEqual(self.events, 500)

    def test_the_json_file_holds_both_implementations_metrics(self):
        self.assert_pair(self.document["original"])

    def test_the_table_names_both_implementations_and_the_metrics(self):
        table = self.done.stdout.decode()
        for word in ("baseline", "enhanced", "p95_ms", "p99_ms", "rps"):
            self.assertIn(word, table)

    # Issue 4: "Both mixes in `python3 runner.py` and in `./run_tests`";
    def test_the_command_benchmarks_the_realistic_mix_too(self):
        self.assertIn("realistic", self.document)
        self.assert_pair(self.document["realistic"])
        self.assertIn("realistic", self.done.stdout.decode())


def figures(rps=40.0, p95=0.5, p99=0.5, floor=1.0, build=1.6,
            scale=True, **realistic):
    """A figures dict as ``./run_tests --json`` writes it (without the
    scale step when ``scale`` is false, as ``--quick`` runs)."""
    mix = {"rps_ratio": rps, "p95_ratio": p95, "p99_ratio": p99}
    other = dict(mix, **realistic)
    result = {"original": mix, "realistic": other, "floor": {"ratio": floor}}
    if scale:
        result["scale"] = {"bytes_per_event": 90.0, "build_over_fetch": build,
                           "depth_ratio": 1.0, "size_ratio": 1.0}
    return result


class CompareTest(unittest.TestCase):
    """check_compare against a saved run whose ratios are figures()."""

    def compare(self, now, tolerance=0.25, previous=None):
        checks = audit_checks.Checks()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "previous.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"figures": previous or figures()}, f)
            with contextlib.redirect_stdout(io.StringIO()):
                audit_checks.check_compare(checks, now, path, tolerance)
        return checks.results

    def failed(self, results):
        return [r["check"] for r in results if not r["passed"]]

    def test_an_unchanged_run_passes_and_checks_every_gated_figure(self):
        results = self.compare(figures())
        self.assertEqual(self.failed(results), [])
        named = {key for key in audit_checks.GATES
                 for r in results if key in r["check"]}
        self.assertEqual(named, set(audit_checks.GATES))

    def test_a_throughput_ratio_fallen_beyond_tolerance_fails_by_name(
            self):
        results = self.compare(figures(rps=29.0))
        self.assertEqual(len(self.failed(results)), 2)
        for name in self.failed(results):
            self.assertRegex(name, r"(original|realistic)\.rps_ratio")
        detail = [r["detail"] for r in results if not r["passed"]][0]
        self.assertIn("40.000", detail)
        self.assertIn("29.000", detail)

    def test_a_latency_ratio_risen_beyond_tolerance_fails_by_name(self):
        # Only the realistic mix's p99 ratio got worse: 0.5 -> 0.7.
        results = self.compare(figures(p99_ratio=0.7))
        self.assertEqual(self.failed(results),
                         ["no regression in realistic.p99_ratio"])

    def test_a_floor_ratio_risen_beyond_tolerance_fails_by_name(self):
        results = self.compare(figures(floor=1.3))
        failed = self.failed(results)
        self.assertEqual(len(failed), 1)
        self.assertIn("floor.ratio", failed[0])

    def test_a_slower_snapshot_build_fails_by_name(self):
        results = self.compare(figures(build=2.1))
        self.assertEqual(self.failed(results),
                         ["no regression in scale.build_over_fetch"])

    def test_a_quick_run_compares_what_it_measured(self):
        results = self.compare(figures(scale=False))
        self.assertEqual(self.failed(results), [])
        compared = {r["check"] for r in results}
        self.assertIn("no regression in floor.ratio", compared)
        self.assertFalse([c for c in compared if "scale." in c])

    def test_changes_within_the_tolerance_pass(self):
        results = self.compare(figures(rps=31.0, p95=0.6, p99=0.62,
                                       floor=1.2))
        self.assertEqual(self.failed(results), [])
        self.assertEqual(len(results), len(audit_checks.GATES))

    def test_a_change_of_exactly_the_tolerance_passes(self):
        # 40 * 0.75 and 0.5 * 1.25 are exact in binary floating point.
        results = self.compare(figures(rps=30.0, p95=0.625, p99=0.625,
                                       floor=1.25))
        self.assertEqual(self.failed(results), [])

    def test_improvements_pass(self):
        results = self.compare(figures(rps=400.0, p95=0.01, p99=0.01,
                                       floor=1.01))
        self.assertEqual(self.failed(results), [])

    def test_a_tighter_tolerance_turns_the_same_change_into_a_failure(
            self):
        now = figures(rps=35.0)
        self.assertEqual(self.failed(self.compare(now, tolerance=0.25)), [])
        failed = self.failed(self.compare(now, tolerance=0.1))
        self.assertEqual(sorted(failed), [
            "no regression in original.rps_ratio",
            "no regression in realistic.rps_ratio"])


if __name__ == "__main__":
    unittest.main()
