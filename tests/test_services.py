"""The query contract, run against both modules on small datasets.

Each behaviour is a mixin run once per module (``BaselineX`` and
``EnhancedX``), on a ten-event dataset whose ids are deliberately not in
time order, so that only a correct ``created_at DESC, id DESC`` order
passes.  Then the enhanced module is compared with the baseline on a
generated dataset, started cold from 32 threads, and checked for reading
payloads per request with one open of the payload file, at a cost that
does not depend on the page number.
"""

import contextlib
import json
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import tracemalloc
import unittest
from unittest import mock

import audit_log_service
import audit_seed
import enhanced_audit_log_service
from audit_query import Query, pick_query
from tests import (for_both_modules, reset, temporary_dataset,
                   using_dataset)

ANCHOR = 400
WEEK = 7 * 86400

# (id, created_at, actor_id, action, resource_type, resource_id), listed
# in the order they are written: neither id nor time order.
ROWS = [
    (8, 50, 1, "LOGIN", "USER", "USER-5"),
    (4, 100, 3, "UPDATE", "INVOICE", "INVOICE-9"),
    (10, 300, 2, "UPDATE", "ORDER", "ORDER-1"),
    (1, 250, 1, "UPDATE", "ORDER", "ORDER-1"),
    (2, 100, 2, "CREATE", "USER", "USER-5"),
    (9, 100, 1, "DELETE", "ORDER", "ORDER-2"),
    (3, 300, 3, "CREATE", "ORDER", "ORDER-1"),
    (6, 180, 1, "UPDATE", "USER", "USER-5"),
    (5, 180, 2, "UPDATE", "ORDER", "ORDER-2"),
    (7, 100, 1, "UPDATE", "ORDER", "ORDER-1"),
]
# Every event, newest first, ties on created_at broken by id DESC.
ALL_IDS = [10, 3, 1, 6, 5, 9, 7, 4, 2, 8]
EVENT_KEYS = ["id", "created_at", "actor_id", "action", "resource_type",
              "resource_id", "payload"]


def payload_of(event_id):
    payload = {"n": event_id, "v": "old",
               "nested": {"list": [1, 2.5, None, True, "x"]}}
    if event_id == 3:
        payload["note"] = "\u00fcn\u00efc\u00f6de \u2713 \U0001f600"
    return payload


def events():
    return [dict(id=i, created_at=t, actor_id=a, action=act,
                 resource_type=rt, resource_id=rid, payload=payload_of(i))
            for i, t, a, act, rt, rid in ROWS]


def reference_ids(q):
    """The ids of the page ``q`` asks for, by brute force over ROWS."""
    wanted = {name: getattr(q, name) for name in
              ("actor_id", "action", "resource_type", "resource_id")}
    matching = []
    for i, t, a, act, rt, rid in ROWS:
        row = {"actor_id": a, "action": act, "resource_type": rt,
               "resource_id": rid}
        if q.from_ts <= t <= q.to_ts and all(
                v is None or row[k] == v for k, v in wanted.items()):
            matching.append((t, i))
    matching.sort(reverse=True)
    return [i for _, i in matching[q.offset:q.offset + q.page_size]]


class OnSmallDataset:
    """Points ``self.module`` at a fresh copy of ROWS for each test."""

    module = None

    def setUp(self):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        self.paths = stack.enter_context(temporary_dataset(
            events(), anchor=ANCHOR, modules=[self.module]))

    def ids(self, q):
        return [e["id"] for e in self.module.query_events(q)]

    def assert_pages(self, cases):
        for q, expected in cases:
            with self.subTest(q=q):
                self.assertEqual(self.ids(q), expected)


@for_both_modules
class TiesAreBrokenByIdDescending(OnSmallDataset):

    def test_events_in_the_same_second_come_highest_id_first(self):
        self.assertEqual(self.ids(Query(100, 100)), [9, 7, 4, 2])
        self.assertEqual(self.ids(Query(300, 300)), [10, 3])

    def test_paging_one_event_at_a_time_through_a_tie_keeps_the_order(
            self):
        got = [self.ids(Query(100, 100, page=p, page_size=1))
               for p in range(1, 6)]
        self.assertEqual(got, [[9], [7], [4], [2], []])

    def test_the_whole_log_is_newest_first_then_id_descending(self):
        self.assertEqual(self.ids(Query(0, 10 ** 6, page_size=1000)),
                         ALL_IDS)


