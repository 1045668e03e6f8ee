"""The audit log dataset on disk: where it lives, its schema, its errors.

A dataset is two files in one directory: ``audit.db``, an SQLite database
with the table ``audit_events``, and ``payloads.jsonl``, one JSON object a
line, which the rows locate by ``payload_offset`` and ``payload_len`` (the
newline included).  Both query modules share this module, so they resolve
the same paths, raise the same exceptions and decode payloads the same way.

This module only reads.  Making a dataset is ``audit_seed`` (generated)
and ``audit_import`` (from real logs); adding to one is ``audit_writer``.
A dataset that already exists is never modified, except by those writes.
"""

import contextlib
import json
import os
import signal
import sqlite3
import urllib.parse

try:
    import fcntl
except ImportError:  # Windows: locks then hold within one process only
    fcntl = None

__all__ = [
    "DATA_DIR", "DB_PATH", "PAYLOAD_FILE", "DEFAULT_DATA_DIR",
    "DatasetError", "DatasetMissingError", "DatasetSchemaError",
    "PayloadError", "resolve_paths", "connect_readonly", "check_schema",
    "check_column_types", "read_anchor", "decode_payload",
    "check_payload_range", "crash_point", "FileLock", "pointed_at",
]

DEFAULT_DATA_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data")
DB_NAME = "audit.db"
PAYLOAD_NAME = "payloads.jsonl"


def resolve_paths(data_dir=None):
    """Return ``(data_dir, db_path, payload_path)`` as absolute paths.

    ``data_dir`` defaults to ``$AUDIT_LOG_DATA_DIR``, else ``data/`` beside
    this module, whatever the current directory.
    """
    if data_dir is None:
        data_dir = os.environ.get("AUDIT_LOG_DATA_DIR") or DEFAULT_DATA_DIR
    data_dir = os.path.abspath(data_dir)
    return (data_dir, os.path.join(data_dir, DB_NAME),
            os.path.join(data_dir, PAYLOAD_NAME))


DATA_DIR, DB_PATH, PAYLOAD_FILE = resolve_paths()

# The columns a query needs, with the type each must hold.
COLUMNS = ("id", "created_at", "actor_id", "action", "resource_type",
           "resource_id", "payload_offset", "payload_len")

SCHEMA_SQL = """
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    actor_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    payload_offset INTEGER NOT NULL,
    payload_len INTEGER NOT NULL
);
CREATE TABLE dataset_info (
    anchor INTEGER NOT NULL,
    seed INTEGER,
    rows INTEGER NOT NULL,
    source TEXT NOT NULL
);
"""

# Built after the bulk insert, which is faster than keeping it up to date.
INDEX_SQL = ("CREATE INDEX idx_audit_events_created_at"
             " ON audit_events (created_at)")

INSERT_SQL = (
    "INSERT INTO audit_events (id, created_at, actor_id, action,"
    " resource_type, resource_id, payload_offset, payload_len)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

CHECK_TYPES_SQL = (
    "SELECT rowid, id, created_at, payload_offset, payload_len"
    " FROM audit_events WHERE typeof(id) != 'integer'"
    " OR typeof(created_at) != 'integer'"
    " OR typeof(payload_offset) != 'integer'"
    " OR typeof(payload_len) != 'integer' LIMIT 1")

# Payload ranges beyond these are checked against the file's size first.
_LARGE_PAYLOAD_BYTES = 1 << 24
_LARGE_OFFSET_BYTES = 1 << 40

# Readers wait this long for a writer's lock before giving up.
BUSY_TIMEOUT_S = 10.0

class DatasetError(Exception):
    """The dataset on disk cannot serve a query; the message names the path."""


class DatasetMissingError(DatasetError, FileNotFoundError):
    """A dataset file or directory does not exist."""


class DatasetSchemaError(DatasetError):
    """The database is not SQLite, or lacks the table or a column."""


class PayloadError(DatasetError):
    """An event's payload bytes are missing, out of range or not JSON.

    ``event_id``, ``offset`` and ``path`` say which bytes.
    """

    def __init__(self, message, event_id, offset, path):
        super().__init__(message)
        self.event_id = event_id
        self.offset = offset
        self.path = path


# ---------------------------------------------------------------- reading

def connect_readonly(db_path):
    """Open ``db_path`` read-only; never creates a file.

    Raises DatasetMissingError naming the path when it does not exist.
    """
    if not os.path.isfile(db_path):
        raise DatasetMissingError(f"audit database not found: {db_path}")
    uri = "file:" + urllib.parse.quote(db_path) + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatasetError(f"cannot open audit database {db_path}: {exc}") \
            from exc


def read_error(exc, db_path):
    """The dataset error for an sqlite3 error met reading ``db_path``.

    A lock held past the busy timeout is a DatasetError: the file is
    fine, try again later.  Anything else (not a database, a malformed
    or damaged file, text that is not UTF-8) is a DatasetSchemaError,
    whichever row a query happened to meet first.  Both modules use this,
    so they raise the same types.  Raise it ``from exc``.
    """
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in text or "busy" in text):
        return DatasetError(f"cannot read {db_path}: {exc}")
    return DatasetSchemaError(
        f"{db_path} is not a readable SQLite database: {exc}")


