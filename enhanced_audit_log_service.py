"""Enhanced audit log queries: a drop-in for ``audit_log_service``.

The metadata of every event is loaded into a read-only snapshot sorted
``created_at DESC, id DESC`` (the baseline's order, tie-breaker
included), built under a lock and published in one assignment; readers
take no lock.  A request then finds its rows without scanning:

* the time window is two binary searches over the sorted times, O(log n);
* each attribute (actor_id, action, resource_type, resource_id) is
  dictionary-encoded, and its positions are stored grouped by value in one
  array (CSR layout); a value's positions are ascending, so the window
  within them is two more binary searches and the page is a slice;
* with two or more filters, the filter with the fewest events in the
  window drives and the other columns are checked for each of them (the
  only cost that grows with the data: the rows it must step over);
* a cursor is one more lower bound on the position.

No step depends on the page number.  Payloads are never cached: each
request opens the payload file once and reads the bytes of every returned
event from it (``os.pread``; adjacent payloads in one read).

Freshness: what a request reads is a base snapshot plus a small delta of
the events written since (see _View).  A stat of the payload file tells
whether anything was written; if so, only the new rows are read, and a
new view is published; a thread rebuilds the base in the background once
the delta grows past DELTA_LIMIT.  An event whose ``record_event``
returned before a request started is in its results.

Limitations: events are only appended (an update or delete made by
another tool is not seen until the files are replaced); replacing the
files makes the next request rebuild the snapshot, and requests wait for
that; the snapshot holds about 90 bytes per event at a million events.
"""

import json
import json.scanner
import logging
import os
import random
import sqlite3
import threading
from array import array
from bisect import bisect_left, bisect_right
from itertools import compress, count
from operator import invert, itemgetter, ne

import audit_dataset
import audit_seed
import audit_writer
from audit_dataset import (DATA_DIR, DB_PATH, PAYLOAD_FILE, DatasetError,
                           DatasetMissingError, DatasetSchemaError,
                           PayloadError, decode_payload)
from audit_query import Query, page_response, pick_query

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

# No ORDER BY: with one, SQLite walks the created_at index over every row;
# without, it reads just the id range.  The refresh sorts the few rows.
SELECT_NEWER_SQL = (
    "SELECT id, created_at, actor_id, action, resource_type, resource_id,"
    " payload_offset, payload_len FROM audit_events WHERE id > ?")
NEWEST_ID_SQL = "SELECT max(id) FROM audit_events"
# The newest event a view holds, as the database has it now: a different
# answer means the files were replaced (even on reused inode numbers).
SENTINEL_SQL = ("SELECT id, created_at, payload_offset, payload_len"
                " FROM audit_events WHERE id = ?")

FILTER_FIELDS = ("actor_id", "action", "resource_type", "resource_id")

_HAS_PREAD = hasattr(os, "pread")
# Ranges past these get the dataset module's full check (one stat) first.
_LARGE_PAYLOAD_BYTES = audit_dataset._LARGE_PAYLOAD_BYTES
_LARGE_OFFSET_BYTES = audit_dataset._LARGE_OFFSET_BYTES
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)

# With more events than this in the delta, a thread rebuilds the base in
# the background while requests go on with base and delta (see _View).
DELTA_LIMIT = 65_536