@for_both_modules
class WindowEdgesAreInclusive(OnSmallDataset):

    def test_events_exactly_on_both_edges_are_included(self):
        self.assert_pages([
            (Query(100, 250), [1, 6, 5, 9, 7, 4, 2]),
            (Query(50, 300, page_size=1000), ALL_IDS),
            (Query(180, 180), [6, 5]),
            (Query(50, 50), [8]),
        ])

    def test_the_widest_window_a_query_allows_holds_every_event(self):
        widest = dict(from_ts=-(2 ** 63), to_ts=2 ** 63 - 1)
        self.assert_pages([
            (Query(page_size=1000, **widest), ALL_IDS),
            (Query(actor_id=1, action="UPDATE", **widest), [1, 6, 7]),
            (Query(page=2 ** 63 - 1, page_size=1, **widest), []),
        ])

    def test_a_second_past_either_edge_drops_the_edge_events(self):
        self.assert_pages([
            (Query(101, 249), [6, 5]),
            (Query(51, 299), [1, 6, 5, 9, 7, 4, 2]),
        ])

    def test_every_window_between_the_event_times_matches_brute_force(
            self):
        times = [49, 50, 51, 99, 100, 101, 179, 180, 181, 250, 300, 301]
        for lo in times:
            for hi in times:
                if lo <= hi:
                    q = Query(lo, hi, page_size=3)
                    with self.subTest(q=q):
                        self.assertEqual(self.ids(q), reference_ids(q))


@for_both_modules
class EmptyWindowsGiveEmptyPages(OnSmallDataset):

    def test_windows_holding_no_event_give_an_empty_list(self):
        for lo, hi in ((101, 179), (0, 49), (301, 10 ** 6),
                       (-(2 ** 63), -1), (181, 249)):
            with self.subTest(window=(lo, hi)):
                self.assertEqual(self.module.query_events(Query(lo, hi)),
                                 [])

    def test_a_filter_value_absent_from_the_data_gives_an_empty_list(
            self):
        for q in (Query(0, 400, action="update"),
                  Query(0, 400, actor_id=99),
                  Query(0, 400, actor_id="1"),
                  Query(0, 400, resource_id="ORDER-1 ")):
            with self.subTest(q=q):
                self.assertEqual(self.module.query_events(q), [])


@for_both_modules
class PagesPastTheEndAreEmpty(OnSmallDataset):

    def test_the_last_page_is_short_and_the_next_is_empty(self):
        self.assert_pages([
            (Query(0, 400, page=1, page_size=7), ALL_IDS[:7]),
            (Query(0, 400, page=2, page_size=7), [4, 2, 8]),
            (Query(0, 400, page=3, page_size=7), []),
        ])

    def test_very_deep_pages_are_empty(self):
        self.assert_pages([
            (Query(0, 400, page=10 ** 9), []),
            (Query(0, 400, page=2 ** 40, page_size=1000), []),
            (Query(0, 400, actor_id=1, page=10 ** 6), []),
            (Query(0, 400, actor_id=1, action="UPDATE", page=10 ** 6),
             []),
        ])


@for_both_modules
class PageSizeOneAndAThousand(OnSmallDataset):

    def test_page_size_1_gives_one_event_per_page_in_order(self):
        got = [self.ids(Query(0, 400, page=p, page_size=1))
               for p in range(1, 12)]
        self.assertEqual(got, [[i] for i in ALL_IDS] + [[]])

    def test_page_size_1000_gives_every_event_on_page_1(self):
        self.assert_pages([
            (Query(0, 400, page_size=1000), ALL_IDS),
            (Query(0, 400, page=2, page_size=1000), []),
        ])


