"""Enhanced audit log queries: a drop-in for ``audit_log_service``.

The metadata of every event is loaded once into a read-only snapshot
sorted ``created_at DESC, id DESC`` (the baseline's order, tie-breaker
included), built under a lock and published in one assignment; readers
take no lock.  A request then finds its rows without scanning:

* the time window is two binary searches over the sorted times, O(log n);
* each attribute (actor_id, action, resource_type, resource_id) is
  dictionary-encoded, and its positions are stored grouped by value in one
  array (CSR layout); a value's positions are ascending, so the window
  within them is two more binary searches and the page is a slice;
* with two or more filters, the filter with the fewest events in the
  window drives and the other columns are checked for each of them (the
  only cost that grows with the data: the rows it must step over).

No step depends on the page number.  Payloads are never cached: each
request opens the payload file once and reads the bytes of every returned
event from it (``os.pread``; adjacent payloads in one read).

Limitations: the snapshot is taken at the first request and does not see
events written afterwards; it holds about 60 to 100 bytes per event.
"""

import json
import json.scanner
import os
import random
import sqlite3
import threading
from array import array
from bisect import bisect_left, bisect_right
from itertools import compress, count
from operator import itemgetter, ne, neg

import audit_dataset
from audit_dataset import (DATA_DIR, DB_PATH, PAYLOAD_FILE, DatasetError,
                           DatasetMissingError, DatasetSchemaError,
                           PayloadError, decode_payload)
from audit_query import Query, pick_query

__all__ = [
    "Query", "init", "query_events", "handle_request", "pick_query",
    "record_event",
    "DATA_DIR", "DB_PATH", "PAYLOAD_FILE", "DatasetError",
    "DatasetMissingError", "DatasetSchemaError", "PayloadError",
]

SELECT_ALL_SQL = (
    "SELECT id, created_at, actor_id, action, resource_type, resource_id,"
    " payload_offset, payload_len FROM audit_events"
    " ORDER BY created_at DESC, id DESC")

FILTER_FIELDS = ("actor_id", "action", "resource_type", "resource_id")

_HAS_PREAD = hasattr(os, "pread")
# Ranges past these get the dataset module's full check (one stat) first.
_LARGE_PAYLOAD_BYTES = audit_dataset._LARGE_PAYLOAD_BYTES
_LARGE_OFFSET_BYTES = audit_dataset._LARGE_OFFSET_BYTES
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)

_rng = random.Random(1337)
_lock = threading.Lock()
_snapshot = None
_builds = 0  # how many snapshots were built; the tests count them


def init():
    """Make sure the dataset exists and build the snapshot, once.

    Idempotent and thread-safe: concurrent callers wait for one build.  A
    failed build raises for its caller and leaves nothing behind, so a
    later call retries.  Raises DatasetError subclasses naming the path.
    """
    _current()


def query_events(q):
    """Return one page of events for ``q``, exactly as the baseline does.

    Each event has the keys id, created_at, actor_id, action,
    resource_type, resource_id and payload (the decoded JSON, read from
    the payload file during this call), sorted created_at DESC, id DESC.
    A page past the end is [].
    """
    if not isinstance(q, Query):
        raise TypeError(f"q must be a Query, got {q!r}")
    snap = _current()
    positions = snap.page_positions(q)
    if not positions:
        return []
    return snap.events_at(positions)


def handle_request(q=None):
    """Serve one request: ``{"query": ..., "events": ..., "count": ...}``.

    With no query, serves one from the benchmark mix via ``_pick_query``.
    """
    if q is None:
        q = _pick_query()
    events = query_events(q)
    return {"query": q.as_dict(), "events": events, "count": len(events)}


