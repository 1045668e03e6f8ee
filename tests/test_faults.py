"""Faults and bad input: every case is injected into both query modules.

Damaged or missing files must raise the same DatasetError subclass from
both modules, naming the path (and, for a payload, the event and offset);
bad queries must give the same ValueError or TypeError, naming the field,
or the same correct answer; concurrency, a writer's lock and a seeding
killed with SIGKILL must never show a caller a half state.  Each dataset
is small and lives in a temporary directory.
"""

import contextlib
import itertools
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest import mock

import audit_dataset
import audit_log_service
import audit_query
import audit_seed
import audit_soak
import enhanced_audit_log_service
from audit_dataset import (DatasetError, DatasetMissingError,
                           DatasetSchemaError, PayloadError)
from audit_query import Query
from tests import (MODULES, event, reset, temporary_dataset, using_dataset,
                   write_dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = 1_700_000_000
# A window that holds every event of every dataset built here.
ALL_TIME = dict(from_ts=-(2 ** 40), to_ts=2 ** 40)
# Generous bound on any wait in these tests; none should come near it.
WAIT_S = 60.0
# Valid JSON that no recursive decoder can take apart.
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000 + b"\n"


def name_of(module):
    return module.__name__


def listing(path):
    return sorted(os.listdir(path))


def outcome(module, q):
    """``("ok", events)`` or ``("error", exception)`` of one query."""
    try:
        return "ok", module.query_events(q)
    except Exception as exc:  # the tests compare what each module raises
        return "error", exc


def reference_page(events, q):
    """The page ``q`` asks for, computed by brute force over ``events``.

    ``events`` are dicts with an ``id``; filters compare with ``==`` and
    the same type, as the modules must (no LIKE, no case folding).
    """
    def matches(e):
        if not q.from_ts <= e["created_at"] <= q.to_ts:
            return False
        for field in ("actor_id", "action", "resource_type", "resource_id"):
            wanted = getattr(q, field)
            if wanted is not None and not (
                    type(e[field]) is type(wanted) and e[field] == wanted):
                return False
        return True
    hits = sorted((e for e in events if matches(e)),
                  key=lambda e: (e["created_at"], e["id"]), reverse=True)
    return [e["id"] for e in hits[q.offset:q.offset + q.page_size]]


def ids_of(events):
    return [e["id"] for e in events]


def all_events_query(**fields):
    return Query(page_size=1000, **dict(ALL_TIME, **fields))


# ---------------------------------------------------------------- files

class MissingFilesTest(unittest.TestCase):
    """A missing file is an error naming its path; nothing is created."""

    def assert_missing(self, data_dir, missing_path, watched_dir):
        before = listing(watched_dir)
        kinds = []
        for module in MODULES:
            with self.subTest(module=name_of(module)), \
                    using_dataset(data_dir, [module]):
                for call in (module.init,
                             lambda: module.query_events(Query(0, 10))):
                    with self.assertRaisesRegex(
                            DatasetMissingError,
                            re.escape(missing_path)) as caught:
                        call()
                    self.assertIsInstance(caught.exception,
                                          FileNotFoundError)
                    kinds.append(type(caught.exception))
                self.assertEqual(listing(watched_dir), before)
        self.assertEqual(len(set(kinds)), 1, kinds)

    def test_a_missing_database_is_named_and_no_file_is_created(self):
        with tempfile.TemporaryDirectory() as tmp:
            db_path, _ = write_dataset(tmp, [event(5)])
            os.remove(db_path)
            self.assert_missing(tmp, db_path, tmp)

    def test_a_missing_payload_file_is_named_and_no_file_is_created(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, payload_path = write_dataset(tmp, [event(5)])
            os.remove(payload_path)
            self.assert_missing(tmp, payload_path, tmp)

    def test_a_missing_data_directory_is_named_and_not_created(self):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = os.path.join(tmp, "no-such-dir")
            self.assert_missing(data_dir, data_dir, tmp)

    def test_a_payload_file_removed_after_init_is_named_on_the_next_page(
            self):
        for module in MODULES:
            with self.subTest(module=name_of(module)), \
                    temporary_dataset([event(5), event(6)],
                                      modules=[module]) as paths:
                module.init()
                os.remove(paths[2])
                with self.assertRaisesRegex(DatasetMissingError,
                                            re.escape(paths[2])):
                    module.query_events(Query(0, 10))
                self.assertEqual(listing(paths[0]), ["audit.db"])


class DamagedDatabaseTest(unittest.TestCase):
    """A database that cannot serve is named, with what is wrong."""

    def assert_schema_error(self, make_db, pattern):
        with tempfile.TemporaryDirectory() as tmp:
            db_path, _ = write_dataset(tmp, [event(5)])
            os.remove(db_path)
            make_db(db_path)
            kinds = []
            for module in MODULES:
                with self.subTest(module=name_of(module)), \
                        using_dataset(tmp, [module]):
                    for call in (module.init,
                                 lambda: module.query_events(Query(0, 10))):
                        with self.assertRaisesRegex(DatasetSchemaError,
                                                    pattern) as caught:
                            call()
                        self.assertIn(db_path, str(caught.exception))
                        kinds.append(type(caught.exception))
            self.assertEqual(len(set(kinds)), 1, kinds)

    def test_a_file_that_is_not_sqlite_is_named_as_such(self):
        def make_db(path):
            with open(path, "wb") as f:
                f.write(b"this is not an SQLite database\n" * 200)
        self.assert_schema_error(make_db, "not a readable SQLite database")

    def test_a_damaged_database_is_the_same_error_from_both_modules(self):
        # 0xff over the table's pages: SQLite says "malformed" for some
        # rows and "Could not decode to UTF-8" for others, and which one a
        # module meets first depends on the rows it reads.
        for start, size in ((5000, 4000), (17408, 1024), (21504, 1024)):
            with self.subTest(start=start, size=size):
                self.assert_damage_named_alike(start, size)

    def assert_damage_named_alike(self, start, size):
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=300)
            db_path = audit_dataset.resolve_paths(tmp)[1]
            with open(db_path, "r+b") as f:
                f.seek(start)
                f.write(b"\xff" * size)
            kinds = []
            for module in MODULES:
                with self.subTest(module=name_of(module)), \
                        using_dataset(tmp, [module]):
                    with self.assertRaisesRegex(
                            DatasetSchemaError,
                            "not a readable SQLite database") as caught:
                        module.query_events(Query(0, 2 ** 40))
                    self.assertIn(db_path, str(caught.exception))
                    kinds.append(type(caught.exception))
            self.assertEqual(len(set(kinds)), 1, kinds)

    def test_a_database_without_the_table_names_the_table(self):
        def make_db(path):
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
                conn.commit()
        self.assert_schema_error(make_db, "no table audit_events")

    def test_a_table_without_some_columns_names_each_missing_column(self):
        def make_db(path):
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute(
                    "CREATE TABLE audit_events (id INTEGER PRIMARY KEY,"
                    " created_at INTEGER, actor_id INTEGER, action TEXT,"
                    " resource_type TEXT, payload_offset INTEGER)")
                conn.execute("INSERT INTO audit_events VALUES"
                             " (1, 5, 1, 'UPDATE', 'ORDER', 0)")
                conn.commit()
        self.assert_schema_error(
            make_db, "lacks column.*resource_id, payload_len")

    def test_a_column_holding_other_than_integers_is_named(self):
        for column, value in (("created_at", "'yesterday'"),
                              ("created_at", "5.5"),
                              ("payload_offset", "NULL"),
                              ("payload_len", "'32'")):
            values = dict(id="1", created_at="5", payload_offset="0",
                          payload_len="32")
            values[column] = value

            def make_db(path):
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    # No types and no NOT NULL, as another tool might.
                    conn.execute(
                        "CREATE TABLE audit_events (id, created_at,"
                        " actor_id, action, resource_type, resource_id,"
                        " payload_offset, payload_len)")
                    conn.execute(
                        "INSERT INTO audit_events VALUES ({id}, {created_at},"
                        " 1, 'UPDATE', 'ORDER', 'ORDER-1', {payload_offset},"
                        " {payload_len})".format(**values))
                    conn.commit()
            with self.subTest(column=column, value=value):
                self.assert_schema_error(
                    make_db, r"created_at, payload_offset and payload_len"
                             r" must hold integers")

    def test_a_lock_while_reading_the_anchor_is_an_error_not_a_guess(self):
        def locked(conn):
            raise sqlite3.OperationalError("database is locked")
        kinds = []
        with temporary_dataset([event(5)], anchor=ANCHOR) as paths, \
                mock.patch.object(audit_dataset, "read_anchor", locked):
            for module in MODULES:
                with self.subTest(module=name_of(module)):
                    with self.assertRaisesRegex(
                            DatasetError, re.escape(paths[1])) as caught:
                        module.init()
                    self.assertIn("database is locked",
                                  str(caught.exception))
                    kinds.append(type(caught.exception))
        self.assertEqual(len(set(kinds)), 1, kinds)

    def test_the_anchor_falls_back_only_when_dataset_info_is_absent(self):
        class Locked:
            """Locked just while the anchor is read; max() would answer."""

            def execute(self, sql):
                if "dataset_info" in sql:
                    raise sqlite3.OperationalError("database is locked")
                return sqlite3.connect(":memory:").execute("SELECT 42")
        with self.assertRaisesRegex(sqlite3.OperationalError, "locked"):
            audit_dataset.read_anchor(Locked())
        with tempfile.TemporaryDirectory() as tmp:
            db_path, _ = write_dataset(tmp, [event(5), event(9)])
            with contextlib.closing(sqlite3.connect(db_path)) as conn:
                self.assertEqual(audit_dataset.read_anchor(conn), 9)
                conn.execute("DROP TABLE dataset_info")
                self.assertEqual(audit_dataset.read_anchor(conn), 9)


class DamagedPayloadTest(unittest.TestCase):
    """A bad payload names the event, the offset and the path; no page."""

    def assert_payload_error(self, bad, modules=MODULES):
        """Events at times 100..106; ``bad`` (the fields of one event,
        time 103, written last in the payload file) must spoil exactly
        the pages that hold it."""
        events = [event(100 + i, id=i + 1) for i in range(7) if i != 3]
        events.append(event(103, id=99, **bad))
        kinds = []
        for module in modules:
            with self.subTest(module=name_of(module)), \
                    temporary_dataset(events, modules=[module]) as paths:
                payload_path = paths[2]
                offset = bad.get("payload_offset",
                                 os.path.getsize(payload_path)
                                 - len(bad.get("payload", b"")))
                # Newest first: 106, 105, 104, then the bad event 103.
                for page, page_size in ((1, 10), (4, 1), (2, 3)):
                    q = Query(0, 1000, page=page, page_size=page_size)
                    with self.assertRaises(PayloadError) as caught:
                        module.query_events(q)
                    exc = caught.exception
                    message = str(exc)
                    self.assertIn("event 99", message)
                    self.assertIn(f"offset {offset}", message)
                    self.assertIn(payload_path, message)
                    self.assertEqual(
                        (exc.event_id, exc.offset, exc.path),
                        (99, offset, payload_path))
                    kinds.append(type(exc))
                # Pages without the bad event are served whole.
                self.assertEqual(
                    ids_of(module.query_events(Query(0, 1000, page_size=3))),
                    [7, 6, 5])
                self.assertEqual(
                    ids_of(module.query_events(
                        Query(0, 1000, page=2, page_size=4))),
                    [3, 2, 1])
        self.assertEqual(len(set(kinds)), 1, kinds)

    def test_a_payload_running_past_the_end_of_the_file_is_refused(self):
        self.assert_payload_error(
            dict(payload=b'{"a": 1}\n', payload_len=9 + 50))

    def test_a_payload_offset_past_the_end_of_the_file_is_refused(self):
        self.assert_payload_error(
            dict(payload=b'{"a": 1}\n', payload_offset=10 ** 6))

    def test_a_negative_payload_offset_is_refused(self):
        self.assert_payload_error(
            dict(payload=b'{"a": 1}\n', payload_offset=-1))

    def test_a_negative_payload_length_is_refused(self):
        self.assert_payload_error(
            dict(payload=b'{"a": 1}\n', payload_len=-9))

    def test_a_payload_that_is_not_json_is_refused(self):
        self.assert_payload_error(dict(payload=b'{"a": nope}\n'))

    def test_a_payload_cut_short_inside_the_line_is_refused(self):
        self.assert_payload_error(dict(payload=b'{"a": [1, 2\n'))

    def test_a_payload_that_is_not_utf8_is_refused(self):
        self.assert_payload_error(dict(payload=b'{"a": "\xff\xfe"}\n'))

    def test_white_space_that_json_does_not_allow_after_a_payload_is_refused(
            self):
        # Form feed, U+0085 and U+3000 are white space to str.isspace but
        # not to JSON, which allows only space, tab, CR and LF.
        for tail in (b"\x0c\n", b"\x0b\n", b"\xc2\x85\n", b"\xe3\x80\x80\n"):
            with self.subTest(tail=tail):
                self.assert_payload_error(dict(payload=b'{"a": 1}' + tail))

    def test_a_payload_nested_too_deeply_is_refused_by_both_modules(self):
        self.assert_payload_error(dict(payload=DEEP_JSON))

    def test_a_huge_payload_range_is_refused_by_both_modules(self):
        for module in MODULES:
            with self.subTest(module=module.__name__):
                self.assert_huge_ranges_refused(module)

    def assert_huge_ranges_refused(self, module):
        for bad in (dict(payload_len=2 ** 40), dict(payload_len=2 ** 62),
                    dict(payload_offset=2 ** 62),
                    dict(payload_offset=2 ** 63 - 1)):
            with self.subTest(**bad):
                self.assert_payload_error(
                    dict(bad, payload=b'{"a": 1}\n'), modules=[module])


class ExceptionHierarchyTest(unittest.TestCase):
    """One hierarchy, defined in audit_dataset, exported by both modules."""

    def test_both_modules_export_the_same_exception_classes(self):
        for module in MODULES:
            with self.subTest(module=name_of(module)):
                self.assertIs(module.DatasetError, DatasetError)
                self.assertIs(module.DatasetMissingError,
                              DatasetMissingError)
                self.assertIs(module.DatasetSchemaError, DatasetSchemaError)
                self.assertIs(module.PayloadError, PayloadError)
                self.assertIs(module.Query, audit_query.Query)

    def test_every_dataset_error_derives_from_dataset_error(self):
        for cls in (DatasetMissingError, DatasetSchemaError, PayloadError):
            self.assertTrue(issubclass(cls, DatasetError), cls)
        self.assertTrue(issubclass(DatasetMissingError, FileNotFoundError))

    def test_a_query_that_is_not_a_query_is_a_type_error(self):
        with temporary_dataset([event(5)]):
            for module in MODULES:
                for bad in (None, {"from_ts": 0, "to_ts": 1}, (0, 1)):
                    with self.subTest(module=name_of(module), q=bad), \
                            self.assertRaisesRegex(TypeError,
                                                   "q must be a Query"):
                        module.query_events(bad)


# ---------------------------------------------------------------- queries

# Values that ask for trouble in SQL, LIKE patterns, C strings or codecs.
TRICKY_TEXT = (
    "'", '"', "%", "_", ";--", "' OR 1=1 --", "\x00", "a\x00b", "\U0001f642",
    "x" * 10240, "order", "ORDER", "Order", "ORD%", "ORD_R", "ORDER_1",
    "ORDER-1", " ORDER", "", "\\", "%%", "[a-z]*", "*",
)
TRICKY_ACTORS = (0, -1, 1, 123, 2 ** 63 - 1, -(2 ** 63), "alice", "\U0001f642",
                 "x" * 10240)


def tricky_events():
    """Events whose attributes are the tricky values, with heavy ties."""
    events = []
    for i, text in enumerate(TRICKY_TEXT):
        events.append(event(1000 + i % 4, actor_id=TRICKY_ACTORS[
            i % len(TRICKY_ACTORS)], action=text, resource_type=text,
            resource_id=text, id=i + 1))
    for j, actor in enumerate(TRICKY_ACTORS):
        events.append(event(1000 + j % 3, actor_id=actor, action="PLAIN",
                            resource_type="PLAIN", resource_id="PLAIN-1",
                            id=len(TRICKY_TEXT) + j + 1))
    return events


SWEEP_VALUES = (
    True, False, 1.0, 0.5, float("nan"), float("inf"), "123", "0", None,
    -1, 0, 1, 2, 999, 1000, 1001, 10 ** 30, -(10 ** 30), 2 ** 63 - 1,
    -(2 ** 63), 2 ** 63, "\ud800", b"ORDER", ["ORDER"],
) + TRICKY_TEXT

INT_FIELDS = ("from_ts", "to_ts", "page", "page_size")
TEXT_FIELDS = ("action", "resource_type", "resource_id")
SWEEP_BASE = dict(ALL_TIME, page=1, page_size=1000)


def expected_error(field, value):
    """The exception class a Query with ``field=value`` must raise (on top
    of SWEEP_BASE), or None; the message must name ``field``."""
    int64 = type(value) is int and -(2 ** 63) <= value <= 2 ** 63 - 1
    if field in INT_FIELDS:
        if type(value) is not int:
            return TypeError
        if not int64:
            return ValueError
        if field == "from_ts":
            return ValueError if value > SWEEP_BASE["to_ts"] else None
        if field == "to_ts":
            return ValueError if value < SWEEP_BASE["from_ts"] else None
        if field == "page":
            deep = (value - 1) * SWEEP_BASE["page_size"] > 2 ** 63 - 1
            return ValueError if value < 1 or deep else None
        return None if 1 <= value <= 1000 else ValueError
    if value is None:
        return None
    if isinstance(value, str):
        return ValueError if value == "\ud800" else None
    if field == "actor_id" and type(value) is int:
        return None if int64 else ValueError
    return TypeError


class BadQuerySweepTest(unittest.TestCase):
    """Every Query field against every troublesome value."""

    def test_every_field_with_every_value_errs_alike_or_answers_right(self):
        events = tricky_events()
        fields = INT_FIELDS + ("actor_id",) + TEXT_FIELDS
        checked = answered = 0
        with temporary_dataset(events):
            for field in fields:
                for value in SWEEP_VALUES:
                    with self.subTest(field=field, value=repr(value)[:40]):
                        answered += self.check_one(events, field, value)
                        checked += 1
        self.assertEqual(checked, len(fields) * len(SWEEP_VALUES))
        self.assertGreater(answered, 100)

    def check_one(self, events, field, value):
        fields = dict(SWEEP_BASE, **{field: value})
        error = expected_error(field, value)
        if error is not None:
            with self.assertRaisesRegex(error, re.escape(field)):
                Query(**fields)
            return 0
        q = Query(**fields)
        want = reference_page(events, q)
        for module in MODULES:
            status, got = outcome(module, q)
            self.assertEqual(status, "ok", f"{name_of(module)}: {got!r}")
            self.assertEqual(ids_of(got), want, name_of(module))
        return 1

    def test_a_window_ending_before_it_starts_names_both_ends(self):
        with self.assertRaisesRegex(ValueError,
                                    r"from_ts.*after to_ts.*5.*4"):
            Query(5, 4)

    def test_a_page_too_deep_for_sqlite_is_refused_naming_the_page(self):
        with self.assertRaisesRegex(ValueError, r"page is too deep"):
            Query(0, 1, page=2 ** 62, page_size=1000)

    def test_the_deepest_page_allowed_is_an_empty_page_in_both(self):
        q = Query(0, 10 ** 6, page=(2 ** 63 - 1) // 1000 + 1,
                  page_size=1000)
        with temporary_dataset([event(5), event(6)]):
            for module in MODULES:
                self.assertEqual(module.query_events(q), [],
                                 name_of(module))

    def test_a_lone_surrogate_in_any_text_filter_is_a_value_error(self):
        for field in ("actor_id",) + TEXT_FIELDS:
            with self.subTest(field=field), self.assertRaisesRegex(
                    ValueError, f"{field} must be valid Unicode text"):
                Query(0, 1, **{field: "ok\udfffok"})


class ExactFilterTest(unittest.TestCase):
    """Filters compare whole values, case and all: no LIKE, no folding."""

    def test_each_text_filter_matches_only_its_exact_value(self):
        events = tricky_events()
        with temporary_dataset(events):
            for field in TEXT_FIELDS:
                for text in TRICKY_TEXT:
                    q = all_events_query(**{field: text})
                    want = [e["id"] for e in events if e[field] == text]
                    self.assertEqual(len(want), 1, (field, text))
                    for module in MODULES:
                        with self.subTest(module=name_of(module),
                                          field=field, text=text[:20]):
                            self.assertEqual(
                                ids_of(module.query_events(q)), want)

    def test_order_and_its_look_alikes_are_told_apart(self):
        events = [event(10, resource_type=t, action=t, id=i)
                  for i, t in enumerate(("order", "ORDER", "ORD%",
                                         "ORDER_1", "ORDERX1"), 1)]
        with temporary_dataset(events):
            for module in MODULES:
                for text, want in (("ORDER", [2]), ("order", [1]),
                                   ("Order", []), ("ORD%", [3]),
                                   ("ORD_R", []), ("ORDER_1", [4]),
                                   ("ORDER%", []), ("%", []), ("_", [])):
                    for field in ("action", "resource_type"):
                        with self.subTest(module=name_of(module),
                                          text=text, field=field):
                            got = module.query_events(
                                all_events_query(**{field: text}))
                            self.assertEqual(ids_of(got), want)

    def test_a_number_and_its_digits_as_text_are_different_actors(self):
        events = [event(10, actor_id=123, id=1),
                  event(11, actor_id="alice", id=2),
                  event(12, actor_id="bob", id=3)]
        with temporary_dataset(events):
            for module in MODULES:
                for actor, want in ((123, [1]), ("123", []),
                                    ("alice", [2]), ("ALICE", []),
                                    ("ali%", []), (0, [])):
                    with self.subTest(module=name_of(module), actor=actor):
                        got = module.query_events(
                            all_events_query(actor_id=actor))
                        self.assertEqual(ids_of(got), want)


# ---------------------------------------------------------------- threads

def seeded(tmp, rows=3000):
    audit_seed.seed_dataset(tmp, rows=rows, seed=7, anchor=ANCHOR,
                            progress=False)


def mixed_queries(n, seed=11):
    rng = random.Random(seed)
    queries = [audit_query.pick_query(rng, ANCHOR) for _ in range(n // 2)]
    while len(queries) < n:
        to_ts = ANCHOR - rng.randrange(30 * 86400)
        queries.append(Query(
            to_ts - rng.randrange(3 * 86400), to_ts,
            actor_id=rng.choice((None, rng.randint(1, 2000))),
            action=rng.choice((None,) + audit_seed.ACTIONS),
            resource_type=rng.choice((None, "ORDER", "USER")),
            page=rng.randint(1, 4), page_size=rng.choice((1, 20, 100))))
    return queries


def run_together(n, work):
    """Run ``work(i)`` on ``n`` threads released at once; return results
    and exceptions by index."""
    results, errors = [None] * n, [None] * n
    start = threading.Barrier(n)

    def worker(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the test to judge
            errors[i] = exc
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"threads still running after {WAIT_S} s")
    return results, errors


class ColdStartTest(unittest.TestCase):
    """Many threads meeting a cold module see one build and right pages."""

    def test_64_threads_on_a_cold_enhanced_module_build_it_once(self):
        queries = mixed_queries(64)
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp)
            with using_dataset(tmp):
                want = [audit_log_service.query_events(q) for q in queries]
                reset(enhanced_audit_log_service)
                builds = enhanced_audit_log_service._builds

                def work(i):
                    if i % 4 == 0:
                        enhanced_audit_log_service.init()
                    return enhanced_audit_log_service.query_events(
                        queries[i])
                results, errors = run_together(64, work)
                self.assertEqual(errors, [None] * 64)
                self.assertEqual(enhanced_audit_log_service._builds,
                                 builds + 1)
                for q, got, expected in zip(queries, results, want):
                    self.assertEqual(got, expected, q)
                self.assertTrue(any(want), "every page was empty")

    def test_64_threads_on_a_cold_baseline_get_the_enhanced_answers(self):
        queries = mixed_queries(64, seed=12)
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp)
            with using_dataset(tmp):
                want = [enhanced_audit_log_service.query_events(q)
                        for q in queries]
                reset(audit_log_service)
                results, errors = run_together(
                    64, lambda i: audit_log_service.query_events(queries[i]))
                self.assertEqual(errors, [None] * 64)
                self.assertEqual(results, want)

    def test_a_failed_init_fails_every_caller_and_a_later_one_succeeds(
            self):
        for module in MODULES:
            with self.subTest(module=name_of(module)), \
                    tempfile.TemporaryDirectory() as tmp:
                db_path, _ = write_dataset(tmp, [event(5), event(6)])
                aside = os.path.join(tmp, "aside.db")
                os.replace(db_path, aside)
                with using_dataset(tmp, [module]):
                    builds = enhanced_audit_log_service._builds
                    _, errors = run_together(16, lambda i: module.init())
                    for exc in errors:
                        self.assertIsInstance(exc, DatasetMissingError)
                        self.assertIn(db_path, str(exc))
                    with self.assertRaises(DatasetMissingError):
                        module.query_events(Query(0, 10))

                    os.replace(aside, db_path)
                    module.init()
                    self.assertEqual(
                        ids_of(module.query_events(Query(0, 10))), [2, 1])
                    if module is enhanced_audit_log_service:
                        self.assertEqual(module._builds, builds + 1)


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE audit_events SET actor_id = actor_id + 1")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


class WriterLockTest(unittest.TestCase):
    """A writer in another process delays readers; it never fails them."""

    def test_queries_wait_out_an_exclusive_write_lock_in_another_process(
            self):
        queries = mixed_queries(16, seed=13)
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=2000)
            with using_dataset(tmp):
                want = [audit_log_service.query_events(q) for q in queries]
                reset(enhanced_audit_log_service)
                reset(audit_log_service)
                db_path = audit_log_service.DB_PATH
                locker = subprocess.Popen(
                    [sys.executable, "-c", LOCKER, db_path, "0.3"],
                    stdout=subprocess.PIPE)
                try:
                    self.assertEqual(locker.stdout.readline(), b"locked\n")
                    started_locked = locker.poll() is None

                    def work(i):
                        module = MODULES[i % 2]
                        return [module.query_events(q) for q in queries]
                    results, errors = run_together(8, work)
                    self.assertEqual(locker.wait(WAIT_S), 0)
                finally:
                    locker.kill()
                    locker.wait()
                    locker.stdout.close()
                self.assertTrue(started_locked,
                                "the lock was gone before the queries")
                self.assertEqual(errors, [None] * 8)
                for got in results:
                    self.assertEqual(got, want)

    def test_a_lock_held_past_the_timeout_is_a_dataset_error_not_schema(
            self):
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=50)
            with using_dataset(tmp) as (_, db_path, _):
                holder = sqlite3.connect(db_path)
                holder.execute("BEGIN EXCLUSIVE")
                saved = audit_dataset.BUSY_TIMEOUT_S
                audit_dataset.BUSY_TIMEOUT_S = 0.05
                try:
                    for module in MODULES:
                        with self.subTest(module=module.__name__):
                            reset(module)
                            with self.assertRaisesRegex(
                                    audit_dataset.DatasetError,
                                    "locked") as caught:
                                module.init()
                            self.assertNotIsInstance(
                                caught.exception,
                                audit_dataset.DatasetSchemaError)
                            self.assertIn(db_path, str(caught.exception))
                finally:
                    audit_dataset.BUSY_TIMEOUT_S = saved
                    holder.rollback()
                    holder.close()