def check_schema(conn, db_path):
    """Raise DatasetSchemaError unless ``audit_events`` has every column."""
    try:
        info = conn.execute("PRAGMA table_info(audit_events)").fetchall()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        # A damaged schema page can hold names that are not UTF-8.
        raise read_error(exc, db_path) from exc
    if not info:
        raise DatasetSchemaError(
            f"{db_path} has no table audit_events")
    present = {row[1] for row in info}
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        raise DatasetSchemaError(
            f"{db_path}: table audit_events lacks column(s) "
            + ", ".join(missing))


def check_column_types(conn, db_path):
    """Raise DatasetSchemaError if a row's id, created_at, payload_offset
    or payload_len is not an integer (a text, real or NULL value).

    One scan of the table: a query that compared such a value would
    silently skip or misplace its event.
    """
    try:
        row = conn.execute(CHECK_TYPES_SQL).fetchone()
    except sqlite3.DatabaseError as exc:
        raise read_error(exc, db_path) from exc
    if row is not None:
        raise DatasetSchemaError(
            f"{db_path}: id, created_at, payload_offset and payload_len"
            f" must hold integers; the row with rowid {row[0]} holds"
            f" {row[1:]!r}")


def read_anchor(conn):
    """The dataset's anchor time: stored at seeding, else its newest event."""
    try:
        row = conn.execute("SELECT anchor FROM dataset_info").fetchone()
        if row is not None:
            return row[0]
    except sqlite3.OperationalError as exc:
        # Made by another tool: no dataset_info table, or not one of ours.
        # Anything else (a lock held too long) must not pick another
        # anchor silently.
        if not str(exc).startswith("no such"):
            raise
    row = conn.execute("SELECT max(created_at) FROM audit_events").fetchone()
    return row[0] if row[0] is not None else 0


def decode_payload(raw, event_id, offset, length, path):
    """Decode one payload line; raise PayloadError naming id, offset, path."""
    if len(raw) != length:
        raise PayloadError(
            f"payload of event {event_id} at offset {offset} in {path}:"
            f" expected {length} bytes, the file holds {len(raw)}",
            event_id, offset, path)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"payload of event {event_id} at offset {offset} in {path}"
            f" is not UTF-8: {exc}", event_id, offset, path) from exc
    except ValueError as exc:
        raise PayloadError(
            f"payload of event {event_id} at offset {offset} in {path}"
            f" is not valid JSON: {exc}", event_id, offset, path) from exc
    except RecursionError as exc:
        raise PayloadError(
            f"payload of event {event_id} at offset {offset} in {path}"
            f" is nested too deeply to decode", event_id, offset,
            path) from exc


def check_payload_range(event_id, offset, length, path):
    """Refuse negative offsets and lengths, and huge ones, before any read.

    A length or end past what reading could sensibly allocate or seek to
    is checked against the file's size (one stat, only in that rare case)
    and refused with PayloadError when it lies past the end: reading it
    would raise MemoryError or OSError instead of naming the event.
    """
    if offset < 0 or length < 0:
        raise PayloadError(
            f"event {event_id} has a negative payload offset or length"
            f" (offset {offset}, length {length}) in {path}",
            event_id, offset, path)
    if length > _LARGE_PAYLOAD_BYTES or offset > _LARGE_OFFSET_BYTES:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError as exc:
            raise DatasetMissingError(
                f"payload file not found: {path}") from exc
        if offset + length > size:
            raise PayloadError(
                f"payload of event {event_id} at offset {offset} in {path}:"
                f" expected {length} bytes, the file holds only {size}"
                " bytes in all", event_id, offset, path)


# ---------------------------------------------------------------- faults

def crash_point(name, variable):
    """Kill this process with SIGKILL if ``$variable`` equals ``name``.

    A test hook: the fault tests kill seeding (AUDIT_LOG_SEED_CRASH_AT)
    or a write (AUDIT_LOG_WRITE_CRASH_AT) at the points so named.
    """
    if os.environ.get(variable) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class FileLock:
    """An exclusive ``flock`` on the lock file ``path`` (created if need
    be), across processes; a no-op where there is no ``fcntl``.  A lock
    file that cannot be opened is a DatasetError naming it."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatasetError(f"cannot open the lock file {self.path}:"
                               f" {exc}") from exc
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the flock


@contextlib.contextmanager
def pointed_at(modules, data_dir):
    """Point each query module's DATA_DIR, DB_PATH and PAYLOAD_FILE at the
    dataset in ``data_dir`` for a block, then back; yields the paths."""
    paths = resolve_paths(data_dir)
    saved = [(m, m.DATA_DIR, m.DB_PATH, m.PAYLOAD_FILE) for m in modules]
    try:
        for module in modules:
            module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = paths
        yield paths
    finally:
        for module, *old in saved:
            module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = old
