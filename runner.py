#!/usr/bin/env python3
"""Load harness and dataset tools for the audit log query modules.

``python3 runner.py`` seeds the dataset if needed and benchmarks the
baseline and the enhanced module on one shared query sequence, printing
an aligned table to stdout (progress goes to stderr).  Subcommands:
``seed``, ``scale``, ``import``, ``query`` and ``soak``; ``--help`` on
each lists its flags.
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time

import audit_dataset
import audit_import
import audit_log_service
import audit_seed
import audit_soak
import enhanced_audit_log_service
from audit_query import (DataProfile, Query, pick_query,
                         pick_realistic_query)

__all__ = ["run", "summarize", "benchmark_pair", "main"]

IMPLEMENTATIONS = {
    "baseline": audit_log_service,
    "enhanced": enhanced_audit_log_service,
}
METRIC_KEYS = ("count", "concurrency", "rps", "p50_ms", "p90_ms", "p95_ms",
               "p99_ms", "avg_ms")


def run(load_fn, warmup, total, concurrency):
    """Call ``load_fn`` ``warmup`` times, then ``total`` times on threads.

    ``load_fn`` returns a ``(t0, t1)`` pair of ``time.perf_counter()``
    readings; its latency is ``t1 - t0``.  The ``total`` calls run on a pool
    of ``concurrency`` threads, which start together.  Returns
    ``(metrics, latencies_ms)``: metrics has count, concurrency, rps and
    the p50, p90, p95, p99 and average latency in milliseconds
    (percentiles by linear interpolation).
    """
    for name, value in (("warmup", warmup), ("total", total),
                        ("concurrency", concurrency)):
        if type(value) is not int or value < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for _ in range(warmup):
        load_fn()

    latencies_ms = [0.0] * total
    tickets = itertools.count()  # next() on it is atomic under the GIL
    start_line = threading.Barrier(concurrency + 1)

    def worker():
        start_line.wait()
        while True:
            i = next(tickets)
            if i >= total:
                return
            t0, t1 = load_fn()
            latencies_ms[i] = (t1 - t0) * 1000.0

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        workers = [pool.submit(worker) for _ in range(concurrency)]
        start_line.wait()
        started = time.perf_counter()
        for future in workers:
            future.result()
        elapsed = time.perf_counter() - started
    return summarize(latencies_ms, elapsed, concurrency), latencies_ms


def summarize(latencies_ms, elapsed_s, concurrency):
    """Metrics of one run: count, concurrency, rps and latency figures."""
    if len(latencies_ms) > 1:
        cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
        p50, p90, p95, p99 = cuts[49], cuts[89], cuts[94], cuts[98]
    else:
        p50 = p90 = p95 = p99 = latencies_ms[0]
    return {
        "count": len(latencies_ms),
        "concurrency": concurrency,
        "rps": len(latencies_ms) / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": p50, "p90_ms": p90, "p95_ms": p95, "p99_ms": p99,
        "avg_ms": statistics.fmean(latencies_ms),
    }


def request_loader(module, queries):
    """A load function serving ``queries`` in turn through ``module``."""
    pending = iter(queries)
    handle = module.handle_request

    def load():
        q = next(pending)
        t0 = time.perf_counter()
        handle(q)
        return t0, time.perf_counter()
    return load


def benchmark_pair(queries, warmup, concurrency, progress=True):
    """Run both implementations on the same queries; return their metrics.

    ``queries`` holds ``warmup`` queries followed by the timed ones.
    """
    results = {}
    total = len(queries) - warmup
    for name, module in IMPLEMENTATIONS.items():
        module.init()  # the snapshot build is not part of a request
        if progress:
            print(f"benchmark: {name}, {total} requests at concurrency"
                  f" {concurrency}", file=sys.stderr, flush=True)
        metrics, _ = run(request_loader(module, queries), warmup, total,
                         concurrency)
        results[name] = metrics
    return results


def format_table(rows, headers):
    """Rows of cells as an aligned text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells))
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cell(value):
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metrics_table(results):
    """Both implementations' metrics side by side, with the ratio."""
    base, enh = results["baseline"], results["enhanced"]
    rows = []
    for key in METRIC_KEYS[2:]:
        ratio = enh[key] / base[key] if base[key] else float("nan")
        rows.append((key, base[key], enh[key], f"{ratio:.3f}x"))
    return format_table(rows, ("metric", "baseline", "enhanced",
                               "enhanced/baseline"))


