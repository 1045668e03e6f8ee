"""Cursor paging: the cursor's form and checks, then paging on both modules.

A cursor names one event by ``(created_at, id)`` and the query it belongs
to by a fingerprint of its window and filters.  The first test cases need
no dataset; the rest run once per module (``Baseline...`` and
``Enhanced...``) on a dataset full of same-second ties whose ids are not
in time order, so that only a correct ``created_at DESC, id DESC`` order
with ``id`` as the tie-breaker passes.
"""

import base64
import contextlib
import json
import random
import unittest

from audit_query import INT64_MAX, INT64_MIN, Query, make_cursor
from tests import event, for_both_modules, temporary_dataset


def forge(fields):
    """A cursor holding ``fields`` in the form make_cursor writes."""
    text = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def fields_of(cursor):
    return json.loads(base64.urlsafe_b64decode(
        cursor + "=" * (-len(cursor) % 4)))


BASE = Query(100, 200, actor_id=7, action="UPDATE")
GOOD = make_cursor(BASE, 150, 42)
FINGERPRINT = fields_of(GOOD)[3]


def with_cursor(cursor, **changes):
    fields = dict(BASE.as_dict(), **changes)
    fields["cursor"] = cursor
    return Query(**fields)


class CursorFormTest(unittest.TestCase):

    def test_a_cursor_is_url_safe_text_that_names_the_event(self):
        self.assertRegex(GOOD, r"^[A-Za-z0-9_-]+$")
        self.assertEqual(with_cursor(GOOD).after, (150, 42))

    def test_without_a_cursor_after_is_none(self):
        self.assertIsNone(BASE.after)
        self.assertIsNone(BASE.cursor)

    def test_the_extreme_64_bit_values_round_trip(self):
        for created_at, event_id in ((INT64_MIN, INT64_MAX),
                                     (INT64_MAX, INT64_MIN), (0, 0)):
            with self.subTest(created_at=created_at):
                cursor = make_cursor(BASE, created_at, event_id)
                self.assertEqual(with_cursor(cursor).after,
                                 (created_at, event_id))

    def test_cursor_is_the_last_field_so_positional_queries_still_work(
            self):
        q = Query(1, 2, 3, "CREATE", 4, 5, "USER", "USER-6")
        self.assertEqual((q.page, q.resource_id, q.cursor),
                         (4, "USER-6", None))
        self.assertEqual(list(q.as_dict())[-1], "cursor")

    def test_as_dict_holds_the_cursor_and_round_trips(self):
        q = with_cursor(GOOD, page=3, page_size=9)
        self.assertEqual(q.as_dict()["cursor"], GOOD)
        self.assertEqual(Query(**q.as_dict()), q)
        self.assertEqual(Query(**q.as_dict()).after, (150, 42))

    def test_page_is_ignored_with_a_cursor_so_the_offset_is_zero(self):
        self.assertEqual(with_cursor(GOOD, page=50, page_size=20).offset,
                         0)
        self.assertEqual(with_cursor(None, page=50, page_size=20).offset,
                         980)

    def test_page_and_page_size_may_change_between_pages(self):
        for page, page_size in ((1, 1), (7, 1000), (2, 20)):
            with self.subTest(page=page, page_size=page_size):
                q = with_cursor(GOOD, page=page, page_size=page_size)
                self.assertEqual(q.after, (150, 42))

    def test_make_cursor_checks_its_arguments(self):
        with self.assertRaisesRegex(TypeError, r"^q must be a Query"):
            make_cursor(BASE.as_dict(), 1, 2)
        with self.assertRaisesRegex(
                TypeError, r"^created_at must be an int, got True"):
            make_cursor(BASE, True, 2)
        with self.assertRaisesRegex(
                TypeError, r"^id must be an int, got '2' \(str\)$"):
            make_cursor(BASE, 1, "2")
        with self.assertRaisesRegex(
                ValueError, r"^id must fit in a signed 64-bit integer"):
            make_cursor(BASE, 1, 2 ** 63)


