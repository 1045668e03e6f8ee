"""The dataset on disk: where it is, what seeding writes, what is kept.

Paths are resolved in a child process, so that the current directory and
the environment are those a user would have.  Every dataset here is small
and lives in a temporary directory; the one in ``data/`` is never touched.
"""

import collections
import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import unittest

import audit_dataset
import audit_log_service
import audit_seed
from audit_dataset import DatasetMissingError
from audit_query import Query
from tests import (MODULES, event, temporary_dataset, using_dataset,
                   write_dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = 1_700_000_000
SPAN = 30 * 86400

ACTIONS = {"LOGIN", "LOGOUT", "UPDATE", "DELETE", "CREATE", "EXPORT"}
RESOURCE_TYPES = {"ORDER", "USER", "PRODUCT", "INVOICE", "WAREHOUSE"}

SHOW_PATHS = """
import json, audit_dataset, audit_log_service, enhanced_audit_log_service
print(json.dumps([[m.DATA_DIR, m.DB_PATH, m.PAYLOAD_FILE] for m in (
    audit_dataset, audit_log_service, enhanced_audit_log_service)]))
"""


def rows_of(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT id, created_at, actor_id, action, resource_type,"
            " resource_id, payload_offset, payload_len FROM audit_events"
            " ORDER BY id").fetchall()
    finally:
        conn.close()


def info_of(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT anchor, seed, rows, source FROM dataset_info"
        ).fetchall()
    finally:
        conn.close()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def seed(data_dir, rows=300, seed=5, anchor=ANCHOR):
    audit_seed.seed_dataset(data_dir, rows=rows, seed=seed,
                            anchor=anchor, progress=False)
    return audit_dataset.resolve_paths(data_dir)


class DataPathsTest(unittest.TestCase):
    """data/ beside the modules, or $AUDIT_LOG_DATA_DIR, from any cwd."""

    def paths_in_child(self, cwd, data_dir_env=None):
        env = {k: v for k, v in os.environ.items()
               if k != "AUDIT_LOG_DATA_DIR"}
        env["PYTHONPATH"] = ROOT
        if data_dir_env is not None:
            env["AUDIT_LOG_DATA_DIR"] = data_dir_env
        done = subprocess.run([sys.executable, "-c", SHOW_PATHS], cwd=cwd,
                              env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return json.loads(done.stdout)

    def expected(self, data_dir):
        return [[data_dir, os.path.join(data_dir, "audit.db"),
                 os.path.join(data_dir, "payloads.jsonl")]] * 3

    def test_the_default_is_data_beside_the_modules_from_another_cwd(
            self):
        with tempfile.TemporaryDirectory() as cwd:
            got = self.paths_in_child(cwd)
            self.assertEqual(os.listdir(cwd), [])
        self.assertEqual(got, self.expected(os.path.join(ROOT, "data")))

    def test_the_environment_variable_points_elsewhere(self):
        with tempfile.TemporaryDirectory() as cwd, \
                tempfile.TemporaryDirectory() as elsewhere:
            got = self.paths_in_child(cwd, elsewhere)
        self.assertEqual(got, self.expected(os.path.abspath(elsewhere)))

    def test_a_relative_environment_path_is_made_absolute_from_cwd(self):
        with tempfile.TemporaryDirectory() as cwd:
            got = self.paths_in_child(cwd, os.path.join("rel", "dir"))
            real_cwd = os.path.realpath(cwd)
        self.assertEqual(got, self.expected(
            os.path.join(real_cwd, "rel", "dir")))

    def test_resolve_paths_names_both_files_in_the_given_directory(self):
        got = audit_dataset.resolve_paths(os.path.join("a", "b"))
        base = os.path.abspath(os.path.join("a", "b"))
        self.assertEqual(got, (base, os.path.join(base, "audit.db"),
                               os.path.join(base, "payloads.jsonl")))


class SeedingIsDeterministicTest(unittest.TestCase):

    def test_same_seed_and_anchor_give_identical_files_and_rows(self):
        with tempfile.TemporaryDirectory() as a, \
                tempfile.TemporaryDirectory() as b:
            _, db_a, payloads_a = seed(a)
            _, db_b, payloads_b = seed(b)
            self.assertEqual(read_bytes(payloads_a), read_bytes(payloads_b))
            self.assertEqual(rows_of(db_a), rows_of(db_b))
            self.assertEqual(len(rows_of(db_a)), 300)
            self.assertEqual(info_of(db_a), info_of(db_b))
            self.assertEqual(info_of(db_a)[0][0], ANCHOR)

    def test_another_seed_gives_other_events(self):
        with tempfile.TemporaryDirectory() as a, \
                tempfile.TemporaryDirectory() as b:
            _, db_a, payloads_a = seed(a, seed=5)
            _, db_b, payloads_b = seed(b, seed=6)
            self.assertNotEqual(read_bytes(payloads_a),
                                read_bytes(payloads_b))
            strip = [r[1:6] for r in rows_of(db_a)]
            self.assertNotEqual(strip, [r[1:6] for r in rows_of(db_b)])

    def test_another_anchor_moves_every_event_into_its_own_30_days(self):
        with tempfile.TemporaryDirectory() as a:
            _, db, _ = seed(a, anchor=10 ** 9)
            times = [r[1] for r in rows_of(db)]
        self.assertLessEqual(max(times), 10 ** 9)
        self.assertGreaterEqual(min(times), 10 ** 9 - SPAN)


class AnchorTest(unittest.TestCase):
    """The anchor is stored at seeding and is what the modules use."""

    def default_windows(self, data_dir):
        """The window each module's default query asks for."""
        windows = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(using_dataset(data_dir))
            for module in MODULES:
                query = module.handle_request()["query"]
                windows.append((query["from_ts"], query["to_ts"]))
        return windows

    def test_a_seeded_dataset_stores_its_anchor_and_the_modules_use_it(
            self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, _ = seed(tmp, rows=200, anchor=ANCHOR)
            newest = max(r[1] for r in rows_of(db))
            # The stored anchor, not the newest event, must be used.
            self.assertLess(newest, ANCHOR)
            conn = audit_dataset.connect_readonly(db)
            try:
                self.assertEqual(audit_dataset.read_anchor(conn), ANCHOR)
            finally:
                conn.close()
            self.assertEqual(self.default_windows(tmp),
                             [(ANCHOR - 7 * 86400, ANCHOR)] * 2)

    def test_without_the_anchor_table_the_newest_event_is_the_anchor(
            self):
        with tempfile.TemporaryDirectory() as tmp:
            db, _ = write_dataset(tmp, [event(500), event(9000),
                                        event(700)])
            conn = sqlite3.connect(db)
            conn.execute("DROP TABLE dataset_info")
            conn.commit()
            conn.close()
            self.assertEqual(self.default_windows(tmp),
                             [(9000 - 7 * 86400, 9000)] * 2)

    def test_with_an_empty_anchor_table_the_newest_event_is_the_anchor(
            self):
        with tempfile.TemporaryDirectory() as tmp:
            write_dataset(tmp, [event(500), event(9000), event(700)])
            self.assertEqual(self.default_windows(tmp),
                             [(9000 - 7 * 86400, 9000)] * 2)


class GeneratedValuesTest(unittest.TestCase):
    """1,000 generated events, each checked against the contract."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        _, cls.db, cls.payload_path = seed(cls.tmp.name, rows=1000,
                                           seed=11)
        cls.rows = rows_of(cls.db)
        data = read_bytes(cls.payload_path)
        cls.payloads = [json.loads(data[off:off + n])
                        for *_, off, n in cls.rows]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_the_table_has_the_contract_columns_and_a_time_index(self):
        conn = sqlite3.connect(self.db)
        try:
            columns = [(r[1], r[2], r[3], r[5]) for r in conn.execute(
                "PRAGMA table_info(audit_events)")]
            indexed = [r[2] for name, in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'audit_events'")
                for r in conn.execute(f"PRAGMA index_info({name!r})")]
        finally:
            conn.close()
        self.assertEqual(columns, [
            ("id", "INTEGER", 0, 1), ("created_at", "INTEGER", 1, 0),
            ("actor_id", "INTEGER", 1, 0), ("action", "TEXT", 1, 0),
            ("resource_type", "TEXT", 1, 0),
            ("resource_id", "TEXT", 1, 0),
            ("payload_offset", "INTEGER", 1, 0),
            ("payload_len", "INTEGER", 1, 0)])
        self.assertIn("created_at", indexed)

    def test_there_are_as_many_events_as_asked_for(self):
        self.assertEqual(len(self.rows), 1000)
        self.assertEqual(len({r[0] for r in self.rows}), 1000)

    def test_times_lie_in_the_30_days_up_to_the_anchor_with_ties(self):
        times = [r[1] for r in self.rows]
        self.assertTrue(all(type(t) is int for t in times))
        self.assertGreaterEqual(min(times), ANCHOR - SPAN)
        self.assertLessEqual(max(times), ANCHOR)
        # Spread over the whole span, not bunched at one end.
        self.assertLess(min(times), ANCHOR - SPAN + 86400)
        self.assertGreater(max(times), ANCHOR - 86400)

    def test_many_events_share_a_second_when_the_span_is_short(self):
        with tempfile.TemporaryDirectory() as tmp:
            audit_seed.seed_dataset(tmp, rows=500, seed=1, anchor=1000,
                                    span_seconds=50, progress=False)
            times = collections.Counter(
                r[1] for r in rows_of(os.path.join(tmp, "audit.db")))
        self.assertLessEqual(len(times), 50)
        self.assertTrue(set(times) <= set(range(951, 1001)))

    def test_actors_are_1_to_2000(self):
        actors = [r[2] for r in self.rows]
        self.assertTrue(all(type(a) is int for a in actors))
        self.assertGreaterEqual(min(actors), 1)
        self.assertLessEqual(max(actors), 2000)
        self.assertGreater(len(set(actors)), 300)

    def test_actions_and_resource_types_come_from_their_sets(self):
        self.assertEqual({r[3] for r in self.rows}, ACTIONS)
        self.assertEqual({r[4] for r in self.rows}, RESOURCE_TYPES)

    def test_resource_ids_are_the_type_a_dash_and_a_number(self):
        for r in self.rows:
            match = re.fullmatch(r"([A-Z]+)-([1-9][0-9]*)", r[5])
            self.assertIsNotNone(match, r)
            self.assertEqual(match.group(1), r[4], r)

    def test_each_payload_has_diff_meta_ip_tags_and_note(self):
        for payload in self.payloads:
            self.assertEqual(set(payload), {"diff", "meta", "tags", "note"})
            diff = payload["diff"]
            self.assertEqual(len(diff), 20)
            for pair in diff.values():
                self.assertEqual(len(pair), 2)
                self.assertTrue(all(isinstance(v, (int, float))
                                    and not isinstance(v, bool)
                                    for v in pair))
            self.assertRegex(payload["meta"]["ip"],
                             r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
            self.assertEqual(len(payload["tags"]), 10)
            self.assertTrue(all(isinstance(t, str)
                                for t in payload["tags"]))
            self.assertGreaterEqual(len(payload["note"]), 256)
            self.assertLessEqual(len(payload["note"]), 1024)

    def test_note_lengths_span_the_range(self):
        lengths = [len(p["note"]) for p in self.payloads]
        self.assertLess(min(lengths), 300)
        self.assertGreater(max(lengths), 980)


class PayloadLocationTest(unittest.TestCase):
    """payload_offset and payload_len locate each line, newline included."""

    def test_each_range_is_one_whole_line_and_they_tile_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, payload_path = seed(tmp, rows=400, seed=2)
            data = read_bytes(payload_path)
            rows = rows_of(db)
        end = 0
        for *_, offset, length in sorted(rows, key=lambda r: r[6]):
            line = data[offset:offset + length]
            self.assertEqual(offset, end)
            self.assertTrue(line.endswith(b"\n"), offset)
            self.assertEqual(line.count(b"\n"), 1, offset)
            self.assertIsInstance(json.loads(line), dict)
            end = offset + length
        self.assertEqual(end, len(data))


def fingerprint(data_dir):
    """Every file in ``data_dir`` with its bytes and modification time."""
    out = {}
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        out[name] = (os.stat(path).st_mtime_ns, read_bytes(path))
    return out


class ExistingDatasetIsNeverModifiedTest(unittest.TestCase):

    def serve_everything(self):
        for module in MODULES:
            module.init()
            module.init()
            module.query_events(Query(0, 10 ** 10, page_size=1000))
            module.query_events(Query(0, 10 ** 10, actor_id=1,
                                      action="UPDATE", page=2))
            module.handle_request()

    def test_init_and_queries_leave_a_seeded_dataset_as_it_was(self):
        with tempfile.TemporaryDirectory() as tmp:
            seed(tmp, rows=200)
            before = fingerprint(tmp)
            with using_dataset(tmp):
                self.serve_everything()
            self.assertEqual(fingerprint(tmp), before)

    def test_a_dataset_made_by_another_tool_is_served_as_it_is(self):
        events = [event(100), event(200, actor_id=2), event(200)]
        with temporary_dataset(events) as (data_dir, db, _):
            conn = sqlite3.connect(db)
            conn.execute("DROP TABLE dataset_info")
            conn.commit()
            conn.close()
            before = fingerprint(data_dir)
            self.serve_everything()
            self.assertEqual(fingerprint(data_dir), before)
            self.assertEqual(
                [e["id"] for e in audit_log_service.query_events(
                    Query(0, 300))], [3, 2, 1])

    def test_ensure_dataset_on_a_whole_dataset_seeds_nothing(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, payloads = seed(tmp, rows=100)
            before = fingerprint(tmp)
            self.assertFalse(audit_seed.ensure_dataset(
                db, payloads, rows=5, progress=False))
            self.assertEqual(fingerprint(tmp), before)


class OneFileWithoutTheOtherTest(unittest.TestCase):
    """ensure_dataset refuses, naming the missing file, and writes none."""

    def assert_refused(self, keep, missing):
        with tempfile.TemporaryDirectory() as tmp:
            paths = dict(zip(("db", "payloads"),
                             write_dataset(tmp, [event(1), event(2)])))
            os.remove(paths[missing])
            before = fingerprint(tmp)
            with self.assertRaisesRegex(
                    DatasetMissingError,
                    re.escape(paths[missing]) + " is missing"):
                audit_seed.ensure_dataset(paths["db"],
                                          paths["payloads"],
                                          progress=False)
            self.assertEqual(fingerprint(tmp), before)
            self.assertEqual(list(before), [os.path.basename(paths[keep])])

    def test_a_database_without_payloads_names_the_payload_file(self):
        self.assert_refused(keep="db", missing="payloads")

    def test_payloads_without_a_database_name_the_database(self):
        self.assert_refused(keep="payloads", missing="db")


class SeedingWhenNeitherFileExistsTest(unittest.TestCase):

    def test_ensure_dataset_seeds_an_empty_directory_and_tidies_up(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, payloads = audit_dataset.resolve_paths(tmp)
            self.assertTrue(audit_seed.ensure_dataset(
                db, payloads, rows=150, seed=3, progress=False))
            self.assertEqual(len(rows_of(db)), 150)
            left = [n for n in os.listdir(tmp)
                    if n not in ("audit.db", "payloads.jsonl")]
            self.assertTrue(all(n == ".seed.lock" for n in left), left)

    def test_seed_dataset_refuses_to_overwrite_either_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, payloads = seed(tmp, rows=50)
            before = fingerprint(tmp)
            with self.assertRaises(FileExistsError) as caught:
                seed(tmp, rows=50, seed=9)
            self.assertIn(caught.exception.filename, (db, payloads))
            self.assertEqual(fingerprint(tmp), before)

    def test_progress_goes_to_stderr_and_nothing_to_stdout(self):
        out, err = io.StringIO(), io.StringIO()
        with tempfile.TemporaryDirectory() as tmp, \
                contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            audit_seed.seed_dataset(tmp, rows=100, seed=1, anchor=ANCHOR,
                                    progress=True)
        self.assertEqual(out.getvalue(), "")
        self.assertIn("100", err.getvalue().splitlines()[-1])


if __name__ == "__main__":
    unittest.main()
