"""Query validation and the two query mixes (pick_query, realistic).

Every rule of ``Query`` is checked with the wording of its message, since
callers read those messages; the mixes are checked for their shape with a
fixed seed, so a run is repeatable and a broken distribution fails.
"""

import collections
import dataclasses
import random
import unittest

import audit_log_service
import enhanced_audit_log_service
from audit_query import (DataProfile, Query, pick_query,
                         pick_realistic_query)

ANCHOR = 1_700_000_000
DAY = 86400
WEEK = 7 * DAY
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)


def q(**fields):
    """A valid Query with ``fields`` changed."""
    base = dict(from_ts=0, to_ts=100)
    base.update(fields)
    return Query(**base)


class TimesMustBeIntsTest(unittest.TestCase):

    def test_a_float_time_is_a_type_error_naming_field_and_value(self):
        for field in ("from_ts", "to_ts"):
            with self.subTest(field=field), self.assertRaisesRegex(
                    TypeError,
                    rf"^{field} must be an int, got 1\.5 \(float\)$"):
                q(**{field: 1.5})

    def test_a_bool_time_is_refused_although_bool_is_an_int(self):
        for field in ("from_ts", "to_ts"):
            with self.subTest(field=field), self.assertRaisesRegex(
                    TypeError,
                    rf"^{field} must be an int, got True \(bool\)$"):
                q(**{field: True})

    def test_a_time_given_as_text_is_a_type_error(self):
        with self.assertRaisesRegex(
                TypeError, r"^to_ts must be an int, got '100' \(str\)$"):
            q(to_ts="100")

    def test_a_missing_time_is_a_type_error(self):
        with self.assertRaisesRegex(TypeError, r"from_ts.*None"):
            q(from_ts=None)


class WindowOrderTest(unittest.TestCase):

    def test_a_window_ending_before_it_starts_names_both_ends(self):
        with self.assertRaisesRegex(
                ValueError, r"^from_ts must not be after to_ts, got"
                            r" from_ts=11 and to_ts=10$"):
            Query(11, 10)

    def test_a_window_of_a_single_second_is_valid(self):
        self.assertEqual(Query(10, 10).to_ts, 10)


class PageRulesTest(unittest.TestCase):

    def test_page_zero_and_negative_pages_are_value_errors(self):
        for page in (0, -1, INT64_MIN):
            with self.subTest(page=page), self.assertRaisesRegex(
                    ValueError,
                    rf"^page must be 1 or more, got {page}$"):
                q(page=page)

    def test_a_page_that_is_not_an_int_is_a_type_error(self):
        for page, shown in ((2.0, r"2\.0 \(float\)"),
                            (True, r"True \(bool\)"),
                            ("2", r"'2' \(str\)"),
                            (None, r"None \(NoneType\)")):
            with self.subTest(page=page), self.assertRaisesRegex(
                    TypeError, rf"^page must be an int, got {shown}$"):
                q(page=page)

    def test_the_first_page_is_one(self):
        self.assertEqual(q(page=1).offset, 0)
        self.assertEqual(q(page=3, page_size=7).offset, 14)


class PageSizeRulesTest(unittest.TestCase):

    def test_page_sizes_outside_1_to_1000_are_value_errors(self):
        for size in (0, -5, 1001, 10 ** 6):
            with self.subTest(size=size), self.assertRaisesRegex(
                    ValueError,
                    rf"^page_size must be 1 to 1000, got {size}$"):
                q(page_size=size)

    def test_page_sizes_1_and_1000_are_valid(self):
        self.assertEqual(q(page_size=1).page_size, 1)
        self.assertEqual(q(page_size=1000).page_size, 1000)

    def test_a_page_size_that_is_not_an_int_is_a_type_error(self):
        for size, shown in ((20.0, r"20\.0 \(float\)"),
                            (False, r"False \(bool\)")):
            with self.subTest(size=size), self.assertRaisesRegex(
                    TypeError,
                    rf"^page_size must be an int, got {shown}$"):
                q(page_size=size)


