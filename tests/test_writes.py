"""Writing while reading: record_event, its checks, and paging as it grows.

``record_event`` appends the payload line, flushes it, then inserts the
row, under a lock shared by threads and processes.  These tests pin its
contract (ids, exact payloads, late arrivals, refused values, missing
files), then run a writer thread and a writer process against readers
that page by cursor and by number, compare the two modules after every
write, and kill a writer between the append and the insert.

Every behaviour that reads runs once per module (``Baseline...`` and
``Enhanced...``).  The enhanced cases need its snapshot to pick up writes
made after it was built.
"""

import contextlib
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import audit_dataset
import audit_log_service
import audit_writer
import enhanced_audit_log_service
from audit_query import Query
from tests import (MODULES, event, for_both_modules, temporary_dataset,
                   using_dataset, write_dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 120

LO, HI = 1000, 1199  # the initial events' times
WINDOW = (LO - 100, HI + 100)  # every event these tests write falls in it


def initial_events(n=120, seed=3):
    """``n`` events over LO..HI, many sharing a second."""
    rng = random.Random(seed)
    return [event(rng.randint(LO, HI), actor_id=rng.randint(1, 5),
                  action=rng.choice(("UPDATE", "CREATE")))
            for _ in range(n)]


def stored_rows(db_path):
    """``(created_at, id)`` of every row, newest first, straight from SQL."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(
            "SELECT created_at, id FROM audit_events"
            " ORDER BY created_at DESC, id DESC").fetchall()


def window_ids(db_path, lo=WINDOW[0], hi=WINDOW[1]):
    return [i for t, i in stored_rows(db_path) if lo <= t <= hi]


def marker(created_at, actor_id, **extra):
    """A payload that says which row it belongs to."""
    return dict(extra, created_at=created_at, actor=actor_id)


def check_event(test, e):
    """The payload read for a row is the one written for it."""
    test.assertEqual((e["payload"]["created_at"], e["payload"]["actor"]),
                     (e["created_at"], e["actor_id"]), e)


def walk_by_cursor(module, q, limit=10_000):
    """Every event of ``q``'s window, page after page by cursor."""
    events = []
    for _ in range(limit):
        got = module.handle_request(q)
        events += got["events"]
        if got["next_cursor"] is None:
            return events
        q = Query(**dict(q.as_dict(), cursor=got["next_cursor"]))
    raise AssertionError(f"paging by cursor did not end: {q}")


def walk_by_number(module, q, limit=10_000):
    """Every page of ``q``'s window by page number, until an empty one."""
    pages = []
    for page in range(1, limit):
        events = module.query_events(
            Query(**dict(q.as_dict(), page=page)))
        if not events:
            return pages
        pages.append(events)
    raise AssertionError(f"paging by number did not end: {q}")


class OnGrowingDataset:
    """A fresh dataset for each test; ``self.module`` points at it."""

    module = None

    def setUp(self):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        self.data_dir, self.db_path, self.payload_path = (
            stack.enter_context(temporary_dataset(
                initial_events(), modules=[self.module])))

    def all_ids(self):
        q = Query(*WINDOW, page_size=1000)
        return [e["id"] for e in self.module.query_events(q)]


# ---------------------------------------------------------------- contract

@for_both_modules
class RecordEventTest(OnGrowingDataset):

    def test_ids_increase_and_the_event_is_returned_with_its_payload(
            self):
        self.module.init()  # a snapshot taken before the writes
        payloads = [
            {"n": 1, "note": "\u00fcn\u00efc\u00f6de \u2713 \U0001f600",
             "nested": {"list": [1, 2.5, None, True, "x"], "e": {}}},
            {"n": 2, "line\nbreak": "tab\there \u2028 \"quoted\""},
            {},
        ]
        ids = [self.module.record_event(7, "EXPORT", "INVOICE",
                                        f"INVOICE-{n}", payload,
                                        created_at=HI + n)
               for n, payload in enumerate(payloads, 1)]
        self.assertEqual(ids, list(range(121, 124)))
        got = self.module.query_events(Query(HI + 1, HI + 3))
        self.assertEqual(got, [
            {"id": ids[n - 1], "created_at": HI + n, "actor_id": 7,
             "action": "EXPORT", "resource_type": "INVOICE",
             "resource_id": f"INVOICE-{n}", "payload": payloads[n - 1]}
            for n in (3, 2, 1)])

    def test_late_arrivals_are_sorted_into_place(self):
        before = self.all_ids()
        late = [(LO - 1, 4), (LO + 50, 2), (HI, 1), (LO + 50, 9)]
        for created_at, actor_id in late:
            self.module.record_event(actor_id, "UPDATE", "ORDER",
                                     "ORDER-9", marker(created_at,
                                                       actor_id),
                                     created_at=created_at)
        got = self.module.query_events(Query(*WINDOW, page_size=1000))
        self.assertEqual(len(got), len(before) + 4)
        self.assertEqual([e["id"] for e in got],
                         window_ids(self.db_path))
        for e in got:
            check_event(self, e)
        self.assertEqual(got[-1]["created_at"], LO - 1)

    def test_a_late_arrival_in_a_busy_second_goes_by_its_id(self):
        self.module.init()
        busiest = max(range(LO, HI + 1), key=lambda t: len(
            [1 for e in initial_events() if e["created_at"] == t]))
        new_id = self.module.record_event(1, "UPDATE", "ORDER", "ORDER-1",
                                          marker(busiest, 1),
                                          created_at=busiest)
        ids = [e["id"] for e in self.module.query_events(
            Query(busiest, busiest))]
        self.assertGreater(len(ids), 2)
        self.assertEqual(ids[0], new_id)
        self.assertEqual(ids, sorted(ids, reverse=True))

    def test_created_at_defaults_to_now(self):
        start = int(time.time())
        new_id = self.module.record_event(3, "LOGIN", "USER", "USER-3",
                                          {"k": "v"})
        end = int(time.time())
        got = self.module.query_events(Query(start, end))
        self.assertEqual([e["id"] for e in got], [new_id])
        self.assertEqual(got[0]["payload"], {"k": "v"})

    def test_text_actors_that_stay_text_are_kept_exactly(self):
        self.module.init()
        for actor in ("alice", "", "7a", "0x10", "inf", "\u0661\u0662"):
            with self.subTest(actor=actor):
                new_id = self.module.record_event(
                    actor, "LOGIN", "USER", "USER-1", {"a": actor},
                    created_at=LO)
                got = self.module.query_events(
                    Query(LO, LO, actor_id=actor))
                self.assertEqual([(e["id"], e["actor_id"]) for e in got],
                                 [(new_id, actor)])
                self.assertIs(type(got[0]["actor_id"]), str)

    def test_extreme_times_are_recorded_and_found(self):
        self.module.init()
        for created_at in (-2 ** 63, 2 ** 63 - 1, 0):
            with self.subTest(created_at=created_at):
                new_id = self.module.record_event(
                    1, "LOGIN", "USER", "USER-1", {}, created_at)
                got = self.module.query_events(
                    Query(created_at, created_at))
                self.assertEqual([e["id"] for e in got], [new_id])


class PayloadLineTest(unittest.TestCase):

    def test_the_line_is_compact_utf8_json_with_one_newline_at_the_end(
            self):
        with temporary_dataset(initial_events(3)) as (_, db, payloads):
            size = os.path.getsize(payloads)
            payload = {"b": [1, 2], "a": "\u00e9\U0001f600"}
            new_id = audit_log_service.record_event(1, "A", "B", "C",
                                                    payload, 5)
            with open(payloads, "rb") as f:
                data = f.read()
            line = ('{"b":[1,2],"a":"\u00e9\U0001f600"}\n').encode()
            self.assertEqual(data[size:], line)
            with contextlib.closing(sqlite3.connect(db)) as conn:
                row = conn.execute(
                    "SELECT payload_offset, payload_len, actor_id,"
                    " typeof(actor_id) FROM audit_events WHERE id = ?",
                    (new_id,)).fetchone()
            self.assertEqual(row, (size, len(line), 1, "integer"))

    def test_a_torn_last_line_gets_a_newline_before_the_next_one(self):
        with temporary_dataset(initial_events(3)) as (_, db, payloads):
            with open(payloads, "ab") as f:
                f.write(b'{"torn": tr')
            size = os.path.getsize(payloads)
            new_id = audit_log_service.record_event(1, "A", "B", "C",
                                                    {"ok": 1}, 5)
            with open(payloads, "rb") as f:
                self.assertEqual(f.read()[size:], b'\n{"ok":1}\n')
            for module in MODULES:
                got = module.query_events(Query(0, HI + 1))
                self.assertEqual(got[-1]["id"], new_id)
                self.assertEqual(got[-1]["payload"], {"ok": 1})
                self.assertEqual(len(got), 4)


class RefusedValuesTest(unittest.TestCase):
    """Every refusal names the field and the value, and writes nothing."""

    GOOD = dict(actor_id=1, action="UPDATE", resource_type="ORDER",
                resource_id="ORDER-1", payload={"a": 1}, created_at=LO)

    def assert_refused(self, error, pattern, **changes):
        fields = dict(self.GOOD, **changes)
        for module in MODULES:
            with self.subTest(module=module.__name__,
                              fields=sorted(changes)), \
                    self.assertRaisesRegex(error, pattern):
                module.record_event(**fields)

    def setUp(self):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        _, self.db_path, self.payload_path = stack.enter_context(
            temporary_dataset(initial_events(3)))
        self.sizes = (os.path.getsize(self.db_path),
                      os.path.getsize(self.payload_path))
        self.addCleanup(self.assert_nothing_written)

    def assert_nothing_written(self):
        self.assertEqual((os.path.getsize(self.db_path),
                          os.path.getsize(self.payload_path)), self.sizes)
        self.assertEqual(len(stored_rows(self.db_path)), 3)

    def test_times_must_be_64_bit_ints(self):
        for value, error, shown in (
                (True, TypeError, r"be an int, got True \(bool\)"),
                (1.0, TypeError, r"be an int, got 1\.0 \(float\)"),
                ("5", TypeError, r"be an int, got '5' \(str\)"),
                (2 ** 63, ValueError,
                 r"fit in a signed 64-bit integer, got 9223372036854775808"),
                (-2 ** 63 - 1, ValueError, r"fit in a signed 64-bit")):
            self.assert_refused(error, r"^created_at must " + shown,
                                created_at=value)

    def test_actors_must_be_64_bit_ints_or_text(self):
        for value, shown in ((True, r"True \(bool\)"),
                             (1.5, r"1\.5 \(float\)"),
                             (None, r"None \(NoneType\)"),
                             (b"7", r"b'7' \(bytes\)")):
            self.assert_refused(
                TypeError, r"^actor_id must be an int or a str, got "
                           + shown + "$", actor_id=value)
        self.assert_refused(ValueError, r"^actor_id must fit in a signed"
                                        r" 64-bit integer, got -?\d+$",
                            actor_id=-2 ** 63 - 1)

    def test_actor_text_that_sqlite_would_turn_into_a_number_is_refused(
            self):
        for text, stored in (("42", "42"), ("007", "7"), (" 7", "7"),
                             ("1e3", "1000"), ("1.5", "1.5"),
                             ("+5", "5"), ("1.0", "1"),
                             ("9223372036854775808",
                              r"9\.223372036854776e\+18")):
            self.assert_refused(
                ValueError, rf"^actor_id {re.escape(repr(text))} would"
                            rf" be stored as"
                            rf" {stored}: the INTEGER column actor_id"
                            r" turns text .* \(pass the int instead\)$",
                actor_id=text)

    def test_text_with_a_lone_surrogate_is_refused(self):
        for field in ("actor_id", "action", "resource_type",
                      "resource_id"):
            self.assert_refused(
                ValueError, rf"^{field} must be valid Unicode text \(no"
                            r" lone surrogates\), got 'x\\udc80'$",
                **{field: "x\udc80"})

    def test_action_and_resource_fields_must_be_text(self):
        for field in ("action", "resource_type", "resource_id"):
            for value, shown in ((None, r"None \(NoneType\)"),
                                 (5, r"5 \(int\)"),
                                 (b"x", r"b'x' \(bytes\)")):
                self.assert_refused(
                    TypeError, rf"^{field} must be a str, got {shown}$",
                    **{field: value})

    def test_the_payload_must_be_a_dict(self):
        for value, shown in (([1], r"\[1\] \(list\)"),
                             ('{"a": 1}', r"'\{\"a\": 1\}' \(str\)"),
                             (None, r"None \(NoneType\)")):
            self.assert_refused(
                TypeError, rf"^payload must be a dict, got {shown}$",
                payload=value)

    def test_the_payload_must_be_strict_json(self):
        for value in ({"a": math.nan}, {"a": [1, math.inf]},
                      {"a": -math.inf}):
            self.assert_refused(ValueError, r"^payload must be strict"
                                            r" JSON \(.*\), got \{'a'",
                                payload=value)
        self.assert_refused(TypeError, r"^payload must hold only JSON"
                                       r" values \(.*set.*\), got",
                            payload={"a": {1, 2}})
        self.assert_refused(ValueError, r"^payload must be valid Unicode"
                                        r" text \(no lone surrogates\)",
                            payload={"a": "\ud800"})

    def test_a_payload_that_would_read_back_different_is_refused(self):
        for value in ({1: "a"}, {"a": (1, 2)}, {"a": {None: 1}}):
            self.assert_refused(
                ValueError, r"^payload would not read back equal from"
                            r" JSON \(keys must be str, sequences lists\)",
                payload=value)

    def test_a_payload_nested_too_deeply_is_refused(self):
        deep = {}
        inner = deep
        for _ in range(100_000):
            inner["a"] = {}
            inner = inner["a"]
        self.assert_refused(ValueError, r"^payload is nested too deeply"
                                        r" for JSON, got \{'a'",
                            payload=deep)

    def test_a_long_payload_is_shown_shortened(self):
        with self.assertRaises(ValueError) as caught:
            audit_log_service.record_event(
                **dict(self.GOOD, payload={"a": math.nan, "b": "x" * 9999}))
        self.assertLess(len(str(caught.exception)), 300)


class MissingDatasetTest(unittest.TestCase):
    """A missing file is an error naming it, and nothing is created."""

    def assert_missing(self, tmp, missing):
        before = sorted(os.listdir(tmp)) if os.path.isdir(tmp) else None
        for module in MODULES:
            with self.subTest(module=module.__name__):
                with using_dataset(tmp, [module]), self.assertRaisesRegex(
                        audit_dataset.DatasetMissingError,
                        "not found: " + missing.replace("\\", "\\\\")):
                    module.record_event(1, "A", "B", "C", {})
        after = sorted(os.listdir(tmp)) if os.path.isdir(tmp) else None
        self.assertEqual(after, before)

    def test_a_missing_database_is_an_error_naming_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            _, db, payloads = audit_dataset.resolve_paths(tmp)
            with open(payloads, "wb"):
                pass
            self.assert_missing(tmp, db)
            self.assertEqual(os.path.getsize(payloads), 0)

    def test_a_missing_payload_file_is_an_error_naming_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            db, payloads = write_dataset(tmp, initial_events(2))
            os.remove(payloads)
            size = os.path.getsize(db)
            self.assert_missing(tmp, payloads)
            self.assertEqual(os.path.getsize(db), size)

    def test_an_empty_or_missing_directory_gets_no_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assert_missing(tmp, os.path.join(tmp, "audit.db"))
            gone = os.path.join(tmp, "gone")
            self.assert_missing(gone, os.path.join(gone, "audit.db"))
            self.assertFalse(os.path.exists(gone))


# ---------------------------------------------------------------- concurrency

WRITER = """
import random, sys
import audit_dataset, audit_writer
_, db, payloads = audit_dataset.resolve_paths(sys.argv[1])
rng = random.Random(int(sys.argv[3]))
for n in range(int(sys.argv[2])):
    t = rng.randint(%d, %d)
    actor = rng.randint(1, 5)
    new_id = audit_writer.append_event(
        db, payloads, actor, "CREATE", "USER", "USER-%%d" %% n,
        {"created_at": t, "actor": actor, "writer": "process", "n": n}, t)
    print(new_id, flush=True)
""" % WINDOW


def writer_process(data_dir, count, seed, crash_at=None, **popen_args):
    env = dict(os.environ)
    env.pop("AUDIT_LOG_WRITE_CRASH_AT", None)
    if crash_at:
        env["AUDIT_LOG_WRITE_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, data_dir, str(count), str(seed)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, **popen_args)


@for_both_modules
class WritersAndReadersTest(OnGrowingDataset):
    """A writer thread and a writer process against paging readers."""

    N_THREAD = 150
    N_PROCESS = 150

    def test_paging_by_cursor_returns_every_existing_event_once(self):
        errors, walks = [], []
        done = threading.Event()
        thread_ids = []

        def write():
            rng = random.Random(9)
            try:
                for n in range(self.N_THREAD):
                    t = rng.randint(*WINDOW)
                    thread_ids.append(self.module.record_event(
                        n % 5 + 1, "UPDATE", "ORDER", f"ORDER-{n}",
                        marker(t, n % 5 + 1, writer="thread"), t))
            except BaseException as exc:
                errors.append(exc)

        def read_by_cursor(page_size):
            try:
                while True:
                    finished = done.is_set()
                    existing = window_ids(self.db_path)
                    events = walk_by_cursor(
                        self.module, Query(*WINDOW, page_size=page_size))
                    walks.append((existing, events))
                    if finished:
                        return
            except BaseException as exc:
                errors.append(exc)

        def read_by_number(page_size):
            try:
                while True:
                    finished = done.is_set()
                    for page in walk_by_number(
                            self.module, Query(*WINDOW,
                                               page_size=page_size)):
                        keys = [(e["created_at"], e["id"]) for e in page]
                        if keys != sorted(set(keys), reverse=True):
                            raise AssertionError(f"page not in order:"
                                                 f" {keys}")
                        for e in page:
                            check_event(self, e)
                    if finished:
                        return
            except BaseException as exc:
                errors.append(exc)

        self.module.init()
        child = writer_process(self.data_dir, self.N_PROCESS, 4)
        readers = [threading.Thread(target=read_by_cursor, args=(size,))
                   for size in (1, 7, 50)]
        readers += [threading.Thread(target=read_by_number, args=(size,))
                    for size in (9, 40)]
        writer = threading.Thread(target=write)
        for thread in readers + [writer]:
            thread.start()
        try:
            out, _ = child.communicate(timeout=WAIT_S)
            writer.join(WAIT_S)
        finally:
            done.set()
            for thread in readers:
                thread.join(WAIT_S)
        self.assertEqual(child.returncode, 0)
        self.assertEqual(errors, [])

        process_ids = [int(line) for line in out.split()]
        self.assertEqual(len(thread_ids), self.N_THREAD)
        self.assertEqual(len(process_ids), self.N_PROCESS)
        self.assertEqual(thread_ids, sorted(thread_ids))
        self.assertEqual(process_ids, sorted(process_ids))
        self.assertEqual(len(set(thread_ids + process_ids)),
                         self.N_THREAD + self.N_PROCESS)
        self.assertGreater(len(walks), 3)
        for existing, events in walks:
            keys = [(e["created_at"], e["id"]) for e in events]
            self.assertEqual(keys, sorted(set(keys), reverse=True),
                             "a walk by cursor repeated or reordered")
            got = {e["id"] for e in events}
            self.assertEqual(set(existing) - got, set(),
                             "a walk by cursor skipped events")
            for e in events:
                check_event(self, e)

        # Once the writers are done, both kinds of paging see everything.
        final = window_ids(self.db_path)
        self.assertEqual(len(final), 120 + self.N_THREAD + self.N_PROCESS)
        for size in (1, 13):
            q = Query(*WINDOW, page_size=size)
            self.assertEqual([e["id"] for e in walk_by_cursor(
                self.module, q)], final)
            self.assertEqual([e["id"] for page in walk_by_number(
                self.module, q) for e in page], final)

    def test_several_writer_threads_get_distinct_ids_and_their_bytes(self):
        results, errors = [], []

        def write(k):
            try:
                for n in range(40):
                    payload = marker(LO + n, k, pad="x" * (k * 37 + n))
                    results.append((self.module.record_event(
                        k, "UPDATE", "ORDER", "ORDER-1", payload, LO + n),
                        payload))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(k,))
                   for k in range(1, 7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        self.assertEqual(errors, [])
        self.assertEqual(len({i for i, _ in results}), 240)
        by_id = {e["id"]: e for e in self.module.query_events(
            Query(*WINDOW, page_size=1000))}
        for new_id, payload in results:
            self.assertEqual(by_id[new_id]["payload"], payload)


class EquivalenceAfterEveryWriteTest(unittest.TestCase):
    """Both modules, warm, return the same pages after each write."""

    def test_both_modules_agree_after_every_write(self):
        rng = random.Random(21)
        with temporary_dataset(initial_events()) as (_, db, _payloads):
            for module in MODULES:
                module.init()
            for n in range(40):
                t = rng.choice((LO - 5, LO, rng.randint(LO, HI), HI,
                                HI + 7, None))
                actor = rng.choice((1, 2, 6, "bob"))
                writer = MODULES[n % 2]
                new_id = writer.record_event(
                    actor, rng.choice(("UPDATE", "DELETE")), "ORDER",
                    f"ORDER-{n % 3}", {"n": n}, t)
                when = t if t is not None else int(time.time())
                queries = [
                    Query(*WINDOW, page_size=1000),
                    Query(when - 3, when + 3, page_size=1000),
                    Query(*WINDOW, actor_id=actor, page_size=5),
                    Query(*WINDOW, action="DELETE", page=2, page_size=3),
                    Query(LO, HI, resource_id=f"ORDER-{n % 3}",
                          actor_id=actor, page_size=1000),
                ]
                with self.subTest(write=n, created_at=t):
                    self.assertIn(new_id, [e["id"] for e in
                                           audit_log_service.query_events(
                                               queries[1])])
                    for q in queries:
                        self.assertEqual(
                            enhanced_audit_log_service.query_events(q),
                            audit_log_service.query_events(q), q)
                    q = Query(*WINDOW, page_size=17)
                    self.assertEqual(
                        walk_by_cursor(enhanced_audit_log_service, q),
                        walk_by_cursor(audit_log_service, q))
                    self.assertEqual(
                        [e["id"] for e in walk_by_cursor(
                            audit_log_service, q)],
                        window_ids(db))


# ---------------------------------------------------------------- crash

@unittest.skipUnless(hasattr(signal, "SIGKILL"), "needs SIGKILL")
@for_both_modules
class CrashBetweenAppendAndInsertTest(OnGrowingDataset):
    """A writer killed after the append and before the insert."""

    def crash_one_write(self):
        size = os.path.getsize(self.payload_path)
        rows = stored_rows(self.db_path)
        child = writer_process(self.data_dir, 1, 8,
                               crash_at="between_append_and_insert")
        out, _ = child.communicate(timeout=WAIT_S)
        self.assertEqual(child.returncode, -signal.SIGKILL)
        self.assertEqual(out, b"")
        with open(self.payload_path, "rb") as f:
            f.seek(size)
            orphan = f.read()
        self.assertIn(b'"writer":"process"', orphan)
        self.assertTrue(orphan.endswith(b"\n"))
        self.assertEqual(orphan.count(b"\n"), 1)
        self.assertEqual(stored_rows(self.db_path), rows)
        return orphan

    def test_the_log_stays_consistent_and_the_orphan_is_never_returned(
            self):
        self.crash_one_write()
        events = walk_by_cursor(self.module, Query(*WINDOW, page_size=33))
        self.assertEqual([e["id"] for e in events],
                         window_ids(self.db_path))
        self.assertEqual(len(events), 120)
        for e in events:
            check_event(self, e)
            self.assertNotIn("writer", e["payload"])

    def test_a_write_after_the_crash_is_recorded_and_found(self):
        self.module.init()
        before = self.all_ids()
        self.crash_one_write()
        self.assertEqual(self.all_ids(), before)
        size = os.path.getsize(self.payload_path)
        new_id = self.module.record_event(2, "DELETE", "USER", "USER-2",
                                          marker(LO, 2, after="crash"),
                                          LO)
        self.assertGreater(new_id, max(before))
        got = self.module.query_events(Query(LO, LO, actor_id=2,
                                             action="DELETE"))
        self.assertEqual([e["id"] for e in got], [new_id])
        self.assertEqual(got[0]["payload"], marker(LO, 2, after="crash"))
        self.assertEqual(self.all_ids(), window_ids(self.db_path))
        with contextlib.closing(sqlite3.connect(self.db_path)) as conn:
            (offset,), = conn.execute(
                "SELECT payload_offset FROM audit_events WHERE id = ?",
                (new_id,)).fetchall()
        # Right after the orphan line, which stays unreferenced.
        self.assertEqual(offset, size)


if __name__ == "__main__":
    unittest.main()


class ReplacedDatasetTest(unittest.TestCase):
    """Files swapped in at the same paths (an import with --replace) are
    served by the next request of the enhanced module, without a restart."""

    def test_the_enhanced_module_serves_the_files_that_replaced_its_own(
            self):
        module = enhanced_audit_log_service
        old = [event(100 + i, actor_id=1) for i in range(5)]
        new = [event(200 + i, actor_id=2) for i in range(3)]
        q = Query(0, 10 ** 6)
        with temporary_dataset(old, modules=[module]) as paths:
            data_dir = paths[0]
            self.assertEqual([e["created_at"] for e in
                              module.query_events(q)],
                             [104, 103, 102, 101, 100])
            builds = module._builds
            with tempfile.TemporaryDirectory(dir=data_dir) as staging:
                db, payloads = write_dataset(staging, new)
                os.replace(payloads, paths[2])
                os.replace(db, paths[1])
            got = module.query_events(q)
            self.assertEqual([e["created_at"] for e in got],
                             [202, 201, 200])
            self.assertEqual([e["actor_id"] for e in got], [2, 2, 2])
            self.assertEqual(module._builds, builds + 1)

    def test_a_dirty_view_asks_the_database_that_replaced_the_old_one(
            self):
        # A view whose rows do not account for every payload byte asks
        # SQLite for its largest id on each request.  After the files are
        # replaced, it must ask the new database, not a connection kept
        # to the old one, or a row committed without a new payload byte
        # (a write that was in flight) would never be seen.
        module = enhanced_audit_log_service
        q = Query(0, 10 ** 6)
        orphan = b'{"no": "row"}\n'
        with temporary_dataset([event(100 + i) for i in range(3)],
                               modules=[module]) as paths:
            _, db_path, payload_path = paths
            with open(payload_path, "ab") as f:
                f.write(orphan)
            self.assertEqual(len(module.query_events(q)), 3)
            self.assertEqual(len(module.query_events(q)), 3)  # asks SQLite
            with tempfile.TemporaryDirectory(dir=paths[0]) as staging:
                db, payloads = write_dataset(
                    staging, [event(200 + i) for i in range(3)])
                with open(payloads, "ab") as f:
                    f.write(orphan)
                os.replace(payloads, payload_path)
                os.replace(db, db_path)
            self.assertEqual([e["created_at"] for e in
                              module.query_events(q)], [202, 201, 200])
            size = os.path.getsize(payload_path)
            conn = sqlite3.connect(db_path)
            with conn:
                conn.execute(
                    "INSERT INTO audit_events (created_at, actor_id,"
                    " action, resource_type, resource_id, payload_offset,"
                    " payload_len) VALUES (300, 1, 'UPDATE', 'ORDER',"
                    " 'ORDER-1', ?, ?)", (size - len(orphan), len(orphan)))
            conn.close()
            got = module.query_events(q)
            self.assertEqual([e["created_at"] for e in got],
                             [300, 202, 201, 200])
            self.assertEqual(got[0]["payload"], {"no": "row"})


class BackgroundRebuildTest(unittest.TestCase):
    """Past DELTA_LIMIT new events, a thread rebuilds the base while
    requests go on; no request waits for a rebuild of its own."""

    def test_the_base_is_rebuilt_in_the_background_and_answers_stay_right(
            self):
        module = enhanced_audit_log_service
        q = Query(0, 10 ** 6, page_size=50)
        saved = module.DELTA_LIMIT
        with temporary_dataset([event(100 + i) for i in range(20)]):
            module.init()
            builds, compactions = module._builds, module._compactions
            module.DELTA_LIMIT = 5
            try:
                for i in range(14):
                    # Late arrivals, sorted in among the old events.
                    module.record_event(1, "UPDATE", "ORDER", f"ORDER-{i}",
                                        {"i": i}, created_at=95 + 2 * i)
                    self.assertEqual(module.query_events(q),
                                     audit_log_service.query_events(q))
                    compactor = module._compactor
                    if compactor is not None:
                        compactor.join(30)
            finally:
                module.DELTA_LIMIT = saved
            self.assertEqual(module._builds, builds)
            self.assertGreaterEqual(module._compactions, compactions + 2)
            view = module._snapshot
            self.assertGreater(view.base.size, 20)
            self.assertLessEqual(len(view.delta_rows), 6)
            self.assertEqual(module.query_events(q),
                             audit_log_service.query_events(q))
            self.assertEqual(len(module.query_events(q)), 34)


class ReadYourWritesRaceTest(unittest.TestCase):
    """A view another thread publishes while a request waits for the lock
    was read before that request began; the request must not serve it
    without checking it against the files again."""

    def record_during(self, method_name):
        """Record an event while another thread is inside ``method_name``
        of the enhanced module (after it read the rows, before it
        publishes), then query it at once."""
        module = enhanced_audit_log_service
        target = module.Snapshot if method_name == "load" else module._View
        saved = target.__dict__[method_name]
        real = getattr(target, method_name)
        inside, recorded = threading.Event(), threading.Event()

        def slow(*args, **kwargs):
            result = real(*args, **kwargs)
            if threading.current_thread().name == "slow-reader":
                inside.set()
                recorded.wait(10)
            return result

        q = Query(0, 10 ** 6, action="FRESH")
        with temporary_dataset([event(100 + i) for i in range(30)]):
            if method_name == "refreshed":
                module.init()
                module.record_event(1, "UPDATE", "ORDER", "ORDER-1", {},
                                    created_at=50)
            setattr(target, method_name, slow)
            try:
                reader = threading.Thread(
                    target=module.query_events, name="slow-reader",
                    args=(Query(0, 10 ** 6),))
                reader.start()
                self.assertTrue(inside.wait(10))
                new_id = audit_log_service.record_event(
                    2, "FRESH", "ORDER", "ORDER-2", {"fresh": True},
                    created_at=150)
                waiter = threading.Thread(target=lambda: (
                    time.sleep(0.2), recorded.set()))
                waiter.start()
                got = module.query_events(q)
                reader.join(10)
                waiter.join(10)
            finally:
                setattr(target, method_name, saved)
            self.assertEqual([e["id"] for e in got], [new_id])

    def test_an_event_recorded_during_the_first_build_is_served(self):
        enhanced_audit_log_service._snapshot = None
        self.record_during("load")

    def test_an_event_recorded_during_a_refresh_is_served(self):
        self.record_during("refreshed")


class ImportSwapTest(unittest.TestCase):
    """An import moves the new payload file into place, then the new
    database; a request in between must not pin the old database."""

    def test_a_view_built_between_the_two_moves_sees_the_new_database(
            self):
        module = enhanced_audit_log_service
        q = Query(0, 10 ** 6, page_size=100)
        with temporary_dataset([event(100 + i) for i in range(10)]) as paths:
            data_dir, db_path, payload_path = paths
            self.assertEqual(len(module.query_events(q)), 10)
            with tempfile.TemporaryDirectory(dir=data_dir) as staging:
                new_db = os.path.join(staging, "audit.db")
                new_payloads = os.path.join(staging, "payloads.jsonl")
                shutil.copyfile(db_path, new_db)
                shutil.copyfile(payload_path, new_payloads)
                for i in range(5):
                    audit_writer.append_event(
                        new_db, new_payloads, 1, "UPDATE", "ORDER",
                        f"ORDER-{i}", {"i": i}, created_at=200 + i)
                os.replace(new_payloads, payload_path)
                self.assertEqual(len(module.query_events(q)), 10)
                self.assertEqual(len(module.query_events(q)), 10)
                os.replace(new_db, db_path)
            got = module.query_events(q)
            self.assertEqual(got, audit_log_service.query_events(q))
            self.assertEqual(len(got), 15)


class SameInodeReplacementTest(unittest.TestCase):
    """A dataset replaced by files that got the old inode numbers (a file
    system reuses them after a delete) is still noticed, by the row of the
    newest event the view holds."""

    def test_files_rewritten_in_place_with_another_dataset_are_served(self):
        module = enhanced_audit_log_service
        q = Query(0, 10 ** 6, page_size=100)
        old = [event(100 + i, actor_id=1) for i in range(10)]
        new = [event(500 + i, actor_id=2, payload={"new": i, "pad": "x" * 40})
               for i in range(12)]
        with temporary_dataset(old) as paths:
            _, db_path, payload_path = paths
            self.assertEqual(len(module.query_events(q)), 10)
            with tempfile.TemporaryDirectory() as other:
                other_db, other_payloads = write_dataset(other, new)
                for target, source in ((payload_path, other_payloads),
                                       (db_path, other_db)):
                    with open(source, "rb") as f:
                        content = f.read()
                    with open(target, "r+b") as f:  # same inode
                        f.truncate(0)
                        f.write(content)
            got = module.query_events(q)
            self.assertEqual(got, audit_log_service.query_events(q))
            self.assertEqual([e["created_at"] for e in got],
                             list(range(511, 499, -1)))