# ---------------------------------------------------------------- seeding

SEEDER = """
import sys
import audit_dataset, audit_seed
audit_seed.ensure_dataset(audit_dataset.DB_PATH,
                          audit_dataset.PAYLOAD_FILE,
                          rows=int(sys.argv[1]), seed=5)
"""
SEED_ROWS = 300


def seeder(data_dir, rows, crash_at=None, **popen_args):
    env = dict(os.environ, AUDIT_LOG_DATA_DIR=data_dir)
    env.pop("AUDIT_LOG_SEED_CRASH_AT", None)
    if crash_at:
        env["AUDIT_LOG_SEED_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-c", SEEDER, str(rows)],
                            cwd=ROOT, env=env, **popen_args)


class InterruptedSeedTest(unittest.TestCase):
    """A seeding killed anywhere leaves nothing that is served as whole."""

    def assert_next_run_serves_a_whole_dataset(self, tmp):
        with using_dataset(tmp) as (_, db_path, payload_path):
            audit_seed.ensure_dataset(db_path, payload_path,
                                      rows=SEED_ROWS, progress=False)
            leftovers = [n for n in os.listdir(tmp)
                         if n.startswith(audit_seed.SEED_TMP_PREFIX)
                         or n == audit_seed.SEED_MARKER_NAME]
            self.assertEqual(leftovers, [])
            with contextlib.closing(sqlite3.connect(db_path)) as conn:
                (count,), = conn.execute(
                    "SELECT count(*) FROM audit_events").fetchall()
            self.assertEqual(count, SEED_ROWS)
            pages = []
            for module in MODULES:
                module.init()
                page = module.query_events(all_events_query())
                self.assertEqual(len(page), SEED_ROWS, name_of(module))
                for e in page:
                    self.assertIsInstance(e["payload"], dict)
                    self.assertEqual(len(e["payload"]["diff"]), 20)
                pages.append(page)
            self.assertEqual(pages[0], pages[1])

    def test_a_seed_killed_at_each_crash_point_is_recovered(self):
        for point in ("before_move", "between_moves", "after_moves"):
            with self.subTest(crash_at=point), \
                    tempfile.TemporaryDirectory() as tmp:
                child = seeder(tmp, SEED_ROWS, crash_at=point,
                               stderr=subprocess.DEVNULL)
                self.assertEqual(child.wait(WAIT_S), -signal.SIGKILL)
                names = os.listdir(tmp)
                if point == "before_move":
                    self.assertNotIn("audit.db", names)
                    self.assertNotIn("payloads.jsonl", names)
                else:
                    self.assertIn(audit_seed.SEED_MARKER_NAME, names)
                self.assert_next_run_serves_a_whole_dataset(tmp)

    def test_a_seed_killed_during_generation_is_recovered(self):
        with tempfile.TemporaryDirectory() as tmp:
            # Big enough to be killed at its first progress line, long
            # before it could finish.
            child = seeder(tmp, 500_000, stderr=subprocess.PIPE)
            try:
                line = child.stderr.readline()
                self.assertIn(b"seeding:", line)
                child.send_signal(signal.SIGKILL)
                self.assertEqual(child.wait(WAIT_S), -signal.SIGKILL)
            finally:
                child.kill()
                child.wait()
                child.stderr.close()
            names = os.listdir(tmp)
            self.assertNotIn("audit.db", names)
            self.assertNotIn("payloads.jsonl", names)
            self.assertTrue(any(n.startswith(audit_seed.SEED_TMP_PREFIX)
                                for n in names), names)
            self.assert_next_run_serves_a_whole_dataset(tmp)

    def test_a_seed_waiting_on_a_killed_seed_takes_over_and_finishes(
            self):
        with tempfile.TemporaryDirectory() as tmp:
            first = seeder(tmp, 500_000, stderr=subprocess.PIPE)
            second = None
            try:
                self.assertIn(b"seeding:", first.stderr.readline())
                # The first holds the seed lock: the second must wait.
                second = seeder(tmp, SEED_ROWS, stderr=subprocess.DEVNULL)
                with self.assertRaises(subprocess.TimeoutExpired):
                    second.wait(0.3)
                first.send_signal(signal.SIGKILL)
                self.assertEqual(first.wait(WAIT_S), -signal.SIGKILL)
                self.assertEqual(second.wait(WAIT_S), 0)
            finally:
                for child in filter(None, (first, second)):
                    child.kill()
                    child.wait()
                first.stderr.close()
            self.assert_next_run_serves_a_whole_dataset(tmp)

    def test_a_complete_dataset_left_with_a_marker_is_kept_as_it_is(self):
        with tempfile.TemporaryDirectory() as tmp:
            child = seeder(tmp, SEED_ROWS, crash_at="after_moves",
                           stderr=subprocess.DEVNULL)
            self.assertEqual(child.wait(WAIT_S), -signal.SIGKILL)
            with open(os.path.join(tmp, "payloads.jsonl"), "rb") as f:
                written = f.read()
            self.assert_next_run_serves_a_whole_dataset(tmp)
            with open(os.path.join(tmp, "payloads.jsonl"), "rb") as f:
                self.assertEqual(f.read(), written)