class ActorRulesTest(unittest.TestCase):

    def test_an_actor_of_another_type_is_a_type_error_naming_it(self):
        for actor, shown in ((1.5, r"1\.5 \(float\)"),
                             (True, r"True \(bool\)"),
                             (b"7", r"b'7' \(bytes\)"),
                             ([7], r"\[7\] \(list\)")):
            with self.subTest(actor=actor), self.assertRaisesRegex(
                    TypeError, rf"^actor_id must be an int, a str or"
                               rf" None, got {shown}$"):
                q(actor_id=actor)

    def test_int_text_and_none_actors_are_valid(self):
        # Issue 3 widened actor_id to names from real logs.
        for actor in (None, 7, "arn:aws:iam::1:user/alice"):
            with self.subTest(actor=actor):
                self.assertEqual(q(actor_id=actor).actor_id, actor)


class TextFilterRulesTest(unittest.TestCase):

    def test_a_filter_that_is_not_text_is_a_type_error_naming_it(self):
        for field in ("action", "resource_type", "resource_id"):
            for value, shown in ((5, r"5 \(int\)"),
                                 (b"UPDATE", r"b'UPDATE' \(bytes\)"),
                                 (("A",), r"\('A',\) \(tuple\)")):
                with self.subTest(field=field, value=value), \
                        self.assertRaisesRegex(
                            TypeError, rf"^{field} must be a str or None,"
                                       rf" got {shown}$"):
                    q(**{field: value})

    def test_text_filters_and_none_are_valid(self):
        made = q(action="UPDATE", resource_type="ORDER",
                 resource_id="ORDER-4711")
        self.assertEqual((made.action, made.resource_type,
                          made.resource_id),
                         ("UPDATE", "ORDER", "ORDER-4711"))