@for_both_modules
class FiltersAloneAndCombined(OnSmallDataset):

    def test_each_filter_alone_keeps_only_its_events(self):
        self.assert_pages([
            (Query(0, 400, actor_id=1), [1, 6, 9, 7, 8]),
            (Query(0, 400, action="UPDATE"), [10, 1, 6, 5, 7, 4]),
            (Query(0, 400, resource_type="USER"), [6, 2, 8]),
            (Query(0, 400, resource_id="ORDER-1"), [10, 3, 1, 7]),
            (Query(100, 180, actor_id=1), [6, 9, 7]),
        ])

    def test_filters_combine_with_and(self):
        self.assert_pages([
            (Query(0, 400, actor_id=1, action="UPDATE"), [1, 6, 7]),
            (Query(0, 400, action="UPDATE", resource_type="ORDER"),
             [10, 1, 5, 7]),
            (Query(0, 400, resource_type="ORDER", resource_id="ORDER-1"),
             [10, 3, 1, 7]),
            (Query(0, 400, actor_id=1, action="UPDATE",
                   resource_type="ORDER", resource_id="ORDER-1"), [1, 7]),
            (Query(0, 400, actor_id=2, action="LOGIN"), []),
            (Query(0, 400, actor_id=1, action="UPDATE", page=2,
                   page_size=2), [7]),
        ])

    def test_every_filter_set_and_page_matches_brute_force(self):
        values = {"actor_id": (1, 2), "action": ("UPDATE", "CREATE"),
                  "resource_type": ("ORDER", "USER"),
                  "resource_id": ("ORDER-1", "USER-5")}
        names = list(values)
        for mask in range(16):
            for pick in range(2):
                fields = {n: values[n][pick] for k, n in enumerate(names)
                          if mask >> k & 1}
                for page, size in ((1, 2), (2, 2), (1, 1000)):
                    q = Query(50, 300, page=page, page_size=size,
                              **fields)
                    with self.subTest(q=q):
                        self.assertEqual(self.ids(q), reference_ids(q))


@for_both_modules
class EventDictsHaveTheContractShape(OnSmallDataset):

    def test_each_event_has_exactly_the_keys_in_contract_order(self):
        got = self.module.query_events(Query(0, 400, page_size=1000))
        self.assertEqual(len(got), len(ROWS))
        for e in got:
            self.assertEqual(list(e), EVENT_KEYS)

    def test_each_field_holds_the_stored_value_and_type(self):
        got = {e["id"]: e for e in self.module.query_events(
            Query(0, 400, page_size=1000))}
        for i, t, a, act, rt, rid in ROWS:
            with self.subTest(id=i):
                e = got[i]
                self.assertEqual(
                    (e["created_at"], e["actor_id"], e["action"],
                     e["resource_type"], e["resource_id"]),
                    (t, a, act, rt, rid))
                self.assertIs(type(e["id"]), int)
                self.assertIs(type(e["created_at"]), int)
                self.assertIs(type(e["actor_id"]), int)

    def test_the_payload_is_the_decoded_json_object(self):
        got = self.module.query_events(Query(0, 400, page_size=1000))
        for e in got:
            with self.subTest(id=e["id"]):
                self.assertEqual(e["payload"], payload_of(e["id"]))
        self.assertEqual(got[1]["payload"]["note"][-1], "\U0001f600")