def benchmark_queries(anchor, total, warmup, seed):
    """The shared query sequence of the original benchmark mix."""
    rng = random.Random(seed)
    return [pick_query(rng, anchor) for _ in range(warmup + total)]


def sample_profile(db_path, seed, samples=1000):
    """A DataProfile of the dataset at ``db_path``: its span and the
    attributes of ``samples`` events picked at random (by id)."""
    conn = audit_dataset.connect_readonly(db_path)
    try:
        anchor = audit_dataset.read_anchor(conn)
        first_ts, first_id, last_id = conn.execute(
            "SELECT min(created_at), min(id), max(id)"
            " FROM audit_events").fetchone()
        if first_id is None:
            raise audit_dataset.DatasetError(f"{db_path} holds no events")
        rng = random.Random(seed)
        picked = []
        for _ in range(samples):
            picked.append(conn.execute(
                "SELECT actor_id, action, resource_type, resource_id"
                " FROM audit_events WHERE id >= ? ORDER BY id LIMIT 1",
                (rng.randint(first_id, last_id),)).fetchone())
    finally:
        conn.close()
    return DataProfile(first_ts=first_ts, anchor=anchor,
                       samples=tuple(picked))


def realistic_queries(profile, total, warmup, seed):
    """The shared query sequence of the realistic mix."""
    rng = random.Random(seed)
    return [pick_realistic_query(rng, profile)
            for _ in range(warmup + total)]


def floor_pages(queries):
    """For each query, the metadata of the events on its page, taken from
    the enhanced snapshot (so that the floor does no searching)."""
    snap = enhanced_audit_log_service._current().base
    attributes = [snap.attributes[name] for name in
                  enhanced_audit_log_service.FILTER_FIELDS]
    pages = []
    for q in queries:
        pages.append([
            (snap.ids[p], ~snap.keys[p])
            + tuple(a.values[a.codes[p]] for a in attributes)
            + (snap.offsets[p], snap.lengths[p])
            for p in snap.page_positions(q)])
    return snap.payload_path, pages


def read_floor_page(payload_path, page, scan=enhanced_audit_log_service
                    ._scan_json, pread=os.pread):
    """The least work one page needs: open the payload file, read and
    decode each payload, build the event dicts.

    It decodes with the same direct call of json's C scanner as the
    enhanced module, so the ratio to it measures only the module's own
    overhead: finding the rows, checking, assembling.
    """
    if not page:
        return []
    fd = os.open(payload_path, os.O_RDONLY)
    try:
        return [{
            "id": event_id, "created_at": created_at,
            "actor_id": actor_id, "action": action,
            "resource_type": resource_type, "resource_id": resource_id,
            "payload": scan(pread(fd, length, offset).decode("utf-8"), 0)[0],
        } for (event_id, created_at, actor_id, action, resource_type,
               resource_id, offset, length) in page]
    finally:
        os.close(fd)


def floor_loader(queries):
    """A load function for run(): the floor of each query's page in turn.
    """
    payload_path, pages = floor_pages(queries)
    pending = iter(pages)

    def load():
        page = next(pending)
        t0 = time.perf_counter()
        read_floor_page(payload_path, page)
        return t0, time.perf_counter()
    return load


def measure_floor(queries, rounds=7):
    """Single-threaded enhanced service time against the floor.

    Each query is served by the floor and then by the enhanced module,
    back to back, so that a machine that slows down or speeds up affects
    both alike; ``rounds`` passes over the queries.  Returns microseconds
    per request of each (medians over the rounds), the median of the
    per-round ratios and their spread.
    """
    payload_path, pages = floor_pages(queries)
    query_events = enhanced_audit_log_service.query_events
    clock = time.perf_counter
    for q, page in zip(queries, pages):  # warm both up, untimed
        read_floor_page(payload_path, page)
        query_events(q)
    floor_s, enhanced_s, ratios = [], [], []
    for _ in range(rounds):
        floor = enhanced = 0.0
        for q, page in zip(queries, pages):
            t0 = clock()
            read_floor_page(payload_path, page)
            t1 = clock()
            query_events(q)
            t2 = clock()
            floor += t1 - t0
            enhanced += t2 - t1
        floor_s.append(floor)
        enhanced_s.append(enhanced)
        ratios.append(enhanced / floor)
    per_request_us = 1e6 / len(queries)
    return {
        "requests": len(queries),
        "rounds": rounds,
        "floor_us": statistics.median(floor_s) * per_request_us,
        "enhanced_us": statistics.median(enhanced_s) * per_request_us,
        "ratio": statistics.median(ratios),
        "ratio_spread": max(ratios) - min(ratios),
    }