_rng = random.Random(1337)
_lock = threading.Lock()   # serializes builds and refreshes, never reads
_snapshot = None           # the published _View; replaced, never changed
_builds = 0                # full builds so far; the tests count them
_refreshes = 0             # delta refreshes so far
_compactions = 0           # bases rebuilt in the background so far
_compactor = None          # the thread rebuilding the base, if one is
_local = threading.local()  # per-thread connection for the dirty check
_log = logging.getLogger(__name__)


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
    A page past the end is [].  Events recorded before the call started
    are included.
    """
    return _page(q)[0]


def handle_request(q=None):
    """Serve one request: ``{"query", "events", "count", "next_cursor"}``.

    ``next_cursor`` continues after the page's last event; it is None on
    the last page.  With no query, serves one from the benchmark mix via
    ``_pick_query``.
    """
    if q is None:
        q = _pick_query()
    events, has_more = _page(q)
    return page_response(q, events, has_more)


def record_event(actor_id, action, resource_type, resource_id, payload,
                 created_at=None):
    """``audit_log_service.record_event``, writing to this module's
    dataset (DB_PATH, PAYLOAD_FILE); the next request sees the event."""
    return audit_writer.append_event(
        DB_PATH, PAYLOAD_FILE, actor_id, action, resource_type,
        resource_id, payload, created_at)


def _page(q):
    """``(events, has_more)`` for ``q`` on a fresh view."""
    if not isinstance(q, Query):
        raise TypeError(f"q must be a Query, got {q!r}")
    items, has_more = _current().page(q)
    if not items:
        return [], has_more
    return _events_at(items), has_more


def _pick_query():
    # Harnesses replace this function to inject their own queries.
    return pick_query(_rng, _current().anchor)


def _current():
    """The published view, made fresh: built if needed, refreshed when the
    dataset changed.  Knowing that nothing changed costs one stat.

    Whatever view is returned was checked against the files after this
    call began, so it holds every event recorded before that.
    """
    view = _snapshot
    if (view is None or view.db_path != DB_PATH
            or view.payload_path != PAYLOAD_FILE):
        view = _rebuild()
    if _is_fresh(view):
        return view
    return _refresh(view)


def _is_fresh(view):
    """Whether ``view`` holds every event recorded before this call.

    Every write appends to the payload file before it inserts its row, so
    a clean view (its rows account for every byte) is fresh while the
    file keeps its size and inode.  A dirty one also asks SQLite.
    """
    stat = _stat_payload(view.payload_path)
    return (stat.st_size == view.payload_size
            and _identity(stat) == view.payload_identity
            and (view.clean or _newest_id(view) == view.max_id))


def _rebuild():
    """Build the view from scratch, once for all the threads waiting."""
    with _lock:
        view = _snapshot
        if (view is None or view.db_path != DB_PATH
                or view.payload_path != PAYLOAD_FILE):
            view = _build_locked()
        return view


def _build_locked():
    global _snapshot, _builds
    audit_seed.ensure_dataset(DB_PATH, PAYLOAD_FILE)
    view = _View.load(DB_PATH, PAYLOAD_FILE)
    _snapshot = view  # published whole, in one assignment
    _builds += 1
    return view


def _refresh(seen):
    """Take in what was written since ``seen`` was made."""
    global _snapshot, _refreshes, _compactor
    with _lock:
        view = _snapshot
        if view is None or view.db_path != DB_PATH \
                or view.payload_path != PAYLOAD_FILE:
            return _build_locked()
        # Another thread may have published a view meanwhile, but from
        # what it read before our check: it must pass the check too.
        if view is not seen and _is_fresh(view):
            return view
        fresh = view.refreshed()
        if fresh is None:  # the files were replaced, or shrank
            return _build_locked()
        _snapshot = fresh
        _refreshes += 1
        if len(fresh.delta_rows) > DELTA_LIMIT and _compactor is None:
            _compactor = threading.Thread(
                target=_compact, args=(fresh,), daemon=True,
                name="audit-log-compactor")
            _compactor.start()
        return fresh


def _compact(started_from):
    """Rebuild the base from the database, without the lock, and publish
    it with the events that came after it as the delta.

    Requests meanwhile go on with the old base and a growing delta.  If
    the files were replaced in the meantime, the new base is dropped.
    """
    global _snapshot, _compactions, _compactor
    try:
        fresh = _View.load(started_from.db_path, started_from.payload_path)
        with _lock:
            view = _snapshot
            if (view is not None and view.base is started_from.base
                    and fresh.payload_identity == view.payload_identity
                    and fresh.db_identity == view.db_identity):
                _snapshot = view.rebased(fresh.base)
                _compactions += 1
    except Exception:  # the next refresh over the limit tries again
        _log.exception("rebuilding the audit log snapshot failed")
    finally:
        with _lock:
            _compactor = None


def _newest_id(view):
    """The largest id in the database, on a connection this thread keeps
    for the view's base snapshot; None when the database file is not the
    one the view was built from (replaced after the payload file, as an
    import does), so that the view is refreshed and then rebuilt."""
    try:
        stat = os.stat(view.db_path)
    except FileNotFoundError as exc:
        raise DatasetMissingError(
            f"audit database not found: {view.db_path}") from exc
    if _identity(stat) != view.db_identity:
        return None
    if getattr(_local, "base", None) is not view.base:
        _local.conn = audit_dataset.connect_readonly(view.db_path)
        _local.base = view.base
    try:
        return _local.conn.execute(NEWEST_ID_SQL).fetchone()[0] or 0
    except sqlite3.DatabaseError as exc:
        _local.base = None
        raise audit_dataset.read_error(exc, view.db_path) from exc


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

    ``keys[p]`` is ``~created_at`` (that is -created_at - 1, which cannot
    overflow 64 bits) of the event at position p, so that ``keys``
    ascends and ``bisect`` finds a window's bounds.
    """

    __slots__ = ("db_path", "payload_path", "anchor", "size", "keys", "ids",
                 "offsets", "lengths", "attributes", "max_id", "accounted",
                 "columns", "newest")

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
                raise audit_dataset.read_error(exc, db_path) from exc
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
            self.keys = array("q", map(invert, created))
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
        self.max_id = max(self.ids) if self.size else 0
        self.accounted = sum(self.lengths)
        self.newest = None  # (id, created_at, offset, length), largest id
        if self.size:
            p = self.ids.index(self.max_id)
            self.newest = (self.max_id, ~self.keys[p], self.offsets[p],
                           self.lengths[p])
        # What building an event needs, in the order of its keys.
        self.columns = (self.keys, self.ids) + tuple(
            part for attribute in self.attributes.values()
            for part in (attribute.codes, attribute.values))

    def page_positions(self, q):
        """Positions of the page's events, in result order."""
        found = self.candidates(q, q.offset + q.page_size)
        if found is None:
            return ()
        seq, first, end = found
        start = first + q.offset
        return seq[start:min(start + q.page_size, end)]

    def position_after(self, created_at, event_id):
        """The first position strictly after the event (created_at, id)
        in created_at DESC, id DESC order, O(log n)."""
        lo = bisect_left(self.keys, ~created_at)
        hi = bisect_right(self.keys, ~created_at, lo)
        ids = self.ids
        while lo < hi:  # ids descend within one second
            mid = (lo + hi) // 2
            if ids[mid] < event_id:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def candidates(self, q, need):
        """The positions matching ``q``'s window, cursor and filters, in
        result order, as ``(seq, first, end)``: they are
        ``seq[first:end]``.  None when nothing matches.

        Without filters ``seq`` is ``range(size)``; with one, that value's
        postings.  With several, the matches are collected into a list
        and the walk stops once it holds ``need`` + 1 of them.
        """
        keys = self.keys
        lo = bisect_left(keys, ~q.to_ts)
        hi = bisect_right(keys, ~q.from_ts, lo)
        after = q.after
        if after is not None:
            lo = max(lo, self.position_after(*after))
        if lo >= hi:
            return None
        # (length, first, end, attribute, code): the window in each list.
        lists = []
        for name in FILTER_FIELDS:
            value = getattr(q, name)
            if value is None:
                continue
            attribute = self.attributes[name]
            code = attribute.lookup(value)
            if code is None:
                return None
            postings = attribute.postings
            first = bisect_left(postings, lo, attribute.starts[code],
                                attribute.starts[code + 1])
            end = bisect_left(postings, hi, first,
                              attribute.starts[code + 1])
            if first == end:
                return None
            lists.append((end - first, first, end, attribute, code))

        if not lists:
            return range(self.size), lo, hi
        if len(lists) == 1:
            _, first, end, attribute, _ = lists[0]
            return attribute.postings, first, end

        # Several filters: walk the shortest list, keep positions whose
        # other attributes match, in chunks that double until there are
        # enough.  Costs at most O(length of the shortest list in the
        # window): the rows it must step over.
        lists.sort(key=itemgetter(0))
        _, first, end, attribute, _ = lists[0]
        checks = [(other.codes.__getitem__, code.__eq__)
                  for _, _, _, other, code in lists[1:]]
        matches = []
        chunk = max(2 * need, 256)
        while first < end and len(matches) <= need:
            part = attribute.postings[first:min(first + chunk, end)]
            for code_at, is_wanted in checks:
                part = list(compress(part, map(is_wanted, map(code_at,
                                                              part))))
            matches.extend(part)
            first += chunk
            chunk *= 2
        if not matches:
            return None
        return matches, 0, len(matches)


