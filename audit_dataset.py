"""The audit log dataset on disk: where it lives, its schema, its errors.

A dataset is two files in one directory: ``audit.db``, an SQLite database
with the table ``audit_events``, and ``payloads.jsonl``, one JSON object a
line, which the rows locate by ``payload_offset`` and ``payload_len`` (the
newline included).  Both query modules share this module, so they resolve
the same paths, raise the same exceptions and decode payloads the same way.

Seeding is atomic: the files are written in a private directory and moved
into place under an exclusive lock; a marker file records the short moment
between the two moves so that the next run can undo an interrupted one.
A dataset that already exists is never modified, except by
``append_event``, which adds one event at a time: the payload line first
(flushed to disk), then the row, under an exclusive lock on
``DIR/.write.lock`` (``fcntl.flock`` across processes, plus a thread lock
within one).  A crash between the two steps leaves at most a payload line
no row points at, which no query returns.  Limitation: on Windows there
is no ``fcntl``, so writes are serialized within one process only.
"""

import errno
import json
import os
import random
import reprlib
import shutil
import sqlite3
import sys
import threading
import time
import urllib.parse

from audit_query import _check_int, _check_text

try:
    import fcntl
except ImportError:  # Windows: seeding is then guarded within one process
    fcntl = None

__all__ = [
    "DATA_DIR", "DB_PATH", "PAYLOAD_FILE", "DEFAULT_DATA_DIR",
    "DEFAULT_ROWS", "DEFAULT_SEED", "ACTIONS", "RESOURCE_TYPES",
    "DatasetError", "DatasetMissingError", "DatasetSchemaError",
    "PayloadError", "resolve_paths", "ensure_dataset", "seed_dataset",
    "connect_readonly", "check_schema", "read_anchor", "decode_payload",
    "append_event", "integer_affinity",
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

DEFAULT_ROWS = 50_000
DEFAULT_SEED = 1337
SPAN_SECONDS = 30 * 86400
ACTIONS = ("LOGIN", "LOGOUT", "UPDATE", "DELETE", "CREATE", "EXPORT")
RESOURCE_TYPES = ("ORDER", "USER", "PRODUCT", "INVOICE", "WAREHOUSE")
N_ACTORS = 2000
N_RESOURCE_IDS = 50_000

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

SEED_LOCK_NAME = ".seed.lock"
WRITE_LOCK_NAME = ".write.lock"
SEED_MARKER_NAME = ".seed.moving"
SEED_TMP_PREFIX = ".seed-tmp-"


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


def check_schema(conn, db_path):
    """Raise DatasetSchemaError unless ``audit_events`` has every column."""
    try:
        info = conn.execute("PRAGMA table_info(audit_events)").fetchall()
    except sqlite3.OperationalError as exc:
        # Busy past the timeout, or unreadable: not a schema problem.
        raise DatasetError(f"cannot read {db_path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise DatasetSchemaError(
            f"{db_path} is not a readable SQLite database: {exc}") from exc
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
        raise DatasetSchemaError(
            f"{db_path} is not a readable SQLite database: {exc}") from exc
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


# ---------------------------------------------------------------- writing

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
    with _write_lock, _FileLock(os.path.join(os.path.dirname(db_path),
                                             WRITE_LOCK_NAME)):
        if created_at is None:
            created_at = int(time.time())
        conn = _connect_readwrite(db_path)
        try:
            check_schema(conn, db_path)
            offset = _append_line(payload_path, line)
            _crash_point("between_append_and_insert",
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


class _FileLock:
    """An exclusive ``flock`` on an existing directory's lock file."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatasetError(f"cannot open the write lock {self.path}:"
                               f" {exc}") from exc
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the flock


def _connect_readwrite(db_path):
    # mode=rw: a database deleted since the check is an error, never a
    # new empty file.
    uri = "file:" + urllib.parse.quote(db_path) + "?mode=rw"
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
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


# ---------------------------------------------------------------- seeding

def ensure_dataset(db_path, payload_path, rows=DEFAULT_ROWS,
                   seed=DEFAULT_SEED, progress=True):
    """Make sure both files exist, seeding when neither does.

    Raises DatasetMissingError naming the missing file when only one
    exists, or naming the directory when a non-default one does not exist.
    """
    data_dir = os.path.dirname(db_path)
    marker = os.path.join(data_dir, SEED_MARKER_NAME)
    has_db = os.path.isfile(db_path)
    has_payloads = os.path.isfile(payload_path)
    if has_db and has_payloads and not os.path.exists(marker):
        return False
    if os.path.dirname(payload_path) != data_dir:
        _raise_one_missing(db_path, payload_path)
    # One file without the other and no interrupted seed to undo: refuse
    # before taking the seed lock, whose file would be a file created.
    # Files are looked at again after the marker, so that a seed that
    # finished in between is not taken for a broken dataset.
    if (has_db or has_payloads) and not os.path.exists(marker):
        if os.path.isfile(db_path) != os.path.isfile(payload_path):
            _raise_one_missing(db_path, payload_path)
        if os.path.isfile(db_path) and not os.path.exists(marker):
            return False
    if not os.path.isdir(data_dir):
        if data_dir != DEFAULT_DATA_DIR:
            raise DatasetMissingError(
                f"audit data directory not found: {data_dir}")
        os.makedirs(data_dir, exist_ok=True)
    with _SeedLock(data_dir):
        _recover_interrupted_seed(data_dir)
        has_db = os.path.isfile(db_path)
        has_payloads = os.path.isfile(payload_path)
        if has_db and has_payloads:
            return False
        if has_db or has_payloads:
            _raise_one_missing(db_path, payload_path)
        _seed_locked(data_dir, rows, seed, int(time.time()), progress)
        return True


def seed_dataset(data_dir, rows=DEFAULT_ROWS, seed=DEFAULT_SEED,
                 anchor=None, progress=True, span_seconds=SPAN_SECONDS):
    """Generate a dataset in ``data_dir`` (created if needed), atomically.

    Events spread over the ``span_seconds`` before ``anchor`` (default:
    now); a short span makes many events share a second.  Refuses with
    FileExistsError when either file is already there.
    """
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    anchor = int(time.time()) if anchor is None else anchor
    with _SeedLock(data_dir):
        _recover_interrupted_seed(data_dir)
        for name in (DB_NAME, PAYLOAD_NAME):
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                raise FileExistsError(
                    errno.EEXIST, "dataset file already exists", path)
        _seed_locked(data_dir, rows, seed, anchor, progress, span_seconds)


def _raise_one_missing(db_path, payload_path):
    missing = db_path if not os.path.isfile(db_path) else payload_path
    raise DatasetMissingError(
        f"audit dataset is incomplete: {missing} is missing"
        " (the other file exists; seeding only happens when neither does)")


class _SeedLock:
    """An exclusive lock on ``DIR/.seed.lock``, across processes."""

    def __init__(self, data_dir):
        self.path = os.path.join(data_dir, SEED_LOCK_NAME)
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the flock


def _recover_interrupted_seed(data_dir):
    """Undo what a killed seeding left; call with the seed lock held."""
    marker = os.path.join(data_dir, SEED_MARKER_NAME)
    if os.path.exists(marker):
        # Killed between the two moves: the payload file moved first, so a
        # database in place means the dataset is whole; otherwise the lone
        # payload file is ours to remove.
        if not os.path.exists(os.path.join(data_dir, DB_NAME)):
            _remove_if_present(os.path.join(data_dir, PAYLOAD_NAME))
        os.remove(marker)
        _fsync_dir(data_dir)
    for name in os.listdir(data_dir):
        if name.startswith(SEED_TMP_PREFIX):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)


def _seed_locked(data_dir, rows, seed, anchor, progress,
                 span_seconds=SPAN_SECONDS):
    tmp_dir = os.path.join(data_dir, f"{SEED_TMP_PREFIX}{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.mkdir(tmp_dir)
    try:
        tmp_db = os.path.join(tmp_dir, DB_NAME)
        tmp_payloads = os.path.join(tmp_dir, PAYLOAD_NAME)
        write_generated(tmp_db, tmp_payloads, rows, seed, anchor, progress,
                        span_seconds)
        _crash_point("before_move")
        marker = os.path.join(data_dir, SEED_MARKER_NAME)
        with open(marker, "w"):
            pass
        _fsync_dir(data_dir)
        os.replace(tmp_payloads, os.path.join(data_dir, PAYLOAD_NAME))
        _crash_point("between_moves")
        os.replace(tmp_db, os.path.join(data_dir, DB_NAME))
        _fsync_dir(data_dir)
        _crash_point("after_moves")
        os.remove(marker)
        _fsync_dir(data_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _crash_point(name, variable="AUDIT_LOG_SEED_CRASH_AT"):
    # Test hook: the fault tests kill seeding (or, with
    # AUDIT_LOG_WRITE_CRASH_AT, a write) at named points with SIGKILL.
    if os.environ.get(variable) == name:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path):
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def generate_events(rows, seed, anchor, span_seconds=SPAN_SECONDS):
    """Yield ``(created_at, actor_id, action, resource_type, resource_id,
    payload_bytes)`` for ``rows`` events, deterministic for seed and anchor.

    ``created_at`` is uniform over the ``span_seconds`` (30 days) up to
    ``anchor``.
    """
    rng = random.Random(seed)
    randrange = rng.randrange
    getrandbits = rng.getrandbits
    choice = rng.choice
    alphabet = "abcdefghijklmnopqrstuvwxyz     "
    note_pool = "".join(rng.choice(alphabet) for _ in range(4096))
    tag_words = [f"tag-{i}" for i in range(64)]
    field_names = [f"field_{i:02d}" for i in range(20)]
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for _ in range(rows):
        created_at = anchor - randrange(span_seconds)
        actor_id = randrange(N_ACTORS) + 1
        action = choice(ACTIONS)
        resource_type = choice(RESOURCE_TYPES)
        resource_id = f"{resource_type}-{randrange(N_RESOURCE_IDS) + 1}"
        note_len = 256 + randrange(769)
        note_at = randrange(len(note_pool) - note_len)
        bits = getrandbits(32)
        payload = {
            "diff": {name: [getrandbits(20), getrandbits(20)]
                     for name in field_names},
            "meta": {"ip": f"10.{bits >> 24}.{(bits >> 16) & 255}"
                           f".{(bits >> 8) & 255}"},
            "tags": rng.sample(tag_words, 10),
            "note": note_pool[note_at:note_at + note_len],
        }
        yield (created_at, actor_id, action, resource_type, resource_id,
               (dumps(payload) + "\n").encode("utf-8"))


def write_generated(db_path, payload_path, rows, seed, anchor, progress,
                    span_seconds=SPAN_SECONDS):
    """Write a generated dataset to two new files (not atomic by itself)."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(SCHEMA_SQL)
        batch = []
        offset = 0
        step = max(rows // 10, 1)
        with open(payload_path, "wb") as out:
            for i, event in enumerate(
                    generate_events(rows, seed, anchor, span_seconds), 1):
                raw = event[5]
                out.write(raw)
                batch.append((i,) + event[:5] + (offset, len(raw)))
                offset += len(raw)
                if len(batch) == 10_000:
                    conn.executemany(INSERT_SQL, batch)
                    batch.clear()
                if progress and (i % step == 0 or i == rows):
                    print(f"seeding: {i:,}/{rows:,} events",
                          file=sys.stderr, flush=True)
            conn.executemany(INSERT_SQL, batch)
            out.flush()
            os.fsync(out.fileno())
        conn.execute(INDEX_SQL)
        conn.execute(
            "INSERT INTO dataset_info (anchor, seed, rows, source)"
            " VALUES (?, ?, ?, 'generated')", (anchor, seed, rows))
        conn.commit()
        conn.execute("PRAGMA synchronous=FULL")
    finally:
        conn.close()
    fd = os.open(db_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