def dataset_anchor():
    """Seed the default dataset if needed and return its anchor."""
    audit_log_service.init()
    return audit_log_service._anchor()


# ---------------------------------------------------------------- commands

def benchmark_mixes(total, warmup, concurrency, seed, announce=None):
    """Benchmark both implementations on both mixes, then the floor.

    Prints each table as it is measured (``announce(title)`` is called
    before each; default: print the title) and returns the figures:
    per mix both metric blocks and the enhanced/baseline ratios, and the
    floor's.
    """
    announce = announce or (lambda title: print(f"\n{title}", flush=True))
    anchor = dataset_anchor()
    profile = sample_profile(audit_log_service.DB_PATH, seed)
    mixes = {
        "original": benchmark_queries(anchor, total, warmup, seed),
        "realistic": realistic_queries(profile, total, warmup, seed),
    }
    figures = {}
    for mix, queries in mixes.items():
        announce(f"benchmark, {mix} mix: {total} requests, concurrency"
                 f" {concurrency}, warmup {warmup}, seed {seed}")
        results = benchmark_pair(queries, warmup, concurrency)
        print(metrics_table(results), flush=True)
        base, enh = results["baseline"], results["enhanced"]
        figures[mix] = {
            "baseline": base, "enhanced": enh,
            "rps_ratio": enh["rps"] / base["rps"],
            "p95_ratio": enh["p95_ms"] / base["p95_ms"],
            "p99_ratio": enh["p99_ms"] / base["p99_ms"],
        }
        gain = figures[mix]
        print(f"  improvement: rps +{(gain['rps_ratio'] - 1) * 100:,.0f}%,"
              f" p95 -{(1 - gain['p95_ratio']) * 100:.1f}%,"
              f" p99 -{(1 - gain['p99_ratio']) * 100:.1f}%", flush=True)

    announce("floor: single-threaded enhanced service time against only"
             " reading and decoding the same payloads (realistic mix)")
    floor = measure_floor(mixes["realistic"][warmup:])
    figures["floor"] = floor
    print(format_table(
        [("floor", floor["floor_us"]), ("enhanced", floor["enhanced_us"])],
        ("realistic mix", "us/request")), flush=True)
    print(f"  enhanced / floor = {floor['ratio']:.2f} (median of"
          f" {floor['rounds']} rounds)", flush=True)

    # The floor through the same harness and threads: what reading and
    # decoding the payloads alone reaches at this concurrency.
    loaded, _ = run(floor_loader(mixes["realistic"]), warmup, total,
                    concurrency)
    enhanced = figures["realistic"]["enhanced"]
    floor["loaded"] = loaded
    floor["loaded_rps_ratio"] = enhanced["rps"] / loaded["rps"]
    print(f"  at concurrency {concurrency}, the floor alone serves"
          f" {loaded['rps']:,.0f} requests/s (p99 {loaded['p99_ms']:.1f} ms);"
          f" the enhanced module {enhanced['rps']:,.0f}"
          f" (p99 {enhanced['p99_ms']:.1f} ms): enhanced / floor ="
          f" {floor['loaded_rps_ratio']:.2f}", flush=True)
    if floor["ratio_spread"] > 0.25 * floor["ratio"]:
        print(f"  warning: the rounds disagree by"
              f" {floor['ratio_spread']:.2f}; the machine was busy, so this"
              " ratio is unreliable", flush=True)
    return figures


def cmd_bench(args):
    _use_data_dir(args.data_dir, rows=args.rows, seed=args.seed)
    figures = benchmark_mixes(args.total, args.warmup, args.concurrency,
                              args.seed)
    if args.json:
        _write_json(args.json, figures)
    return 0


