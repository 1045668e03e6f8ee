"""Baseline audit log queries: plain SQL, the reference for semantics.

Each request opens a new read-only SQLite connection, selects one page
with ``ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?`` and opens,
reads and closes the payload file once per returned event.  A query with
a cursor adds ``(created_at, id) < (cursor's)`` to the WHERE clause and
reads from offset 0; one row past the page tells whether a next page
exists.  It is slow at
depth on purpose of simplicity, never by sabotage: the enhanced module must
return exactly what this one returns.
"""

import random
import sqlite3
import threading

import audit_dataset
import audit_seed
import audit_writer
from audit_dataset import (DATA_DIR, DB_PATH, PAYLOAD_FILE, DatasetError,
                           DatasetMissingError, DatasetSchemaError,
                           PayloadError)
from audit_query import Query, page_response, pick_query

__all__ = [
    "Query", "init", "query_events", "handle_request", "pick_query",
    "record_event",
    "DATA_DIR", "DB_PATH", "PAYLOAD_FILE", "DatasetError",
    "DatasetMissingError", "DatasetSchemaError", "PayloadError",
]

SELECT_PAGE_SQL = (
    "SELECT id, created_at, actor_id, action, resource_type, resource_id,"
    " payload_offset, payload_len FROM audit_events"
    " WHERE created_at BETWEEN ? AND ?{filters}"
    " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?")

# Strictly after the cursor's event in created_at DESC, id DESC order.
AFTER_SQL = " AND (created_at < ? OR (created_at = ? AND id < ?))"

# A unary + strips the column's affinity, so that the text '42' does not
# equal the integer 42: filters match exactly, by type and value.
FILTER_SQL = {
    "actor_id": " AND +actor_id = ?",
    "action": " AND action = ?",
    "resource_type": " AND resource_type = ?",
    "resource_id": " AND resource_id = ?",
}

_rng = random.Random(1337)
_lock = threading.Lock()
_ready = {}  # (db_path, payload_path) -> anchor, once checked


def init():
    """Make sure the dataset exists (seeding if neither file does).

    Idempotent and thread-safe.  Raises DatasetError (naming the path) when
    a file is missing or the database lacks the table or a column.
    """
    _anchor()


def _anchor():
    key = (DB_PATH, PAYLOAD_FILE)
    anchor = _ready.get(key)
    if anchor is not None:
        return anchor
    with _lock:
        if key not in _ready:
            audit_seed.ensure_dataset(DB_PATH, PAYLOAD_FILE)
            conn = audit_dataset.connect_readonly(DB_PATH)
            try:
                audit_dataset.check_schema(conn, DB_PATH)
                audit_dataset.check_column_types(conn, DB_PATH)
                _ready[key] = audit_dataset.read_anchor(conn)
            except sqlite3.DatabaseError as exc:
                raise audit_dataset.read_error(exc, DB_PATH) from exc
            finally:
                conn.close()
        return _ready[key]


def query_events(q):
    """Return one page of events for ``q`` as a list of dicts.

    Each event has the keys id, created_at, actor_id, action,
    resource_type, resource_id and payload (the decoded JSON), in that
    order, sorted created_at DESC, id DESC.  A page past the end is [].
    """
    if not isinstance(q, Query):
        raise TypeError(f"q must be a Query, got {q!r}")
    return _page(q)[0]


def _page(q):
    """``(events, has_more)``: the page, and whether a row follows it.

    Selects ``page_size + 1`` rows; payloads are read for the page's rows
    only.
    """
    init()
    db_path, payload_path = DB_PATH, PAYLOAD_FILE
    filters, params = [], [q.from_ts, q.to_ts]
    for name, sql in FILTER_SQL.items():
        value = getattr(q, name)
        if value is not None:
            filters.append(sql)
            params.append(value)
    after = q.after
    if after is not None:
        filters.append(AFTER_SQL)
        params += [after[0], after[0], after[1]]
    params += [q.page_size + 1, q.offset]
    sql = SELECT_PAGE_SQL.format(filters="".join(filters))

    conn = audit_dataset.connect_readonly(db_path)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise audit_dataset.read_error(exc, db_path) from exc
    finally:
        conn.close()

    has_more = len(rows) > q.page_size
    del rows[q.page_size:]
    events = []
    for (event_id, created_at, actor_id, action, resource_type,
         resource_id, offset, length) in rows:
        audit_dataset.check_payload_range(event_id, offset, length,
                                          payload_path)
        try:
            with open(payload_path, "rb") as f:
                f.seek(offset)
                raw = f.read(length)
        except FileNotFoundError as exc:
            raise DatasetMissingError(
                f"payload file not found: {payload_path}") from exc
        events.append({
            "id": event_id,
            "created_at": created_at,
            "actor_id": actor_id,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "payload": audit_dataset.decode_payload(
                raw, event_id, offset, length, payload_path),
        })
    return events, has_more


def handle_request(q=None):
    """Serve one request: ``{"query", "events", "count", "next_cursor"}``.

    ``next_cursor`` continues strictly after the page's last event (also
    when the page was chosen by number); it is None when no event follows.
    With no query, serves one from the benchmark mix via ``_pick_query``.
    """
    if q is None:
        q = _pick_query()
    if not isinstance(q, Query):
        raise TypeError(f"q must be a Query, got {q!r}")
    events, has_more = _page(q)
    return page_response(q, events, has_more)


def record_event(actor_id, action, resource_type, resource_id, payload,
                 created_at=None):
    """Record one event in this module's dataset and return its new id.

    The payload line is appended and flushed to disk before the row is
    inserted, under a lock that serializes writers across threads and
    processes.  ``created_at`` defaults to now; an older value is allowed.
    Raises TypeError or ValueError naming the field and the value, and
    DatasetError subclasses naming the path (nothing is created when a
    file is missing).  See ``audit_writer.append_event``.
    """
    return audit_writer.append_event(
        DB_PATH, PAYLOAD_FILE, actor_id, action, resource_type,
        resource_id, payload, created_at)


def _pick_query():
    # Harnesses replace this function to inject their own queries.
    return pick_query(_rng, _anchor())