class MalformedCursorTest(unittest.TestCase):

    def assert_malformed(self, cursor, detail=""):
        with self.subTest(cursor=cursor), self.assertRaisesRegex(
                ValueError, r"^cursor is malformed: " + detail):
            with_cursor(cursor)

    def test_a_cursor_that_is_not_a_str_is_a_type_error_naming_it(self):
        for cursor, shown in ((b"abc", r"b'abc' \(bytes\)"),
                              (12, r"12 \(int\)"),
                              ((150, 42), r"\(150, 42\) \(tuple\)")):
            with self.subTest(cursor=cursor), self.assertRaisesRegex(
                    TypeError,
                    rf"^cursor must be a str or None, got {shown}$"):
                with_cursor(cursor)

    def test_garbage_is_refused(self):
        for cursor in ("", "not a cursor", "%%%", "abc=", "a+b/",
                       "\u00e9t\u00e9", "AAAA", "x"):
            self.assert_malformed(cursor)

    def test_every_truncation_is_refused(self):
        for end in range(len(GOOD)):
            self.assert_malformed(GOOD[:end])

    def test_padding_or_other_spellings_of_the_same_cursor_are_refused(
            self):
        self.assert_malformed(GOOD + "=" * (-len(GOOD) % 4 or 4))
        spaced = base64.urlsafe_b64encode(
            json.dumps([1, 150, 42, FINGERPRINT]).encode()).decode()
        self.assert_malformed(spaced.rstrip("="),
                              r".* is not in the form make_cursor writes")

    def test_fields_of_the_wrong_type_or_number_are_refused(self):
        for fields in ([1, "150", 42, FINGERPRINT],
                       [1, 150, 42.0, FINGERPRINT],
                       [1, True, 42, FINGERPRINT],
                       [1, 150, None, FINGERPRINT],
                       [1, 150, 42, 7],
                       [2, 150, 42, FINGERPRINT],
                       [True, 150, 42, FINGERPRINT],
                       [1, 150, 42],
                       [1, 150, 42, FINGERPRINT, 0],
                       {"created_at": 150, "id": 42},
                       "150:42", 42, None):
            self.assert_malformed(forge(fields), r".* does not hold")

    def test_numbers_outside_64_bits_are_refused(self):
        for fields, name in (([1, 2 ** 63, 42, FINGERPRINT], "created_at"),
                             ([1, 150, -2 ** 63 - 1, FINGERPRINT], "id"),
                             ([1, 10 ** 40, 42, FINGERPRINT],
                              "created_at")):
            self.assert_malformed(
                forge(fields), rf"its {name} -?\d+ does not fit in a"
                               r" signed 64-bit integer")

    def test_nan_and_infinity_are_refused(self):
        for text in ("[1,NaN,42,\"x\"]", "[1,150,Infinity,\"x\"]"):
            cursor = base64.urlsafe_b64encode(text.encode()).decode()
            self.assert_malformed(cursor.rstrip("="), r".* does not decode")

    def test_a_very_long_cursor_is_refused_before_decoding(self):
        self.assert_malformed("A" * 100_000, r"longer than 200 characters")


class CursorOfAnotherQueryTest(unittest.TestCase):

    def test_a_cursor_is_refused_by_a_query_with_another_window_or_filter(
            self):
        for changes in (dict(from_ts=99), dict(to_ts=201),
                        dict(actor_id=8), dict(actor_id="7"),
                        dict(actor_id=None), dict(action="CREATE"),
                        dict(action=None), dict(resource_type="ORDER"),
                        dict(resource_id="ORDER-1")):
            with self.subTest(changes=changes), self.assertRaisesRegex(
                    ValueError,
                    r"^cursor belongs to a different query \(other window"
                    r" or filters\): '" + GOOD + "'$"):
                with_cursor(GOOD, **changes)

    def test_a_forged_cursor_with_a_made_up_fingerprint_is_refused(self):
        with self.assertRaisesRegex(ValueError,
                                    r"^cursor belongs to a different"):
            with_cursor(forge([1, 150, 42, "0" * 16]))


# ---------------------------------------------------------------- paging

def tie_heavy_events():
    """60 events over 6 seconds, ids shuffled against time order."""
    rng = random.Random(11)
    ids = list(range(1, 61))
    rng.shuffle(ids)
    return [event(100 + i % 6, actor_id=1 + i % 3,
                  action=("UPDATE", "CREATE")[i % 2], id=event_id)
            for i, event_id in enumerate(ids)]


EVENTS = tie_heavy_events()


def reference(q):
    """Every id ``q``'s window and filters match, newest first."""
    keys = sorted(((e["created_at"], e["id"]) for e in EVENTS
                   if q.from_ts <= e["created_at"] <= q.to_ts
                   and q.actor_id in (None, e["actor_id"])
                   and q.action in (None, e["action"])), reverse=True)
    return [event_id for _, event_id in keys]


class OnTieHeavyDataset:

    module = None

    def setUp(self):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        stack.enter_context(temporary_dataset(EVENTS,
                                              modules=[self.module]))

    def request(self, q):
        got = self.module.handle_request(q)
        self.assertEqual(got["count"], len(got["events"]))
        return [e["id"] for e in got["events"]], got["next_cursor"]

    def walk(self, first, sizes=None):
        """Page through by cursor; the ids of each page, in order."""
        pages, q, n = [], first, 0
        while True:
            ids, cursor = self.request(q)
            pages.append(ids)
            if cursor is None:
                return pages
            n += 1
            self.assertLess(n, 200, "paging did not end")
            size = sizes[n % len(sizes)] if sizes else q.page_size
            fields = dict(q.as_dict(), cursor=cursor, page_size=size)
            q = Query(**fields)