def cmd_seed(args):
    data_dir = args.data_dir or audit_dataset.DATA_DIR
    started = time.perf_counter()
    audit_seed.seed_dataset(data_dir, rows=args.rows, seed=args.seed,
                            anchor=args.anchor)
    print(f"seeded {args.rows:,} events in {data_dir} in"
          f" {time.perf_counter() - started:.1f} s")
    return 0


SCALE_PAGES = (1, 10, 100, 1000, 2000)
# page_size 4 keeps page 2000 inside the events of one action even at the
# smallest size (a sixth of 50,000 events is about 8,300, over 2000 pages
# of 4), so every page measured returns events.
SCALE_PAGE_SIZE = 4


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_build(db_path, payload_path, repeats=3):
    """Seconds to fetch every row from SQLite and to build the snapshot
    (medians of ``repeats`` alternating runs), and the snapshot's bytes
    per event as tracemalloc counts them."""
    import gc
    import tracemalloc
    snapshot_type = enhanced_audit_log_service.Snapshot

    def fetch():
        conn = audit_dataset.connect_readonly(db_path)
        try:
            conn.execute(enhanced_audit_log_service.SELECT_ALL_SQL
                         ).fetchall()
        finally:
            conn.close()

    fetch_s, build_s = [], []
    for _ in range(repeats):
        fetch_s.append(_median_time(fetch, 1))
        gc.collect()
        build_s.append(_median_time(
            lambda: snapshot_type.load(db_path, payload_path), 1))
        gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        snap = snapshot_type.load(db_path, payload_path)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"fetch_s": statistics.median(fetch_s),
            "build_s": statistics.median(build_s),
            "build_over_fetch": statistics.median(
                b / f for b, f in zip(build_s, fetch_s)),
            "bytes_per_event": held / max(snap.size, 1),
            "events": snap.size}


def measure_depths(views, repeats):
    """Single-threaded service time of a one-filter query at each page of
    SCALE_PAGES on each view (by its size): the median over ``repeats``
    calls, in microseconds.

    A call is what query_events does once the view is fresh: find the
    page, read and decode its payloads.  Every (size, page) pair takes
    its turn call by call, so that a machine that speeds up or slows down
    during the measurement affects all of them alike.
    """
    module = enhanced_audit_log_service
    calls = {}
    for rows, view in views.items():
        first_ts = ~view.base.keys[-1]
        for page in SCALE_PAGES:
            q = Query(first_ts, view.anchor, action="UPDATE", page=page,
                      page_size=SCALE_PAGE_SIZE)
            items, _ = view.page(q)
            if len(items) != SCALE_PAGE_SIZE:
                raise audit_dataset.DatasetError(
                    f"page {page} of {q!r} is not full: the dataset of"
                    f" {rows:,} events is too small for the scale table")
            calls[rows, page] = (view, q)
    times = {key: [] for key in calls}
    clock = time.perf_counter
    events_at = module._events_at
    for _ in range(repeats):
        for key, (view, q) in calls.items():
            started = clock()
            events_at(view.page(q)[0])
            times[key].append(clock() - started)
    result = {rows: {} for rows in views}
    for (rows, page), spent in times.items():
        result[rows][page] = statistics.median(spent) * 1e6
    return result


def scale_table(sizes, seed=audit_seed.DEFAULT_SEED, repeats=200,
                progress=True):
    """Measure every size: seeding, fetch, build, bytes per event and the
    service time at each depth.  Returns one dict per size."""
    report, views = [], {}
    for rows in sizes:
        data_dir = os.path.join(audit_dataset.DATA_DIR,
                                f"generated-{rows}-seed-{seed}")
        seeded_s = None
        if not os.path.exists(os.path.join(data_dir,
                                           audit_dataset.DB_NAME)):
            started = time.perf_counter()
            audit_seed.seed_dataset(data_dir, rows=rows, seed=seed,
                                    progress=progress)
            seeded_s = time.perf_counter() - started
        _, db_path, payload_path = audit_dataset.resolve_paths(data_dir)
        if progress:
            print(f"scale: {rows:,} events: fetch and build",
                  file=sys.stderr, flush=True)
        figures = measure_build(db_path, payload_path)
        figures["rows"] = rows
        figures["seed_s"] = seeded_s
        report.append(figures)
        views[rows] = enhanced_audit_log_service._View.load(db_path,
                                                            payload_path)
    if progress:
        print("scale: service time by size and depth", file=sys.stderr,
              flush=True)
    service_us = measure_depths(views, repeats)
    for figures in report:
        figures["service_us"] = service_us[figures["rows"]]
    return report