class SixtyFourBitRangeTest(unittest.TestCase):

    def test_values_just_outside_64_bits_are_value_errors(self):
        cases = [("from_ts", INT64_MIN - 1), ("to_ts", INT64_MAX + 1),
                 ("actor_id", INT64_MAX + 1), ("actor_id", INT64_MIN - 1),
                 ("page", INT64_MAX + 1)]
        for field, value in cases:
            fields = {field: value}
            if field == "from_ts":
                fields["to_ts"] = 0
            with self.subTest(field=field, value=value), \
                    self.assertRaisesRegex(
                        ValueError,
                        rf"^{field} must fit in a signed 64-bit integer,"
                        rf" got {value}$"):
                q(**fields)

    def test_the_64_bit_extremes_themselves_are_valid(self):
        made = Query(INT64_MIN, INT64_MAX, actor_id=INT64_MIN)
        self.assertEqual((made.from_ts, made.to_ts),
                         (INT64_MIN, INT64_MAX))

    def test_a_page_starting_past_row_2_to_the_63_is_too_deep(self):
        page = 2 ** 62
        with self.assertRaisesRegex(
                ValueError, rf"^page is too deep: page {page} of page_size"
                            r" 20 starts at row 2\*\*63 or later$"):
            q(page=page, page_size=20)

    def test_the_deepest_page_that_fits_is_valid(self):
        deepest = INT64_MAX // 20 + 1
        self.assertEqual(q(page=deepest, page_size=20).offset,
                         INT64_MAX // 20 * 20)
        with self.assertRaisesRegex(ValueError, r"^page is too deep"):
            q(page=deepest + 1, page_size=20)
        self.assertEqual(q(page=INT64_MAX, page_size=1).offset,
                         INT64_MAX - 1)


class QueryIsFrozenTest(unittest.TestCase):

    def test_assigning_a_field_raises_and_leaves_the_query_alone(self):
        made = q(page=2)
        for field, value in (("page", 3), ("from_ts", 5),
                             ("actor_id", 9)):
            with self.subTest(field=field):
                with self.assertRaises(dataclasses.FrozenInstanceError):
                    setattr(made, field, value)
        self.assertEqual((made.page, made.from_ts, made.actor_id),
                         (2, 0, None))

    def test_equal_queries_are_equal_and_hash_alike(self):
        self.assertEqual(q(page=4), q(page=4))
        self.assertEqual(hash(q(page=4)), hash(q(page=4)))
        self.assertNotEqual(q(page=4), q(page=5))


class QueryAsDictTest(unittest.TestCase):

    def test_as_dict_holds_every_field_in_declaration_order(self):
        made = Query(1, 2, actor_id=3, action="CREATE", page=4,
                     page_size=5, resource_type="USER",
                     resource_id="USER-6")
        got = made.as_dict()
        self.assertEqual(list(got.items()), [
            ("from_ts", 1), ("to_ts", 2), ("actor_id", 3),
            ("action", "CREATE"), ("page", 4), ("page_size", 5),
            ("resource_type", "USER"), ("resource_id", "USER-6"),
            ("cursor", None)])

    def test_as_dict_round_trips_through_the_constructor(self):
        made = q(actor_id="bob", page=9, page_size=1000)
        self.assertEqual(Query(**made.as_dict()), made)

    def test_the_defaults_are_page_1_of_20_with_no_filters(self):
        self.assertEqual(Query(0, 1).as_dict(), {
            "from_ts": 0, "to_ts": 1, "actor_id": None, "action": None,
            "page": 1, "page_size": 20, "resource_type": None,
            "resource_id": None, "cursor": None})


class OneQueryDefinitionTest(unittest.TestCase):

    def test_both_modules_export_the_very_same_query_class(self):
        self.assertIs(audit_log_service.Query, Query)
        self.assertIs(enhanced_audit_log_service.Query, Query)
        self.assertIs(audit_log_service.pick_query, pick_query)
        self.assertIs(enhanced_audit_log_service.pick_query, pick_query)


class PickQueryTest(unittest.TestCase):
    """The benchmark mix, drawn 4,000 times with seed 5."""

    N = 4000

    @classmethod
    def setUpClass(cls):
        rng = random.Random(5)
        cls.queries = [pick_query(rng, ANCHOR) for _ in range(cls.N)]

    def test_every_window_is_the_7_days_up_to_the_anchor(self):
        windows = {(x.from_ts, x.to_ts) for x in self.queries}
        self.assertEqual(windows, {(ANCHOR - WEEK, ANCHOR)})

    def test_actor_is_none_about_half_the_time_else_1_to_2000(self):
        actors = [x.actor_id for x in self.queries]
        nones = actors.count(None)
        self.assertGreater(nones, 0.45 * self.N)
        self.assertLess(nones, 0.55 * self.N)
        picked = [a for a in actors if a is not None]
        self.assertTrue(all(type(a) is int for a in picked))
        self.assertGreaterEqual(min(picked), 1)
        self.assertLessEqual(max(picked), 2000)
        # Spread over the whole range, not a corner of it.
        self.assertLess(min(picked), 50)
        self.assertGreater(max(picked), 1950)

    def test_action_is_none_update_create_or_delete_evenly(self):
        counts = collections.Counter(x.action for x in self.queries)
        self.assertEqual(set(counts), {None, "UPDATE", "CREATE", "DELETE"})
        for action, n in counts.items():
            with self.subTest(action=action):
                self.assertGreater(n, 0.20 * self.N)
                self.assertLess(n, 0.30 * self.N)

    def test_page_is_uniform_from_1_to_2000(self):
        pages = [x.page for x in self.queries]
        self.assertGreaterEqual(min(pages), 1)
        self.assertLessEqual(max(pages), 2000)
        self.assertLess(min(pages), 10)
        self.assertGreater(max(pages), 1990)
        low_half = sum(p <= 1000 for p in pages)
        self.assertGreater(low_half, 0.45 * self.N)
        self.assertLess(low_half, 0.55 * self.N)

    def test_page_size_is_10_20_or_50(self):
        counts = collections.Counter(x.page_size for x in self.queries)
        self.assertEqual(set(counts), {10, 20, 50})
        self.assertGreater(min(counts.values()), 0.25 * self.N)

    def test_no_resource_filters_are_drawn(self):
        self.assertEqual({(x.resource_type, x.resource_id)
                          for x in self.queries}, {(None, None)})

    def test_the_same_seed_draws_the_same_queries(self):
        again = random.Random(5)
        self.assertEqual([pick_query(again, ANCHOR) for _ in range(50)],
                         self.queries[:50])

    def test_the_window_follows_the_anchor(self):
        made = pick_query(random.Random(5), 10 ** 9)
        self.assertEqual((made.from_ts, made.to_ts),
                         (10 ** 9 - WEEK, 10 ** 9))


class PickRealisticQueryTest(unittest.TestCase):
    """The realistic mix, drawn 4,000 times with seed 8 from a profile."""

    N = 4000
    FIRST_TS = ANCHOR - 30 * DAY

    @classmethod
    def setUpClass(cls):
        sample_rng = random.Random(99)
        cls.samples = tuple(
            (sample_rng.randint(1, 2000),
             sample_rng.choice(("LOGIN", "UPDATE", "EXPORT")),
             rtype, f"{rtype}-{sample_rng.randint(1, 50000)}")
            for rtype in ("ORDER", "USER", "INVOICE") * 10)
        cls.profile = DataProfile(first_ts=cls.FIRST_TS, anchor=ANCHOR,
                                  samples=cls.samples)
        rng = random.Random(8)
        cls.queries = [pick_realistic_query(rng, cls.profile)
                       for _ in range(cls.N)]

    def test_windows_last_from_one_hour_to_30_days(self):
        lengths = [x.to_ts - x.from_ts for x in self.queries]
        self.assertGreaterEqual(min(lengths), 3600)
        self.assertLessEqual(max(lengths), 30 * DAY)
        # Log-uniform: as many windows under a day as over one, roughly.
        short = sum(n < DAY for n in lengths)
        self.assertGreater(short, 0.35 * self.N)
        self.assertLess(short, 0.65 * self.N)

    def test_windows_end_at_the_anchor_half_the_time_else_inside(self):
        ends = [x.to_ts for x in self.queries]
        self.assertLessEqual(max(ends), ANCHOR)
        at_anchor = ends.count(ANCHOR)
        self.assertGreater(at_anchor, 0.45 * self.N)
        self.assertLess(at_anchor, 0.60 * self.N)
        self.assertGreaterEqual(min(ends), self.FIRST_TS)

    def test_filter_sets_are_none_each_attribute_and_each_pair(self):
        names = ("actor_id", "action", "resource_type", "resource_id")
        seen = collections.Counter(
            tuple(n for n in names if getattr(x, n) is not None)
            for x in self.queries)
        expected = {()} | {(n,) for n in names} | {
            (a, b) for i, a in enumerate(names) for b in names[i + 1:]}
        self.assertEqual(set(seen), expected)
        # Chosen evenly among the 11 sets.
        self.assertGreater(min(seen.values()), self.N / 11 * 0.7)

    def test_filter_values_come_from_one_sampled_event(self):
        samples = set(self.samples)
        for x in self.queries:
            chosen = (x.actor_id, x.action, x.resource_type,
                      x.resource_id)
            self.assertTrue(any(
                all(c is None or c == s for c, s in zip(chosen, sample))
                for sample in samples), x)

    def test_pages_lean_to_the_front(self):
        pages = collections.Counter(x.page for x in self.queries)
        self.assertGreater(pages[1], 0.55 * self.N)
        self.assertLess(pages[1], 0.65 * self.N)
        self.assertGreater(pages[2], 0.15 * self.N)
        self.assertGreater(pages[3], 0.07 * self.N)
        deep = [p for p in pages.elements() if p > 3]
        self.assertGreater(len(deep), 0.07 * self.N)
        self.assertLess(len(deep), 0.13 * self.N)
        self.assertLessEqual(max(deep), 200)
        self.assertGreater(max(deep), 100)

    def test_page_size_is_10_20_50_or_100(self):
        counts = collections.Counter(x.page_size for x in self.queries)
        self.assertEqual(set(counts), {10, 20, 50, 100})
        self.assertGreater(min(counts.values()), 0.2 * self.N)

    def test_the_same_seed_draws_the_same_queries(self):
        rng = random.Random(8)
        self.assertEqual(
            [pick_realistic_query(rng, self.profile) for _ in range(50)],
            self.queries[:50])


if __name__ == "__main__":
    unittest.main()