@for_both_modules
class HandleRequestShape(OnSmallDataset):

    def test_the_response_holds_the_query_the_events_and_their_count(
            self):
        q = Query(100, 100, page_size=3)
        got = self.module.handle_request(q)
        self.assertEqual(set(got),
                         {"query", "events", "count", "next_cursor"})
        self.assertEqual(got["query"], q.as_dict())
        self.assertEqual(got["events"], self.module.query_events(q))
        self.assertEqual([e["id"] for e in got["events"]], [9, 7, 4])
        self.assertEqual(got["count"], 3)

    def test_an_empty_page_has_count_zero(self):
        got = self.module.handle_request(Query(0, 400, page=99))
        self.assertEqual((got["events"], got["count"]), ([], 0))

    def test_without_a_query_it_serves_what_pick_query_returns(self):
        injected = Query(100, 100, page=2, page_size=3)
        calls = []

        def fake_pick_query():
            calls.append(1)
            return injected
        with mock.patch.object(self.module, "_pick_query",
                               fake_pick_query):
            got = self.module.handle_request()
        self.assertEqual(len(calls), 1)
        self.assertEqual(got["query"], injected.as_dict())
        self.assertEqual([e["id"] for e in got["events"]], [2])
        self.assertEqual(got["count"], 1)

    def test_the_default_pick_draws_from_the_modules_own_generator(self):
        with mock.patch.object(self.module, "_rng", random.Random(9)):
            got = [self.module.handle_request()["query"]
                   for _ in range(5)]
        rng = random.Random(9)
        self.assertEqual(got, [pick_query(rng, ANCHOR).as_dict()
                               for _ in range(5)])

    def test_the_default_pick_is_the_benchmark_mix_at_the_anchor(self):
        got = self.module.handle_request()
        query = got["query"]
        self.assertEqual((query["from_ts"], query["to_ts"]),
                         (ANCHOR - WEEK, ANCHOR))
        self.assertIn(query["page_size"], (10, 20, 50))
        self.assertEqual(got["count"], len(got["events"]))


@for_both_modules
class PayloadsAreReadPerRequest(OnSmallDataset):

    def rewrite_payload(self, event_id, old, new):
        """Replace ``old`` with ``new`` (same length) in one payload line,
        in place, at the offset the database gives."""
        self.assertEqual(len(old), len(new))
        conn = sqlite3.connect(self.paths[1])
        try:
            offset, length = conn.execute(
                "SELECT payload_offset, payload_len FROM audit_events"
                " WHERE id = ?", (event_id,)).fetchone()
        finally:
            conn.close()
        with open(self.paths[2], "r+b") as f:
            f.seek(offset)
            line = f.read(length)
            self.assertIn(old, line)
            f.seek(offset)
            f.write(line.replace(old, new))

    def test_a_payload_rewritten_in_place_is_seen_by_the_next_query(self):
        q = Query(100, 100)
        before = self.module.query_events(q)
        self.assertEqual([e["payload"]["v"] for e in before],
                         ["old"] * 4)
        self.rewrite_payload(7, b'"old"', b'"NEW"')
        after = self.module.query_events(q)
        self.assertEqual([e["payload"]["v"] for e in after],
                         ["old", "NEW", "old", "old"])
        self.assertEqual([e["id"] for e in after], [9, 7, 4, 2])

    def test_two_rewrites_in_a_row_are_each_seen(self):
        q = Query(300, 300)
        for value in (b"abc", b"xyz"):
            old = self.module.query_events(q)[1]["payload"]["v"]
            self.rewrite_payload(3, json.dumps(old).encode(),
                                 b'"' + value + b'"')
            self.assertEqual(self.module.query_events(q)[1]["payload"]["v"],
                             value.decode())


class PayloadOpens:
    """Counts the opens of one payload file through a module's ``open``
    and ``os.open`` (the module's own names, nothing global)."""

    def __init__(self, module, payload_path):
        self.module = module
        self.payload_path = payload_path
        self.count = 0
        self.stack = contextlib.ExitStack()

    def _is_payload(self, path):
        return os.path.abspath(os.fsdecode(path)) == self.payload_path

    def __enter__(self):
        real_os = self.module.__dict__.get("os")
        opens = self

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, bytes)) and opens._is_payload(file):
                opens.count += 1
            return open(file, *args, **kwargs)
        self.stack.enter_context(mock.patch.object(
            self.module, "open", counting_open, create=True))

        if real_os is not None:
            class CountingOs:
                def __getattr__(self, name):
                    return getattr(real_os, name)

                def open(self, path, *args, **kwargs):
                    if opens._is_payload(path):
                        opens.count += 1
                    return real_os.open(path, *args, **kwargs)
            self.stack.enter_context(mock.patch.object(
                self.module, "os", CountingOs()))
        return self

    def __exit__(self, *exc):
        self.stack.close()