def format_scale(report):
    headers = (["events", "seed s", "fetch s", "build s", "build/fetch",
                "bytes/event"]
               + [f"page {p} us" for p in SCALE_PAGES])
    rows = []
    for r in report:
        rows.append([r["rows"],
                     "-" if r["seed_s"] is None else r["seed_s"],
                     r["fetch_s"], r["build_s"], r["build_over_fetch"],
                     r["bytes_per_event"]]
                    + [r["service_us"][p] for p in SCALE_PAGES])
    return format_table(rows, headers)


FRESHNESS_BATCHES = (1, 100, 10_000)


def measure_freshness(data_dir, batches=FRESHNESS_BATCHES, progress=True):
    """What the enhanced module pays to see new events, on a copy of the
    dataset in ``data_dir`` (the original is never written).

    Records each batch with ``record_event`` (ages spread over the last
    day, so most are late arrivals), then times the first request's
    refresh.  Also times the check a request makes when nothing changed.
    Returns a dict of seconds and microseconds.
    """
    import shutil
    import tempfile
    module = enhanced_audit_log_service
    with tempfile.TemporaryDirectory(prefix="audit-fresh-",
                                     dir=audit_dataset.DATA_DIR) as tmp:
        src = audit_dataset.resolve_paths(data_dir)
        dst = audit_dataset.resolve_paths(tmp)
        shutil.copyfile(src[1], dst[1])
        shutil.copyfile(src[2], dst[2])
        with audit_dataset.pointed_at([module], tmp):
            try:
                module._snapshot = None
                module.init()
                events = module._current().base.size
                check_s = _median_time(module._current, 2001)
                rng = random.Random(11)
                now = int(time.time())
                pickup_s = {}
                for batch in batches:
                    if progress:
                        print(f"freshness: recording {batch:,} events",
                              file=sys.stderr, flush=True)
                    for _ in range(batch):
                        module.record_event(
                            rng.randint(1, 2000), "UPDATE", "ORDER",
                            f"ORDER-{rng.randint(1, 50_000)}",
                            {"note": "freshness probe"},
                            created_at=now - rng.randrange(86400))
                    refreshes = module._refreshes
                    started = time.perf_counter()
                    module._current()
                    pickup_s[batch] = time.perf_counter() - started
                    if module._refreshes != refreshes + 1:
                        raise RuntimeError("the batch was not taken in by a"
                                           " delta refresh")
            finally:
                module._snapshot = None  # free it
    return {"events": events, "unchanged_check_us": check_s * 1e6,
            "pickup_s": pickup_s}


def run_scale(sizes, seed=audit_seed.DEFAULT_SEED, repeats=200):
    """Measure and print the scale table and the cost of freshness on the
    largest size; return the figures, with the worst ratios on top."""
    report = scale_table(sizes, seed=seed, repeats=repeats)
    print(f"one-filter query (action = UPDATE, whole log, page_size"
          f" {SCALE_PAGE_SIZE}), single-threaded; median of {repeats}"
          " calls; fetch and build: median of 3", flush=True)
    print(format_scale(report), flush=True)
    first, last = report[0], report[-1]
    depth = max(r["service_us"][SCALE_PAGES[-1]] / r["service_us"][1]
                for r in report)
    size = max(last["service_us"][p] / first["service_us"][p]
               for p in SCALE_PAGES)
    print(f"worst page {SCALE_PAGES[-1]} / page 1: {depth:.2f}x;"
          f" worst {last['rows']:,} / {first['rows']:,} events at one"
          f" page: {size:.2f}x", flush=True)
    largest = os.path.join(audit_dataset.DATA_DIR,
                           f"generated-{last['rows']}-seed-{seed}")
    fresh = measure_freshness(largest)
    print(f"\nfreshness on {fresh['events']:,} events: a request that"
          f" finds nothing new pays {fresh['unchanged_check_us']:.1f} us"
          " for the check", flush=True)
    print(format_table(
        [(k, s * 1000) for k, s in fresh["pickup_s"].items()],
        ("new events", "first request's refresh ms")), flush=True)
    return {"sizes": report, "freshness": fresh,
            "build_over_fetch": last["build_over_fetch"],
            "bytes_per_event": last["bytes_per_event"],
            "depth_ratio": depth, "size_ratio": size}


