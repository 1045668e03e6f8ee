"""Recording events in an existing dataset, one at a time.

``append_event`` adds one event: the payload line first (flushed to
disk), then the row, under an exclusive lock on ``DIR/.write.lock``
(``fcntl.flock`` across processes, plus a thread lock within one).  A
crash between the two steps leaves at most a payload line no row points
at, which no query returns.  Nothing is ever created: a missing file is
an error.  Limitation: on Windows there is no ``fcntl``, so writes are
serialized within one process only.
"""

import contextlib
import json
import os
import reprlib
import sqlite3
import threading
import time
import urllib.parse

import audit_dataset
from audit_dataset import (DatasetError, DatasetMissingError, check_schema,
                           crash_point)
from audit_query import _check_int, _check_text


__all__ = ["append_event", "integer_affinity"]

WRITE_LOCK_NAME = ".write.lock"

APPEND_SQL = (
    "INSERT INTO audit_events (created_at, actor_id, action,"
    " resource_type, resource_id, payload_offset, payload_len)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)")

# Serializes the writers of this process; flock on the lock file
# serializes processes (and would threads too on Linux, but not on every
# system, and not at all on Windows).
_write_lock = threading.Lock()


def append_event(db_path, payload_path, actor_id, action, resource_type,
                 resource_id, payload, created_at=None):
    """Record one event in the dataset at ``db_path`` and ``payload_path``;
    return its new id.

    ``actor_id`` is an int or a str that SQLite's INTEGER affinity keeps
    as text; action, resource_type and resource_id are str; ``payload`` is
    a dict that reads back equal from strict JSON (str keys, no NaN or
    infinity).  ``created_at`` is Unix seconds, by default the time the
    write lock is taken; an older value (a late arrival) is allowed.

    Under the write lock, the payload is appended to the payload file as
    one line of compact UTF-8 JSON and fsynced, then the row is inserted
    and committed.  Ids increase in the order of the writes.  A crash
    between the two leaves only a payload line no row points at.

    Raises TypeError or ValueError naming the field and the value (before
    touching any file); DatasetMissingError naming the path when a file
    does not exist (nothing is created, not even the lock file);
    DatasetSchemaError when the database lacks the table or a column; and
    DatasetError naming the path when a write fails.
    """
    if created_at is not None:
        _check_int("created_at", created_at)
    actor_id = _check_actor(actor_id)
    for name, value in (("action", action),
                        ("resource_type", resource_type),
                        ("resource_id", resource_id)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {value!r}"
                            f" ({type(value).__name__})")
        _check_text(name, value)
    line = _payload_line(payload)

    for path in (db_path, payload_path):
        if not os.path.isfile(path):
            raise DatasetMissingError(f"audit dataset file not found:"
                                      f" {path}")
    with write_lock(os.path.dirname(db_path)):
        if created_at is None:
            created_at = int(time.time())
        conn = _connect_readwrite(db_path)
        try:
            check_schema(conn, db_path)
            offset = _append_line(payload_path, line)
            crash_point("between_append_and_insert",
                        "AUDIT_LOG_WRITE_CRASH_AT")
            try:
                conn.execute("BEGIN IMMEDIATE")
                event_id = conn.execute(APPEND_SQL, (
                    created_at, actor_id, action, resource_type,
                    resource_id, offset, len(line))).lastrowid
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise DatasetError(f"cannot record an event in {db_path}:"
                                   f" {exc}") from exc
            return event_id
        finally:
            conn.close()


def integer_affinity(text, probe=None):
    """What an INTEGER column such as actor_id stores for ``text``.

    SQLite turns text that reads as a number into that number ("42" into
    42, "1e3" into 1000): the value comes back as an int, a float or the
    text itself.  SQLite is asked, on ``probe`` (a connection that holds
    a table ``probe (actor_id INTEGER)``) or on a new in-memory database.
    """
    conn = probe
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE probe (actor_id INTEGER)")
    try:
        conn.execute("DELETE FROM probe")
        conn.execute("INSERT INTO probe VALUES (?)", (text,))
        return conn.execute("SELECT actor_id FROM probe").fetchone()[0]
    finally:
        if probe is None:
            conn.close()


