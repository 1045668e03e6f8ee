"""Soak test: both query modules under mixed load at once, answers compared.

``soak(threads, seconds)`` runs queries on several threads until the time
is up.  Each request is one query sent to the baseline and to the enhanced
module (in random order, so that at any moment both are busy) and the two
pages compared whole, payloads included.  Queries come half from the
benchmark mix (``audit_query.pick_query``) and half from a varied mix drawn
from the data itself: windows whose edges fall on events, single seconds
full of ties, empty windows, every filter alone and combined (values taken
from real events, and some that match nothing), pages from the first to
far past the end, page sizes from 1 to 1000.

A valid query must never raise, so any exception counts as an error.  The
module prints nothing; ``add_commands`` adds the ``soak`` subcommand to
``runner.py``, which prints the figures.
"""

import os
import random
import sys
import threading
import time

import audit_dataset
import audit_log_service
import audit_seed
import enhanced_audit_log_service
from audit_query import MAX_PAGE_SIZE, Query, pick_query

__all__ = ["soak", "add_commands"]

MODULES = (("baseline", audit_log_service),
           ("enhanced", enhanced_audit_log_service))
# How many events the varied mix draws its values from.
SAMPLE_EVENTS = 500
PAGE_SIZES = (1, 5, 10, 20, 50, 100, MAX_PAGE_SIZE)
# Values no generated or imported event holds, for filters that match
# nothing (and for a case or a LIKE pattern that must not match).
UNMATCHED = {
    "actor_id": (-1, 0, "1", 2 ** 63 - 1),
    "action": ("update", "UPDATE%", "", "'; --"),
    "resource_type": ("order", "ORD_R", "\U0001f642"),
    "resource_id": ("ORDER-0", "ORDER-%", "x" * 1024),
}
FILTERS = tuple(UNMATCHED)
KEPT_SAMPLES = 5
# A request still running this long after the end counts as an error.
STUCK_S = 60.0


