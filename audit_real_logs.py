"""Checks of the import on real audit logs, for ./run_tests.

``real_log_checks`` imports every file of ``shared/real-logs`` that a
format recognises (``audit_formats.detect_format``) and checks the
result against the source records and against an independent in-memory
reference, through both query modules.  It reads the source files with
its own plain reader, not the importer's, so that a fault in the
importer's reader shows as a mismatch.
"""

import collections
import gzip
import json
import os
import random
import sys
from operator import itemgetter

import audit_dataset
import audit_log_service
import enhanced_audit_log_service
from audit_formats import Mapper, check_fields, detect_format, short_repr
from audit_import import IMPLEMENTATIONS, import_files
from audit_query import INT64_MAX, INT64_MIN, Query

__all__ = ["real_log_checks"]


def real_log_checks(shared_dir, work_dir):
    """Import every real log in ``shared_dir/real-logs`` and check it.

    Each file a format recognises becomes its own dataset under
    ``work_dir``; CloudTrail files are also appended into one.  For each
    dataset: the import succeeds, its events number the source records,
    every payload equals its source record in id order (time, then input
    order), and both query modules return the same pages as an
    independent in-memory reference on queries sampled from the dataset's
    own values, deep pages and same-second ties included.  Returns a list
    of ``(check_name, ok, detail)``; progress and skipped files go to
    stderr.  The query modules' paths are restored afterwards.
    """
    folder = os.path.join(shared_dir, "real-logs")
    if not os.path.isdir(folder):
        _print_progress(f"real logs: {folder} not found; no real-log checks")
        return []
    checks = []
    cloudtrail_files = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        fmt, options, reason = detect_format(path)
        if fmt is None:
            _print_progress(f"real logs: skipped {name}: {reason}")
            continue
        if fmt == "cloudtrail":
            cloudtrail_files.append(path)
        checks += _check_dataset(name, [path], fmt, options,
                                 os.path.join(work_dir, "real-logs", name))
    if len(cloudtrail_files) > 1:
        checks += _check_dataset(
            "cloudtrail appended", cloudtrail_files, "cloudtrail", {},
            os.path.join(work_dir, "real-logs", "cloudtrail-appended"))
    return checks


def _check_dataset(name, paths, fmt, options, data_dir):
    """Import ``paths`` into ``data_dir`` (the first file, then each
    other appended) and run the checks on the result."""
    label = f"real logs: {name}"
    try:
        for i, path in enumerate(paths):
            result = import_files([path], fmt, data_dir=data_dir,
                                  mode="replace" if i == 0 else "append",
                                  **options)
    except audit_dataset.DatasetError as exc:
        _print_progress(f"{label}: import failed: {exc}")
        return [(f"{label}: import as {fmt}", False, str(exc))]
    _print_progress(f"{label}: imported as {fmt}, {result.total:,} events")
    checks = [(f"{label}: import as {fmt}", True,
               f"{result.total} events")]

    try:
        records = [_source_records(path, fmt) for path in paths]
    except (OSError, ValueError) as exc:
        return checks + [(f"{label}: events equal source records", False,
                          f"cannot count the source records: {exc}")]
    n_records = sum(map(len, records))
    checks.append((f"{label}: events equal source records",
                   result.total == n_records,
                   f"{result.total} events, {n_records} records"))

    with audit_dataset.pointed_at(IMPLEMENTATIONS.values(),
                                  data_dir) as paths_now:
        for name, check in (
                ("payloads equal source records in id order",
                 lambda: _check_payloads(label, records, fmt, options)),
                ("baseline == enhanced on sampled queries",
                 lambda: _check_equivalence(label, paths_now[1]))):
            try:
                checks.append(check())
            except Exception as exc:  # a failed check, not a crash
                checks.append((f"{label}: {name}", False,
                               f"{type(exc).__name__}: {exc}"))
    return checks