class PayloadFileOpensTest(unittest.TestCase):
    """Enhanced: one open per request; baseline: one per event."""

    def opens_for(self, module, q):
        with temporary_dataset(events(), anchor=ANCHOR,
                               modules=[module]) as paths:
            module.init()  # the build is not part of the request
            with PayloadOpens(module, paths[2]) as opens:
                got = module.query_events(q)
        for e in got:
            self.assertEqual(e["payload"], payload_of(e["id"]))
        return opens.count, len(got)

    def test_the_enhanced_module_opens_the_payload_file_once_a_request(
            self):
        for q in (Query(0, 400, page_size=1000), Query(100, 100),
                  Query(0, 400, actor_id=1, action="UPDATE"),
                  Query(0, 400, page=3, page_size=2)):
            with self.subTest(q=q):
                opens, n = self.opens_for(enhanced_audit_log_service, q)
                self.assertGreater(n, 1)
                self.assertEqual(opens, 1)

    def test_without_pread_the_enhanced_module_reads_alike_with_one_open(
            self):
        module = enhanced_audit_log_service
        q = Query(0, 400, page_size=1000)
        with mock.patch.object(module, "_HAS_PREAD", False), \
                mock.patch.object(module.os, "pread",
                                  side_effect=AssertionError("pread"),
                                  create=True):
            opens, n = self.opens_for(module, q)
        self.assertEqual((opens, n), (1, len(ROWS)))

    def test_the_baseline_opens_the_payload_file_once_per_event(self):
        for q in (Query(0, 400, page_size=1000), Query(100, 100)):
            with self.subTest(q=q):
                opens, n = self.opens_for(audit_log_service, q)
                self.assertEqual(opens, n)
                self.assertGreater(n, 1)

    def test_the_counter_sees_opens_made_through_the_module(self):
        # Guards the two tests above against counting nothing.
        with temporary_dataset(events(), modules=[]) as paths:
            for module in (audit_log_service, enhanced_audit_log_service):
                with PayloadOpens(module, paths[2]) as opens:
                    module.__dict__.get("os", os).close(
                        module.__dict__.get("os", os).open(
                            paths[2], os.O_RDONLY))
                    with module.open(paths[2], "rb"):
                        pass
                expected = 2 if "os" in module.__dict__ else 1
                self.assertEqual(opens.count, expected, module.__name__)


# ------------------------------------------------ enhanced against baseline

def generated_dataset(tmp):
    audit_seed.seed_dataset(tmp, rows=2000, seed=3, anchor=10 ** 9,
                            span_seconds=300, progress=False)