def soak(threads=8, seconds=10.0, seed=audit_seed.DEFAULT_SEED):
    """Run mixed queries against both modules from ``threads`` threads for
    ``seconds`` seconds, comparing every answer.

    Uses the dataset both modules point at (seeding it if neither file
    exists).  Returns a dict: ``requests`` (queries answered by both and
    compared), ``mismatches`` (pages that differ), ``errors`` (requests
    where either module raised), ``mismatch_samples`` and
    ``error_samples`` (descriptions of the first few), ``threads`` and
    ``seconds`` (the time the threads actually ran).  A thread still
    inside a request a minute after the end counts as an error and is
    left behind (it is a daemon thread).  Raises ValueError
    for a thread count below 1 or a duration that is not positive, and
    DatasetError when the dataset cannot be served at all.
    """
    if type(threads) is not int or threads < 1:
        raise ValueError(f"threads must be an int of 1 or more,"
                         f" got {threads!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not seconds > 0:
        raise ValueError(f"seconds must be a positive number,"
                         f" got {seconds!r}")
    for _, module in MODULES:
        module.init()  # building a snapshot is not part of a request
    profile = _Profile(audit_log_service.DB_PATH, seed)

    tallies = [_Tally() for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(i):
        rng = random.Random(seed * 1_000_003 + i)
        tally = tallies[i]
        start_line.wait()
        while time.monotonic() < deadline[0]:
            try:
                q = profile.query(rng)
            except Exception as exc:  # a bug here must not go unseen
                tally.error(f"making a query: {type(exc).__name__}: {exc}")
                continue
            _compare(q, rng, tally)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(threads)]
    for t in workers:
        t.start()
    started = time.monotonic()
    deadline[0] = started + seconds
    start_line.wait()
    for t in workers:
        t.join(max(0.0, deadline[0] + STUCK_S - time.monotonic()))
    elapsed = time.monotonic() - started
    stuck = sum(t.is_alive() for t in workers)

    report = {"requests": 0, "mismatches": 0, "errors": 0,
              "mismatch_samples": [], "error_samples": [],
              "threads": threads, "seconds": elapsed}
    for tally in tallies:
        report["requests"] += tally.requests
        report["mismatches"] += tally.mismatches
        report["errors"] += tally.errors
        report["mismatch_samples"] += tally.mismatch_samples
        report["error_samples"] += tally.error_samples
    if stuck:
        report["errors"] += stuck
        report["error_samples"].insert(
            0, f"{stuck} thread(s) still inside a request {STUCK_S:g} s"
               " after the end")
    del report["mismatch_samples"][KEPT_SAMPLES:]
    del report["error_samples"][KEPT_SAMPLES:]
    return report


def add_commands(subparsers):
    """Add ``soak [--threads N] [--seconds S] [--data-dir DIR]`` to the
    subcommands of runner.py."""
    parser = subparsers.add_parser(
        "soak", help="mixed queries against both modules, answers compared")
    parser.add_argument("--threads", type=_positive_int, default=8,
                        help="client threads (8)")
    parser.add_argument("--seconds", type=_positive_float, default=10.0,
                        help="how long to run (10)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset directory (default: data/ or"
                             " $AUDIT_LOG_DATA_DIR; seeded if empty)")
    parser.add_argument("--seed", type=int, default=audit_seed.DEFAULT_SEED,
                        help="seed of the query mix (1337)")
    parser.set_defaults(func=_cmd_soak)


# ---------------------------------------------------------------- helpers

class _Tally:
    """One thread's counts; merged once the threads are done."""

    def __init__(self):
        self.requests = self.mismatches = self.errors = 0
        self.mismatch_samples = []
        self.error_samples = []

    def error(self, text):
        self.errors += 1
        if len(self.error_samples) < KEPT_SAMPLES:
            self.error_samples.append(text)

    def mismatch(self, text):
        self.mismatches += 1
        if len(self.mismatch_samples) < KEPT_SAMPLES:
            self.mismatch_samples.append(text)


def _compare(q, rng, tally):
    order = list(MODULES)
    rng.shuffle(order)
    pages = {}
    failed = False
    for name, module in order:
        try:
            pages[name] = module.query_events(q)
        except Exception as exc:  # counted, described, never raised
            failed = True
            tally.error(f"{name}: {type(exc).__name__}: {exc} for {q!r}")
    tally.requests += 1
    if failed:
        return
    base, enhanced = pages["baseline"], pages["enhanced"]
    if base != enhanced:
        tally.mismatch(_describe_mismatch(q, base, enhanced))


def _describe_mismatch(q, base, enhanced):
    at = next((i for i, (a, b) in enumerate(zip(base, enhanced)) if a != b),
              min(len(base), len(enhanced)))
    first = [page[at]["id"] if at < len(page) else None
             for page in (base, enhanced)]
    return (f"{q!r}: baseline {len(base)} events, enhanced"
            f" {len(enhanced)}; first difference at index {at}"
            f" (ids {first[0]} and {first[1]})")


class _Profile:
    """What the varied mix draws from: the span and a sample of events."""

    def __init__(self, db_path, seed):
        conn = audit_dataset.connect_readonly(db_path)
        try:
            self.anchor = audit_dataset.read_anchor(conn)
            first_ts, last_ts, first_id, last_id = conn.execute(
                "SELECT min(created_at), max(created_at), min(id), max(id)"
                " FROM audit_events").fetchone()
            rng = random.Random(seed)
            events = []
            if first_id is not None:
                for _ in range(SAMPLE_EVENTS):
                    events.append(conn.execute(
                        "SELECT created_at, actor_id, action, resource_type,"
                        " resource_id FROM audit_events WHERE id >= ?"
                        " ORDER BY id LIMIT 1",
                        (rng.randint(first_id, last_id),)).fetchone())
        finally:
            conn.close()
        self.first_ts = first_ts if first_ts is not None else self.anchor
        self.last_ts = last_ts if last_ts is not None else self.anchor
        self.events = events or [(self.anchor, 1, "UPDATE", "ORDER",
                                  "ORDER-1")]

    def query(self, rng):
        """Half the benchmark mix, half the varied mix."""
        if rng.random() < 0.5:
            return pick_query(rng, self.anchor)
        return Query(*self._window(rng), page=self._page(rng),
                     page_size=rng.choice(PAGE_SIZES),
                     **self._filters(rng))

    def _window(self, rng):
        roll = rng.random()
        times = [e[0] for e in rng.sample(self.events, 2)] \
            if len(self.events) > 1 else [self.events[0][0]] * 2
        if roll < 0.35:  # both edges exactly on events
            return min(times), max(times)
        if roll < 0.5:  # one second, full of ties
            return times[0], times[0]
        if roll < 0.65:  # everything
            return self.first_ts - 1, max(self.last_ts, self.anchor) + 1
        if roll < 0.75:  # nothing: before the first or after the last
            if rng.random() < 0.5:
                return self.first_ts - 86400, self.first_ts - 1
            return self.last_ts + 1, self.last_ts + 86400
        length = rng.randint(0, 3 * 86400)
        return times[0] - length, times[0]

    def _filters(self, rng):
        sample = dict(zip(FILTERS, rng.choice(self.events)[1:]))
        filters = {}
        for name in FILTERS:
            if rng.random() < 0.3:
                filters[name] = sample[name]
        if rng.random() < 0.05:
            name = rng.choice(FILTERS)
            filters[name] = rng.choice(UNMATCHED[name])
        return filters

    def _page(self, rng):
        roll = rng.random()
        if roll < 0.6:
            return rng.randint(1, 3)
        if roll < 0.9:
            return rng.randint(4, 60)
        return rng.choice((2000, 10 ** 6))


def _cmd_soak(args):
    if args.data_dir is not None:
        data_dir = os.path.abspath(args.data_dir)
        os.makedirs(data_dir, exist_ok=True)
        paths = audit_dataset.resolve_paths(data_dir)
        for _, module in MODULES:
            module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = paths
    print(f"soak: {args.threads} threads for {args.seconds:g} s, baseline"
          f" and enhanced at once, on {audit_log_service.DATA_DIR}",
          file=sys.stderr, flush=True)
    report = soak(threads=args.threads, seconds=args.seconds,
                  seed=args.seed)
    rows = (("requests served", f"{report['requests']:,}"),
            ("mismatches", f"{report['mismatches']:,}"),
            ("errors", f"{report['errors']:,}"),
            ("threads", f"{report['threads']}"),
            ("duration", f"{report['seconds']:.1f} s"))
    label_width = max(len(label) for label, _ in rows)
    value_width = max(len(value) for _, value in rows)
    for label, value in rows:
        print(f"{label:<{label_width}}  {value:>{value_width}}")
    for title, key in (("first mismatches", "mismatch_samples"),
                       ("first errors", "error_samples")):
        if report[key]:
            print(f"{title}:")
            for text in report[key]:
                print(f"  {text[:300]}")
    return 1 if report["mismatches"] or report["errors"] else 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"must be 1 or more, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be more than 0, got {text}")
    return value