# ---------------------------------------------------------------- soak

class SoakTest(unittest.TestCase):
    """The soak compares both modules' answers and counts what differs."""

    def test_a_short_soak_serves_requests_with_no_mismatch_or_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=2000)
            with using_dataset(tmp):
                report = audit_soak.soak(threads=4, seconds=1, seed=3)
        self.assertGreater(report["requests"], 0)
        self.assertEqual((report["mismatches"], report["errors"]), (0, 0),
                         report)

    def test_a_soak_counts_a_wrong_page_and_an_error(self):
        real = enhanced_audit_log_service.query_events
        calls = itertools.count()

        def faulty(q):
            n = next(calls)
            if n % 3 == 1:
                raise RuntimeError("injected")
            page = real(q)
            return page[:-1] if n % 3 == 2 and page else page
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=2000)
            with using_dataset(tmp), mock.patch.object(
                    enhanced_audit_log_service, "query_events", faulty):
                report = audit_soak.soak(threads=2, seconds=1, seed=3)
        self.assertGreater(report["errors"], 0)
        self.assertGreater(report["mismatches"], 0)
        self.assertIn("RuntimeError: injected", report["error_samples"][0])
        self.assertLessEqual(len(report["error_samples"]), 5)

    def test_a_soak_refuses_no_threads_or_no_time(self):
        for threads, seconds in ((0, 1), (True, 1), (1, 0), (1, -1.0)):
            with self.subTest(threads=threads, seconds=seconds), \
                    self.assertRaisesRegex(ValueError, "threads|seconds"):
                audit_soak.soak(threads=threads, seconds=seconds)

    def test_the_soak_command_prints_its_figures_and_exits_zero(self):
        with tempfile.TemporaryDirectory() as tmp:
            seeded(tmp, rows=500)
            done = subprocess.run(
                [sys.executable, "runner.py", "soak", "--threads", "2",
                 "--seconds", "0.5", "--data-dir", tmp],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                timeout=WAIT_S)
        out = done.stdout.decode()
        self.assertEqual(done.returncode, 0, out + done.stderr.decode())
        self.assertRegex(out, r"requests served +[1-9]")
        self.assertRegex(out, r"mismatches +0\n")
        self.assertRegex(out, r"errors +0\n")
        self.assertIn(b"soak:", done.stderr)


if __name__ == "__main__":
    unittest.main()