class _View:
    """What a request reads: a large base snapshot and a small delta of
    the events written since, both immutable, plus what it takes to tell
    whether the dataset changed.  Published whole; never modified.

    A refresh reads only the rows with an id above ``max_id`` and rebuilds
    the delta from them and the delta's own rows: O(k log k + d) for k new
    events and d in the delta; past DELTA_LIMIT a thread rebuilds the base
    in the background.  ``clean`` says the rows account for every byte of the
    payload file as it was before they were read, so an unchanged size
    means nothing new; a dirty view (a write in flight, an unreferenced
    line left by a crash) also asks SQLite for its largest id.
    """

    __slots__ = ("db_path", "payload_path", "anchor", "base", "delta",
                 "delta_rows", "max_id", "accounted", "payload_size",
                 "payload_identity", "db_identity", "clean", "sentinel")

    def __init__(self, base, delta, delta_rows, max_id, accounted,
                 payload_size, payload_identity, db_identity):
        self.db_path = base.db_path
        self.payload_path = base.payload_path
        self.anchor = base.anchor
        self.base = base
        self.delta = delta
        self.delta_rows = delta_rows
        self.max_id = max_id
        self.accounted = accounted
        self.payload_size = payload_size
        self.payload_identity = payload_identity
        self.db_identity = db_identity
        self.clean = accounted == payload_size
        # The row of the largest id the view holds, to recognise the
        # database on the next refresh.
        self.sentinel = (delta.newest if delta is not None
                         and delta.max_id > base.max_id else base.newest)

    def rebased(self, base):
        """This view on a newer base: the delta keeps only the events the
        base does not hold.  Its payload size is unknown (-1), so the next
        request refreshes and measures it again."""
        rows = [row for row in self.delta_rows if row[0] > base.max_id]
        delta = (Snapshot(self.db_path, self.payload_path, self.anchor, rows)
                 if rows else None)
        return _View(base, delta, rows, max(self.max_id, base.max_id),
                     base.accounted + sum(map(itemgetter(7), rows)),
                     -1, self.payload_identity, self.db_identity)

    @classmethod
    def load(cls, db_path, payload_path):
        stat = _stat_payload(payload_path)  # before the rows are read
        db_identity = _db_identity(db_path)
        base = Snapshot.load(db_path, payload_path)
        return cls(base, None, [], base.max_id, base.accounted,
                   stat.st_size, _identity(stat), db_identity)

    def refreshed(self):
        """A view with the rows written since this one; None when the
        dataset was replaced or shrank."""
        stat = _stat_payload(self.payload_path)
        if (_identity(stat) != self.payload_identity
                or stat.st_size < self.payload_size
                or _db_identity(self.db_path) != self.db_identity):
            return None
        conn = audit_dataset.connect_readonly(self.db_path)
        try:
            if self.sentinel is not None and conn.execute(
                    SENTINEL_SQL, self.sentinel[:1]).fetchone() != \
                    self.sentinel:
                return None  # not the database the view was built from
            rows = conn.execute(SELECT_NEWER_SQL, (self.max_id,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise audit_dataset.read_error(exc, self.db_path) from exc
        finally:
            conn.close()
        if not rows:
            return _View(self.base, self.delta, self.delta_rows,
                         self.max_id, self.accounted, stat.st_size,
                         self.payload_identity, self.db_identity)
        # The old rows are one sorted run; timsort merges the new ones in.
        delta_rows = sorted(self.delta_rows + rows, key=_row_order)
        delta = Snapshot(self.db_path, self.payload_path, self.anchor,
                         delta_rows)
        return _View(self.base, delta, delta_rows,
                     max(self.max_id, delta.max_id),
                     self.accounted + sum(map(itemgetter(7), rows)),
                     stat.st_size, self.payload_identity, self.db_identity)

    def page(self, q):
        """``(items, has_more)``: the page as (snapshot, position) pairs
        in result order, and whether events follow it."""
        offset, size = q.offset, q.page_size
        need = offset + size
        found = self.base.candidates(q, need)
        extra = (self.delta.candidates(q, need)
                 if self.delta is not None else None)
        if extra is None:
            if found is None:
                return [], False
            seq, first, end = found
            start = first + offset
            stop = min(start + size, end)
            base = self.base
            return [(base, p) for p in seq[start:stop]], stop < end
        if found is None:
            found, extra = extra, None
            seq, first, end = found
            start = first + offset
            stop = min(start + size, end)
            delta = self.delta
            return [(delta, p) for p in seq[start:stop]], stop < end
        return _merged_page(self.base, found, self.delta, extra, offset,
                            size)


def _identity(stat):
    """Which file a stat describes: a replaced file has another inode."""
    return stat.st_ino, stat.st_dev


def _db_identity(db_path):
    try:
        return _identity(os.stat(db_path))
    except FileNotFoundError as exc:
        raise DatasetMissingError(
            f"audit database not found: {db_path}") from exc


def _row_order(row):
    return -row[1], -row[0]


def _stat_payload(path):
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        raise DatasetMissingError(f"payload file not found: {path}") from exc


def _merged_page(a_snap, a, b_snap, b, offset, size):
    """The page at ``offset`` of two sorted candidate sequences merged.

    A binary search finds how many of the first ``offset`` merged events
    come from ``b`` (the kth element of two sorted arrays), O(log n); the
    page is then merged forward.  Ids are unique, so keys never tie.
    """
    a_seq, a_first, a_end = a
    b_seq, b_first, b_end = b
    a_len, b_len = a_end - a_first, b_end - b_first
    a_keys, a_ids = a_snap.keys, a_snap.ids
    b_keys, b_ids = b_snap.keys, b_snap.ids

    def a_key(i):
        p = a_seq[a_first + i]
        return a_keys[p], -a_ids[p]

    def b_key(i):
        p = b_seq[b_first + i]
        return b_keys[p], -b_ids[p]

    if offset >= a_len + b_len:
        return [], False
    # Smallest c (events taken from b) with a[offset - c - 1] < b[c].
    lo, hi = max(0, offset - a_len), min(offset, b_len)
    while lo < hi:
        c = (lo + hi) // 2
        if a_key(offset - c - 1) < b_key(c):
            hi = c
        else:
            lo = c + 1
    i, j = offset - lo, lo
    items = []
    while len(items) < size and (i < a_len or j < b_len):
        if j >= b_len or (i < a_len and a_key(i) < b_key(j)):
            items.append((a_snap, a_seq[a_first + i]))
            i += 1
        else:
            items.append((b_snap, b_seq[b_first + j]))
            j += 1
    return items, i < a_len or j < b_len


def _events_at(items):
    """Build the event dicts of ``(snapshot, position)`` pairs, reading
    every payload from the file, opened once."""
    path = items[0][0].payload_path
    wanted = [(snap.offsets[p], snap.lengths[p], snap.ids[p])
              for snap, p in items]
    raws = _read_payloads(path, wanted)
    events = []
    append = events.append
    for (snap, p), (offset, length, event_id), raw in zip(items, wanted,
                                                          raws):
        (keys, _, actor_codes, actors, action_codes, actions, type_codes,
         types, rid_codes, rids) = snap.columns
        payload = _decode(raw, length)
        if payload is _BAD:
            payload = decode_payload(raw, event_id, offset, length, path)
        append({
            "id": event_id,
            "created_at": ~keys[p],
            "actor_id": actors[actor_codes[p]],
            "action": actions[action_codes[p]],
            "resource_type": types[type_codes[p]],
            "resource_id": rids[rid_codes[p]],
            "payload": payload,
        })
    return events


_BAD = object()
_JSON_SPACE = " \t\n\r"  # the only white space JSON allows around a value
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
    if end != len(text) and text[end:].strip(_JSON_SPACE):
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
        offsets = [offset for offset, _, _ in wanted]
        ends = {offset + length for offset, length, _ in wanted}
        if ends.isdisjoint(offsets):  # no payload starts where one ends
            return [read_at(length, offset) for offset, length, _ in wanted]

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