@for_both_modules
class CursorPagingTest(OnTieHeavyDataset):

    def test_the_cursor_continues_strictly_after_the_pages_last_event(
            self):
        q = Query(100, 105, page_size=7)
        ids, cursor = self.request(q)
        self.assertEqual(ids, reference(q)[:7])
        self.assertEqual(fields_of(cursor)[1:3],
                         [EVENTS[[e["id"] for e in EVENTS].index(ids[-1])]
                          ["created_at"], ids[-1]])
        ids, _ = self.request(Query(100, 105, page_size=7, cursor=cursor))
        self.assertEqual(ids, reference(q)[7:14])

    def test_walking_by_cursor_visits_every_event_once_in_order(self):
        for q in (Query(100, 105, page_size=7), Query(101, 104, page_size=1),
                  Query(100, 105, actor_id=2, page_size=4),
                  Query(100, 105, actor_id=3, action="CREATE",
                        page_size=2)):
            with self.subTest(q=q):
                pages = self.walk(q)
                self.assertEqual(sum(pages, []), reference(q))
                self.assertTrue(all(pages))

    def test_page_size_may_change_between_pages(self):
        q = Query(100, 105, page_size=5)
        pages = self.walk(q, sizes=[1, 9, 3, 1000, 2])
        self.assertEqual(sum(pages, []), reference(q))
        self.assertEqual([len(p) for p in pages[:4]], [5, 9, 3, 43])

    def test_same_second_ties_are_split_across_pages_by_id(self):
        q = Query(103, 103, page_size=1)
        self.assertEqual(len(reference(q)), 10)
        self.assertEqual(self.walk(q), [[i] for i in reference(q)])

    def test_page_is_ignored_with_a_cursor(self):
        q = Query(100, 105, page_size=6)
        _, cursor = self.request(q)
        want = reference(q)[6:12]
        for page in (1, 2, 10 ** 6):
            with self.subTest(page=page):
                got = self.module.query_events(
                    Query(100, 105, page=page, page_size=6, cursor=cursor))
                self.assertEqual([e["id"] for e in got], want)

    def test_a_cursor_from_a_numbered_page_continues_after_that_page(self):
        q = Query(100, 105, page=3, page_size=8)
        ids, cursor = self.request(q)
        self.assertEqual(ids, reference(q)[16:24])
        ids, _ = self.request(Query(100, 105, page_size=8, cursor=cursor))
        self.assertEqual(ids, reference(q)[24:32])

    def test_next_cursor_is_none_on_the_last_page(self):
        q = Query(100, 105, page_size=25)
        pages = self.walk(q)
        self.assertEqual([len(p) for p in pages], [25, 25, 10])
        ids, cursor = self.request(Query(100, 105, page=3, page_size=25))
        self.assertEqual((len(ids), cursor), (10, None))

    def test_next_cursor_is_none_on_a_last_page_that_is_exactly_full(
            self):
        q = Query(100, 105, page_size=20)
        pages = self.walk(q)
        self.assertEqual([len(p) for p in pages], [20, 20, 20])
        for page in (1, 2):
            self.assertIsNotNone(
                self.request(Query(100, 105, page=page, page_size=20))[1])
        self.assertEqual(self.request(Query(100, 105, page=3,
                                            page_size=20))[1], None)
        self.assertEqual(self.request(Query(100, 105, page_size=60)),
                         (reference(q), None))

    def test_empty_results_and_pages_past_the_end_have_no_cursor(self):
        self.assertEqual(self.request(Query(0, 99)), ([], None))
        self.assertEqual(self.request(Query(100, 105, page=99)), ([], None))
        last = reference(Query(100, 105))[-1]
        cursor = make_cursor(Query(100, 105), 100, last)
        self.assertEqual(self.request(Query(100, 105, cursor=cursor)),
                         ([], None))

    def test_a_cursor_naming_a_position_between_events_continues_there(
            self):
        # No event has id 0 or 1000: the cursor is a position, not a row.
        q = Query(100, 105, page_size=1000)
        keys = sorted(((e["created_at"], e["id"]) for e in EVENTS),
                      reverse=True)
        for created_at, event_id in ((103, 1000), (103, 0), (200, 5),
                                     (50, 5)):
            with self.subTest(created_at=created_at, event_id=event_id):
                want = [i for t, i in keys
                        if (t, i) < (created_at, event_id)]
                cursor = make_cursor(q, created_at, event_id)
                self.assertEqual(self.request(
                    Query(100, 105, page_size=1000, cursor=cursor))[0],
                    want)

    def test_query_events_and_handle_request_agree_with_a_cursor(self):
        _, cursor = self.request(Query(100, 105, actor_id=1, page_size=3))
        q = Query(100, 105, actor_id=1, page_size=3, cursor=cursor)
        got = self.module.handle_request(q)
        self.assertEqual(got["events"], self.module.query_events(q))
        self.assertEqual(got["query"]["cursor"], cursor)


if __name__ == "__main__":
    unittest.main()