def record_event(actor_id, action, resource_type, resource_id, payload,
                 created_at=None):
    """Record one event in this module's dataset and return its new id.

    The payload line is appended and flushed to disk before the row is
    inserted, under a lock that serializes writers across threads and
    processes.  ``created_at`` defaults to now; an older value is allowed.
    Raises TypeError or ValueError naming the field and the value, and
    DatasetError subclasses naming the path (nothing is created when a
    file is missing).  See ``audit_dataset.append_event``.
    """
    return audit_dataset.append_event(
        DB_PATH, PAYLOAD_FILE, actor_id, action, resource_type,
        resource_id, payload, created_at)


def _pick_query():
    # Harnesses replace this function to inject their own queries.
    return pick_query(_rng, _current().anchor)


def _current():
    """The published snapshot for the current paths, built if needed."""
    global _snapshot, _builds
    snap = _snapshot
    if (snap is not None and snap.db_path == DB_PATH
            and snap.payload_path == PAYLOAD_FILE):
        return snap
    with _lock:
        snap = _snapshot
        if (snap is None or snap.db_path != DB_PATH
                or snap.payload_path != PAYLOAD_FILE):
            audit_dataset.ensure_dataset(DB_PATH, PAYLOAD_FILE)
            snap = Snapshot.load(DB_PATH, PAYLOAD_FILE)
            _snapshot = snap  # published whole, in one assignment
            _builds += 1
        return snap


def _typecode(largest):
    """The smallest unsigned array typecode that holds 0..largest."""
    for code in ("B", "H", "I"):
        if largest < 256 ** array(code).itemsize:
            return code
    return "Q"


def _group_few(codes, n, n_values, position_type):
    """CSR grouping of byte-sized codes: one C-speed pass per value.

    ``bytes.translate`` turns the codes into a 0/1 mask for one value and
    ``compress`` keeps the positions under it, ascending.
    """
    raw = codes.tobytes()
    starts = array("Q", [0])
    postings = array(position_type)
    for code in range(n_values):
        table = bytes(256)
        table = table[:code] + b"\x01" + table[code + 1:]
        postings.extend(compress(range(n), raw.translate(table)))
        starts.append(len(postings))
    return starts, postings


def _group_many(codes, n, n_values, position_type):
    """CSR grouping of wider codes: a stable sort of the positions by code
    (so each group stays ascending), O(n log n).  Every code occurs, so a
    group starts wherever the sorted codes change."""
    postings = array(position_type, sorted(range(n),
                                           key=codes.__getitem__))
    in_order = array(codes.typecode, map(codes.__getitem__, postings))
    starts = array("Q", [0])
    starts.extend(compress(range(1, n), map(ne, in_order[1:], in_order)))
    starts.append(n)
    return starts, postings


class _Attribute:
    """One dictionary-encoded column with its positions grouped by value.

    ``codes[p]`` is the code of the value at position p; ``values[c]`` is
    the value of code c.  The positions holding code c are
    ``postings[starts[c]:starts[c + 1]]``, ascending.
    """

    __slots__ = ("values", "code_of", "codes", "starts", "postings")

    def __init__(self, column, position_type):
        n = len(column)
        # One dict pass gives each value the position where it first
        # appears; an array then renumbers those densely.  Array indexing
        # is cheaper than a second round of dict lookups on a million
        # strings.
        first_seen = {}
        sparse = array("Q", map(first_seen.setdefault, column, count()))
        self.values = list(first_seen)
        dense = array("Q", bytes(8 * n)) if n else array("Q")
        for code, position in enumerate(first_seen.values()):
            dense[position] = code
        del first_seen
        self.codes = array(_typecode(len(self.values)),
                           map(dense.__getitem__, sparse))
        del sparse, dense
        self.code_of = dict(zip(self.values, count()))
        if self.codes.typecode == "B":
            self.starts, self.postings = _group_few(self.codes, n,
                                                    len(self.values),
                                                    position_type)
        else:
            self.starts, self.postings = _group_many(self.codes, n,
                                                     len(self.values),
                                                     position_type)

    def lookup(self, value):
        # Equal numbers hash alike (42 == 42.0), as SQLite compares them;
        # text never equals a number, in SQL (no affinity) or here.
        return self.code_of.get(value)