def _check_actor(actor_id):
    if isinstance(actor_id, str):
        _check_text("actor_id", actor_id)
        stored = integer_affinity(actor_id)
        if type(stored) is not str:
            raise ValueError(
                f"actor_id {actor_id!r} would be stored as {stored!r}: the"
                " INTEGER column actor_id turns text that reads as a"
                " number into that number, so this actor could not be"
                " matched exactly (pass the int instead)")
        return actor_id
    try:
        _check_int("actor_id", actor_id)
    except TypeError:
        raise TypeError(f"actor_id must be an int or a str, got"
                        f" {actor_id!r} ({type(actor_id).__name__})"
                        ) from None
    return actor_id


def _payload_line(payload):
    """The payload as one line of compact UTF-8 JSON, newline included."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {_shown(payload)}"
                        f" ({type(payload).__name__})")
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
        raw = (text + "\n").encode("utf-8")
        same = json.loads(text) == payload
    except UnicodeEncodeError:
        raise ValueError(f"payload must be valid Unicode text (no lone"
                         f" surrogates), got {_shown(payload)}") from None
    except TypeError as exc:
        raise TypeError(f"payload must hold only JSON values ({exc}),"
                        f" got {_shown(payload)}") from None
    except RecursionError:
        raise ValueError(f"payload is nested too deeply for JSON, got"
                         f" {_shown(payload)}") from None
    except ValueError as exc:
        raise ValueError(f"payload must be strict JSON ({exc}), got"
                         f" {_shown(payload)}") from None
    if not same:
        raise ValueError(f"payload would not read back equal from JSON"
                         f" (keys must be str, sequences lists), got"
                         f" {_shown(payload)}")
    return raw


def _shown(value):
    # Short, and safe for payloads nested too deeply for repr().
    return reprlib.repr(value)


@contextlib.contextmanager
def write_lock(data_dir):
    """Hold the writers' lock of ``data_dir``: the thread lock of this
    process, then ``flock`` on ``data_dir/.write.lock`` for all processes.
    ``append_event`` holds it for each write; an import holds it while it
    swaps the dataset, so that no write lands in files being replaced."""
    with _write_lock, audit_dataset.FileLock(
            os.path.join(data_dir, WRITE_LOCK_NAME)):
        yield


def _connect_readwrite(db_path):
    # mode=rw: a database deleted since the check is an error, never a
    # new empty file.
    uri = "file:" + urllib.parse.quote(db_path) + "?mode=rw"
    try:
        return sqlite3.connect(uri, uri=True,
                               timeout=audit_dataset.BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as exc:
        if not os.path.isfile(db_path):
            raise DatasetMissingError(
                f"audit database not found: {db_path}") from exc
        raise DatasetError(f"cannot open audit database {db_path} for"
                           f" writing: {exc}") from exc


def _append_line(payload_path, line):
    """Append ``line`` to the payload file, fsync it; return its offset.

    Call with the write lock held.  A file whose last line was torn (a
    crash in the middle of a write) gets a newline first, so that the
    torn bytes stay a line of their own that no row points at.
    """
    try:
        fd = os.open(payload_path,
                     os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0))
    except FileNotFoundError as exc:
        raise DatasetMissingError(
            f"payload file not found: {payload_path}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot open {payload_path} for writing:"
                           f" {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        offset = size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                line = b"\n" + line
                offset += 1
        data = memoryview(line)
        try:
            while data:  # O_APPEND: every write lands at the end
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as exc:
            raise DatasetError(f"cannot append to {payload_path} at byte"
                               f" offset {size}: {exc}") from exc
        return offset
    finally:
        os.close(fd)