def cmd_scale(args):
    figures = run_scale(args.sizes, seed=args.seed, repeats=args.repeats)
    if args.json:
        _write_json(args.json, figures)
    return 0


def _use_data_dir(data_dir, rows=audit_seed.DEFAULT_ROWS,
                  seed=audit_seed.DEFAULT_SEED):
    """Point both modules at a dataset, seeding it if it is empty.

    Without ``data_dir``, a dataset of other than the default size or seed
    lives in its own folder under the default one, so that ``--rows`` never
    meets a dataset of another size.
    """
    if data_dir is None and (rows, seed) != (audit_seed.DEFAULT_ROWS,
                                             audit_seed.DEFAULT_SEED):
        data_dir = os.path.join(audit_dataset.DATA_DIR,
                                f"generated-{rows}-seed-{seed}")
    if data_dir is not None:
        data_dir = os.path.abspath(data_dir)
        os.makedirs(data_dir, exist_ok=True)
    paths = audit_dataset.resolve_paths(data_dir)
    for module in IMPLEMENTATIONS.values():
        module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = paths
    if not (os.path.exists(paths[1]) or os.path.exists(paths[2])):
        audit_seed.seed_dataset(paths[0], rows=rows, seed=seed)
    return paths


def _write_json(path, document):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def add_benchmark_flags(parser):
    """--total, --concurrency, --warmup and --seed, for every command that
    benchmarks (this one and run_tests)."""
    parser.add_argument("--total", type=_positive_int, default=1000,
                        help="timed requests per implementation (1000)")
    parser.add_argument("--concurrency", type=_positive_int, default=40,
                        help="client threads (40)")
    parser.add_argument("--warmup", type=_non_negative_int, default=50,
                        help="untimed requests first (50)")
    parser.add_argument("--seed", type=int, default=audit_seed.DEFAULT_SEED,
                        help="seed of the dataset and the query mixes (1337)")


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description="Benchmark the baseline and enhanced audit log modules.")
    add_benchmark_flags(parser)
    parser.add_argument("--rows", type=_positive_int,
                        default=audit_seed.DEFAULT_ROWS,
                        help="events to generate when seeding (50000)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset directory (default: data/ or"
                             " $AUDIT_LOG_DATA_DIR)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the metrics to PATH as JSON")
    parser.set_defaults(func=cmd_bench)
    sub = parser.add_subparsers(dest="command")

    seed = sub.add_parser(
        "seed", help="generate a dataset",
        description="Generate a dataset, atomically.  Refuses a directory"
                    " that already holds one: remove it (or choose another"
                    " --data-dir) to seed again.")
    seed.add_argument("--data-dir", default=None,
                      help="where (created if needed; default: data/ or"
                           " $AUDIT_LOG_DATA_DIR)")
    seed.add_argument("--rows", type=_positive_int,
                      default=audit_seed.DEFAULT_ROWS,
                      help="events to generate (50000)")
    seed.add_argument("--seed", type=int, default=audit_seed.DEFAULT_SEED,
                      help="seed of the generator (1337)")
    seed.add_argument("--anchor", type=int, default=None,
                      help="Unix time the dataset ends at (default: now)")
    seed.set_defaults(func=cmd_seed)
    scale = sub.add_parser(
        "scale", help="service time by dataset size and page depth")
    scale.add_argument("--sizes", type=_positive_int, nargs="+",
                       default=[50_000, 1_000_000],
                       help="dataset sizes (50000 1000000)")
    scale.add_argument("--seed", type=int,
                       default=audit_seed.DEFAULT_SEED)
    scale.add_argument("--repeats", type=_positive_int, default=200,
                       help="calls per measured page (200)")
    scale.add_argument("--json", metavar="PATH")
    scale.set_defaults(func=cmd_scale)
    audit_import.add_commands(sub)
    audit_soak.add_commands(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (audit_dataset.DatasetError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