def _source_records(path, fmt):
    """The records of a source file, counted without the importer's
    reader: a delivery file's Records, else one per non-blank line."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    if fmt == "cloudtrail":
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict) and "Records" in document:
            return list(document["Records"])
    records = []
    for line in text.split("\n"):
        if line.strip():
            record = json.loads(line)
            if fmt == "cloudtrail" and "Records" in record:
                records += record["Records"]
            else:
                records.append(record)
    return records


def _check_payloads(label, records, fmt, options):
    """Every payload, in id order, equals its source record in time,
    then input, order; ``records`` holds one list per import, and each
    import's ids follow the previous one's."""
    name = f"{label}: payloads equal source records in id order"
    mapper = Mapper(fmt, check_fields(fmt, options.get("fields")),
                     options.get("assume_utc", False))
    expected = []
    try:
        for batch in records:
            times = [mapper.map(record)[0] for record in batch]
            order = sorted(range(len(batch)), key=times.__getitem__)
            expected += [batch[i] for i in order]
    finally:
        mapper.close()
    events = []
    page = 1
    while True:
        batch = audit_log_service.query_events(Query(
            INT64_MIN, INT64_MAX, page=page, page_size=1000))
        events += batch
        if len(batch) < 1000:
            break
        page += 1
    events.sort(key=itemgetter("id"))
    got = [event["payload"] for event in events]
    if got == expected:
        return name, True, f"{len(got)} payloads"
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return name, False, (f"event {events[i]['id']}: payload"
                                 f" {short_repr(a)} != source {short_repr(b)}")
    return name, False, f"{len(got)} payloads, {len(expected)} records"


def _check_equivalence(label, db_path):
    """Baseline, enhanced and an in-memory reference agree."""
    name = f"{label}: baseline == enhanced on sampled queries"
    conn = audit_dataset.connect_readonly(db_path)
    try:
        rows = conn.execute(
            "SELECT id, created_at, actor_id, action, resource_type,"
            " resource_id FROM audit_events").fetchall()
    finally:
        conn.close()
    rows.sort(key=lambda row: (-row[1], -row[0]))
    queries = _sample_queries(rows, random.Random(len(rows)))
    for n, q in enumerate(queries, 1):
        base = audit_log_service.query_events(q)
        enhanced = enhanced_audit_log_service.query_events(q)
        expected = _reference_ids(rows, q)
        if base != enhanced or [e["id"] for e in base] != expected:
            return name, False, (
                f"query {n} of {len(queries)} differs: {q}; baseline ids"
                f" {[e['id'] for e in base][:10]}, enhanced ids"
                f" {[e['id'] for e in enhanced][:10]}, expected"
                f" {expected[:10]}")
    _print_progress(f"{label}: {len(queries)} queries, baseline =="
                    " enhanced == reference")
    return name, True, f"{len(queries)} queries"


def _reference_ids(rows, q):
    """The ids of q's page, from rows sorted created_at DESC, id DESC."""
    wanted = [(i, getattr(q, f)) for i, f in enumerate(
        ("actor_id", "action", "resource_type", "resource_id"), 2)
        if getattr(q, f) is not None]
    ids = [row[0] for row in rows
           if q.from_ts <= row[1] <= q.to_ts
           and all(type(row[i]) is type(v) and row[i] == v
                   for i, v in wanted)]
    return ids[q.offset:q.offset + q.page_size]


def _sample_queries(rows, rng):
    """Queries drawn from a dataset's own values: each filter alone and
    combined, whole and random windows, the busiest second, deep pages
    and pages past the end."""
    if not rows:
        return [Query(INT64_MIN, INT64_MAX)]
    n = len(rows)
    lo, hi = rows[-1][1], rows[0][1]
    per_second = collections.Counter(row[1] for row in rows)
    busiest, ties = per_second.most_common(1)[0]
    queries = []

    def pages(count, size):
        last = max(1, -(-count // size))
        return sorted({1, 2, last // 2 or 1, last, last + 1})

    for size in (1, 7, 50, 1000):
        for page in pages(n, size):
            queries.append(Query(lo, hi, page=page, page_size=size))
    for size in (1, 3, 1000):
        for page in range(1, -(-ties // size) + 2):
            queries.append(Query(busiest, busiest, page=page,
                                 page_size=size))
    queries += [Query(busiest, hi, page_size=50),
                Query(lo, busiest, page_size=50),
                Query(busiest - 1, busiest + 1, page=2, page_size=5),
                Query(hi + 1, hi + 100), Query(lo - 100, lo - 1)]

    fields = ("actor_id", "action", "resource_type", "resource_id")
    for i, field in enumerate(fields, 2):
        counts = collections.Counter(row[i] for row in rows)
        values = [v for v, _ in counts.most_common(3)]
        others = sorted(counts, key=repr)
        values += rng.sample(others, min(5, len(others)))
        for value in dict.fromkeys(values):
            for page in pages(counts[value], 7):
                queries.append(Query(lo, hi, page=page, page_size=7,
                                     **{field: value}))
            queries.append(Query(busiest, busiest, **{field: value}))
    queries += [Query(lo, hi, actor_id="no such actor \u00e9"),
                Query(lo, hi, actor_id=0), Query(lo, hi, actor_id="0"),
                Query(lo, hi, action="")]

    for _ in range(150):
        row = rng.choice(rows)
        a, b = sorted((rng.randint(lo - 1, hi + 1),
                       rng.randint(lo - 1, hi + 1)))
        chosen = {f: row[i] for i, f in enumerate(fields, 2)
                  if rng.random() < 0.4}
        size = rng.choice((1, 5, 20, 50))
        page = rng.randint(1, max(1, n // size) + 1)
        if rng.random() < 0.5:
            page = rng.randint(1, 3)
        queries.append(Query(a, b, page=page, page_size=size, **chosen))
    return queries


def _print_progress(message):
    print(message, file=sys.stderr, flush=True)