def sampled_events(db_path, n=200):
    """``(created_at, actor_id, action, resource_type, resource_id)`` of
    ``n`` events spread over the dataset."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT created_at, actor_id, action, resource_type,"
            " resource_id FROM audit_events WHERE id % 10 = 0"
            " ORDER BY id LIMIT ?", (n,)).fetchall()
    finally:
        conn.close()


def random_queries(rng, samples, n):
    """Queries around sampled events: windows that often start or end on
    one, filters taken from one (so that pairs can match), pages mostly
    near the front and some past the end."""
    names = ("actor_id", "action", "resource_type", "resource_id")
    queries = []
    for _ in range(n):
        sample = rng.choice(samples)
        at = sample[0]
        lo = at - rng.choice((0, 0, 1, 30, 400))
        hi = max(lo, at + rng.choice((0, 0, 1, 30, 400)) - rng.choice(
            (0, 0, 0, 2)))
        fields = {name: value for name, value in zip(names, sample[1:])
                  if rng.random() < 0.3}
        if rng.random() < 0.05:
            fields["action"] = "NOPE"
        size = rng.choice((1, 5, 20, 100, 1000))
        page = rng.choice((1, 1, 1, 2, 3, rng.randint(1, 100), 10 ** 6))
        queries.append(Query(lo, hi, page=page, page_size=size, **fields))
    return queries


class EnhancedEqualsBaselineTest(unittest.TestCase):
    """300 random queries over 2,000 events packed into 300 seconds."""

    @classmethod
    def setUpClass(cls):
        cls.stack = contextlib.ExitStack()
        tmp = cls.stack.enter_context(tempfile.TemporaryDirectory())
        generated_dataset(tmp)
        cls.stack.enter_context(using_dataset(tmp))
        cls.samples = sampled_events(audit_log_service.DB_PATH)

    @classmethod
    def tearDownClass(cls):
        cls.stack.close()

    def test_both_modules_return_the_same_pages(self):
        rng = random.Random(31)
        queries = random_queries(rng, self.samples, 300)
        non_empty = 0
        for q in queries:
            expected = audit_log_service.query_events(q)
            non_empty += bool(expected)
            with self.subTest(q=q):
                self.assertEqual(
                    enhanced_audit_log_service.query_events(q), expected)
        # The comparison means little if every page were empty.
        self.assertGreater(non_empty, 100)

    def test_both_modules_page_through_a_busy_second_alike(self):
        conn = sqlite3.connect(audit_log_service.DB_PATH)
        try:
            busiest, n = conn.execute(
                "SELECT created_at, count(*) AS n FROM audit_events"
                " GROUP BY created_at ORDER BY n DESC LIMIT 1").fetchone()
        finally:
            conn.close()
        self.assertGreater(n, 5)
        for page in range(1, n + 2):
            q = Query(busiest, busiest, page=page, page_size=1)
            with self.subTest(page=page):
                self.assertEqual(
                    enhanced_audit_log_service.query_events(q),
                    audit_log_service.query_events(q))


class ColdStartFrom32ThreadsTest(unittest.TestCase):
    """32 threads call init() at once on a cold enhanced module."""

    def test_the_snapshot_is_built_once_and_every_answer_is_right(self):
        module = enhanced_audit_log_service
        with tempfile.TemporaryDirectory() as tmp:
            generated_dataset(tmp)
            with using_dataset(tmp):
                samples = sampled_events(module.DB_PATH)
                queries = random_queries(random.Random(32), samples, 32)
                want = [audit_log_service.query_events(q) for q in queries]
                reset(module)
                builds = module._builds
                loads = []
                real_load = module.Snapshot.load

                def slow_load(db_path, payload_path):
                    # Widen the window in which a second build could start.
                    loads.append(threading.get_ident())
                    time.sleep(0.05)
                    return real_load(db_path, payload_path)

                start = threading.Barrier(32)
                results = [None] * 32
                errors = []

                def worker(i):
                    try:
                        start.wait(30)
                        module.init()
                        results[i] = module.query_events(queries[i])
                    except Exception as exc:  # reported below
                        errors.append(exc)

                with mock.patch.object(module.Snapshot, "load", slow_load):
                    threads = [threading.Thread(target=worker, args=(i,))
                               for i in range(32)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(60)
                self.assertFalse(any(t.is_alive() for t in threads))
                self.assertEqual(errors, [])
                self.assertEqual(module._builds, builds + 1)
                self.assertEqual(len(loads), 1)
                self.assertIsNotNone(module._snapshot)
                for q, got, expected in zip(queries, results, want):
                    self.assertEqual(got, expected, q)
                self.assertTrue(any(want))


# ------------------------------------------------ cost of a page, by steps

class CountingSequence:
    """A read-only sequence that counts the items read from it."""

    def __init__(self, data):
        self.data = data
        self.touched = 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        item = self.data[index]
        self.touched += len(item) if isinstance(index, slice) else 1
        return item


def synthetic_snapshot(n):
    """A Snapshot of ``n`` events, four to a second, 50 actors."""
    rows = []
    for i in range(n):
        created_at = 10 ** 9 - i // 4
        rows.append((n - i, created_at, i % 50 + 1,
                     ("UPDATE", "LOGIN", "CREATE")[i % 3], "ORDER",
                     f"ORDER-{i % 97}", 0, 1))
    return enhanced_audit_log_service.Snapshot("unused.db",
                                               "unused.jsonl", 10 ** 9,
                                               rows)


def touches(snap, q):
    """How many snapshot entries page_positions reads for ``q``, and the
    positions it returns."""
    sequences = [CountingSequence(snap.keys)]
    snap.keys = sequences[0]
    for attribute in snap.attributes.values():
        sequences.append(CountingSequence(attribute.postings))
        attribute.postings = sequences[-1]
    try:
        positions = snap.page_positions(q)
    finally:
        snap.keys = sequences[0].data
        for attribute, seq in zip(snap.attributes.values(),
                                  sequences[1:]):
            attribute.postings = seq.data
    return sum(s.touched for s in sequences), list(positions)


def peak_bytes(snap, q):
    """The most memory page_positions holds at once while finding ``q``:
    a page that walked or copied the window would show here."""
    tracemalloc.start()
    try:
        snap.page_positions(q)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class PageCostIsIndependentOfPageNumberTest(unittest.TestCase):
    """Counted in entries read and bytes held, not in time: no clock."""

    # Far below the 160 kB a copy of the 20,000 positions would need.
    PEAK_BYTES = 16 * 1024

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc is already in use")

    N = 20000

    @classmethod
    def setUpClass(cls):
        cls.snap = synthetic_snapshot(cls.N)
        cls.first, cls.last = 10 ** 9 - cls.N // 4 + 1, 10 ** 9

    def bound(self, n, page_size):
        # Four binary searches at most, plus the page itself.
        return 4 * (math.ceil(math.log2(n)) + 1) + page_size

    def test_an_unfiltered_deep_page_reads_as_much_as_page_one(self):
        window = Query(self.first, self.last, page_size=20)
        deep = Query(self.first, self.last, page=self.N // 20,
                     page_size=20)
        cost_1, page_1 = touches(self.snap, window)
        cost_deep, page_deep = touches(self.snap, deep)
        self.assertEqual(len(page_1), 20)
        self.assertEqual(len(page_deep), 20)
        self.assertEqual(page_deep, list(range(self.N - 20, self.N)))
        self.assertEqual(cost_deep, cost_1)
        self.assertLessEqual(cost_1, self.bound(self.N, 0))
        for q in (window, deep):
            self.assertLess(peak_bytes(self.snap, q), self.PEAK_BYTES)

    def test_a_one_filter_deep_page_reads_as_much_as_page_one(self):
        per_actor = self.N // 50
        shallow = Query(self.first, self.last, actor_id=7, page_size=20)
        deep = Query(self.first, self.last, actor_id=7,
                     page=per_actor // 20, page_size=20)
        cost_1, page_1 = touches(self.snap, shallow)
        cost_deep, page_deep = touches(self.snap, deep)
        self.assertEqual(len(page_1), 20)
        self.assertEqual(len(page_deep), 20)
        self.assertEqual(page_deep[-1], self.N - 50 + 6)
        self.assertLessEqual(cost_deep, cost_1 + 2)
        self.assertLessEqual(cost_deep, self.bound(self.N, 20))
        for q in (shallow, deep):
            self.assertLess(peak_bytes(self.snap, q), self.PEAK_BYTES)

    def test_a_page_past_the_end_reads_no_more_than_a_full_one(self):
        past = Query(self.first, self.last, actor_id=7, page=10 ** 6)
        cost, page = touches(self.snap, past)
        self.assertEqual(page, [])
        self.assertLessEqual(cost, self.bound(self.N, 0))

    def test_a_page_costs_logarithmically_more_on_32_times_the_events(
            self):
        small, large = synthetic_snapshot(2000), synthetic_snapshot(64000)
        for fields in ({}, {"actor_id": 7}, {"action": "LOGIN"}):
            with self.subTest(fields=fields):
                costs = []
                for snap, n in ((small, 2000), (large, 64000)):
                    q = Query(10 ** 9 - n // 4 + 1, 10 ** 9, page=2,
                              page_size=20, **fields)
                    cost, page = touches(snap, q)
                    self.assertEqual(len(page), 20)
                    costs.append(cost)
                # log2(32) = 5 more steps for each of 4 searches.
                self.assertLessEqual(costs[1] - costs[0], 4 * 5 + 4)


if __name__ == "__main__":
    unittest.main()