class Snapshot:
    """Every event's metadata, sorted created_at DESC, id DESC. Read-only.

    ``keys[p]`` is ``-created_at`` of the event at position p, so that
    ``keys`` ascends and ``bisect`` finds a window's bounds.
    """

    __slots__ = ("db_path", "payload_path", "anchor", "size", "keys", "ids",
                 "offsets", "lengths", "attributes")

    @classmethod
    def load(cls, db_path, payload_path):
        """Read every row of ``db_path`` and index it."""
        if not os.path.isfile(payload_path):
            raise DatasetMissingError(
                f"payload file not found: {payload_path}")
        conn = audit_dataset.connect_readonly(db_path)
        try:
            audit_dataset.check_schema(conn, db_path)
            try:
                anchor = audit_dataset.read_anchor(conn)
                rows = conn.execute(SELECT_ALL_SQL).fetchall()
            except sqlite3.DatabaseError as exc:
                raise DatasetError(
                    f"cannot read {db_path}: {exc}") from exc
        finally:
            conn.close()
        return cls(db_path, payload_path, anchor, rows)

    def __init__(self, db_path, payload_path, anchor, rows):
        self.db_path = db_path
        self.payload_path = payload_path
        self.anchor = anchor
        self.size = len(rows)
        # One list per column; itemgetter beats zip(*rows), which builds a
        # call with a million arguments.
        columns = [list(map(itemgetter(i), rows)) for i in range(8)]
        (ids, created, actors, actions, resource_types, resource_ids,
         offsets, lengths) = columns
        try:
            self.keys = array("q", map(neg, created))
            self.ids = array("q", ids)
            self.offsets = array("q", offsets)
            self.lengths = array("q", lengths)
        except TypeError as exc:
            raise DatasetSchemaError(
                f"{db_path}: id, created_at, payload_offset and"
                f" payload_len must hold integers ({exc})") from exc
        position_type = "i" if self.size < 2 ** 31 else "q"
        self.attributes = {
            name: _Attribute(column, position_type)
            for name, column in zip(
                FILTER_FIELDS,
                (actors, actions, resource_types, resource_ids))}

    def page_positions(self, q):
        """Positions of the page's events, in result order."""
        keys = self.keys
        lo = bisect_left(keys, -q.to_ts)
        hi = bisect_right(keys, -q.from_ts, lo)
        if lo >= hi:
            return ()
        # (attribute, code, first, end): the window within each list.
        lists = []
        for name in FILTER_FIELDS:
            value = getattr(q, name)
            if value is None:
                continue
            attribute = self.attributes[name]
            code = attribute.lookup(value)
            if code is None:
                return ()
            postings = attribute.postings
            first = bisect_left(postings, lo, attribute.starts[code],
                                attribute.starts[code + 1])
            end = bisect_left(postings, hi, first,
                              attribute.starts[code + 1])
            if first == end:
                return ()
            lists.append((end - first, first, end, attribute, code))

        offset = q.offset
        if not lists:
            start = lo + offset
            return range(start, min(start + q.page_size, hi))
        if len(lists) == 1:
            _, first, end, attribute, _ = lists[0]
            start = first + offset
            if start >= end:
                return ()
            return attribute.postings[start:min(start + q.page_size, end)]

        # Several filters: walk the shortest list, keep positions whose
        # other attributes match, in chunks that double until the page is
        # full.  Costs at most O(length of the shortest list in the window).
        lists.sort(key=lambda entry: entry[0])
        _, first, end, attribute, _ = lists[0]
        checks = [(other.codes.__getitem__, code.__eq__)
                  for _, _, _, other, code in lists[1:]]
        need = offset + q.page_size
        matches = []
        chunk = max(2 * need, 256)
        while first < end and len(matches) < need:
            part = attribute.postings[first:min(first + chunk, end)]
            for code_at, is_wanted in checks:
                part = list(compress(part, map(is_wanted, map(code_at,
                                                              part))))
            matches.extend(part)
            first += chunk
            chunk *= 2
        return matches[offset:need]

    def events_at(self, positions):
        """Build the event dicts, reading every payload from the file."""
        offsets, lengths, ids, keys = (self.offsets, self.lengths, self.ids,
                                       self.keys)
        path = self.payload_path
        wanted = [(offsets[p], lengths[p], ids[p]) for p in positions]
        raws = _read_payloads(path, wanted)
        (actor_codes, actors), (action_codes, actions), \
            (type_codes, types), (rid_codes, rids) = [
                (a.codes, a.values) for a in self.attributes.values()]
        events = []
        append = events.append
        for p, (offset, length, event_id), raw in zip(positions, wanted,
                                                      raws):
            payload = _decode(raw, length)
            if payload is _BAD:
                payload = decode_payload(raw, event_id, offset, length,
                                         path)
            append({
                "id": event_id,
                "created_at": -keys[p],
                "actor_id": actors[actor_codes[p]],
                "action": actions[action_codes[p]],
                "resource_type": types[type_codes[p]],
                "resource_id": rids[rid_codes[p]],
                "payload": payload,
            })
        return events


_BAD = object()
_scan_json = json.scanner.make_scanner(json.JSONDecoder())


def _decode(raw, length):
    """The JSON value in ``raw``, or _BAD if anything is off.

    The C scanner that ``json.loads`` ends in, called directly: the same
    values, without two regular expressions and three calls per payload.
    Whatever it does not accept whole (a short read, bad UTF-8, invalid
    JSON, leading white space) goes to decode_payload, which decodes it
    the standard way or raises the error that names the event.
    """
    if len(raw) != length:
        return _BAD
    try:
        text = raw.decode("utf-8")
        value, end = _scan_json(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
        return _BAD
    if end != len(text) and not text[end:].isspace():
        return _BAD
    return value


def _read_payloads(path, wanted):
    """The raw bytes of each ``(offset, length, id)``, in the given order.

    Opens ``path`` once.  Payloads that lie back to back in the file are
    read together; a short read is left short for decode_payload to name.
    """
    for offset, length, event_id in wanted:
        if (offset < 0 or length < 0 or length > _LARGE_PAYLOAD_BYTES
                or offset > _LARGE_OFFSET_BYTES):
            audit_dataset.check_payload_range(event_id, offset, length,
                                              path)
    try:
        if _HAS_PREAD:
            fd = os.open(path, _OPEN_FLAGS)
        else:
            handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise DatasetMissingError(f"payload file not found: {path}") from exc
    try:
        if _HAS_PREAD:
            def read_at(length, offset, fd=fd, pread=os.pread):
                return pread(fd, length, offset)
        else:
            def read_at(length, offset, seek=handle.seek, read=handle.read):
                seek(offset)
                return read(length)
        if len(wanted) == 1:
            return [read_at(wanted[0][1], wanted[0][0])]

        # Runs of payloads that lie back to back (ids in time order, as in
        # imported logs) are read in one call and sliced.
        order = sorted(range(len(wanted)), key=wanted.__getitem__)
        raws = [None] * len(wanted)
        run_start = 0
        for k in range(1, len(order) + 1):
            if k < len(order):
                offset, length, _ = wanted[order[k]]
                prev_offset, prev_length, _ = wanted[order[k - 1]]
                if offset == prev_offset + prev_length:
                    continue
            if k - run_start == 1:
                i = order[run_start]
                raws[i] = read_at(wanted[i][1], wanted[i][0])
            else:
                first = wanted[order[run_start]][0]
                last_offset, last_length, _ = wanted[order[k - 1]]
                block = read_at(last_offset + last_length - first, first)
                for i in order[run_start:k]:
                    offset, length, _ = wanted[i]
                    raws[i] = block[offset - first:offset - first + length]
            run_start = k
        return raws
    finally:
        if _HAS_PREAD:
            os.close(fd)
        else:
            handle.close()
