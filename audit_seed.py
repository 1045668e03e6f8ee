"""Generated datasets: seeding one atomically, and the events it holds.

``ensure_dataset`` seeds when neither file exists (the query modules call
it on their first request); ``seed_dataset`` seeds a given directory.
Seeding is atomic: the files are written in a private directory and moved
into place under an exclusive lock on ``DIR/.seed.lock``; a marker file
records the short moment between the two moves so that the next run can
undo an interrupted one.  ``audit_import`` builds its datasets under the
same lock and with the same marker protocol.  A dataset that already
exists is never modified.

The events are deterministic for a seed and an anchor time: uniform over
the 30 days before the anchor, with payloads of about 1 KB.
"""

import errno
import json
import os
import random
import shutil
import sqlite3
import sys
import time

from audit_dataset import (DB_NAME, DEFAULT_DATA_DIR, INDEX_SQL,
                           INSERT_SQL, PAYLOAD_NAME, SCHEMA_SQL,
                           DatasetMissingError, FileLock, crash_point)


__all__ = [
    "DEFAULT_ROWS", "DEFAULT_SEED", "ACTIONS", "RESOURCE_TYPES",
    "ensure_dataset", "seed_dataset", "generate_events", "write_generated",
    "SeedLock", "recover_interrupted_seed", "fsync_dir", "fsync_file",
    "remove_if_present",
]

DEFAULT_ROWS = 50_000
DEFAULT_SEED = 1337
SPAN_SECONDS = 30 * 86400
ACTIONS = ("LOGIN", "LOGOUT", "UPDATE", "DELETE", "CREATE", "EXPORT")
RESOURCE_TYPES = ("ORDER", "USER", "PRODUCT", "INVOICE", "WAREHOUSE")
N_ACTORS = 2000
N_RESOURCE_IDS = 50_000

SEED_LOCK_NAME = ".seed.lock"
SEED_MARKER_NAME = ".seed.moving"
SEED_TMP_PREFIX = ".seed-tmp-"
_CRASH_AT = "AUDIT_LOG_SEED_CRASH_AT"


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
    with SeedLock(data_dir):
        recover_interrupted_seed(data_dir)
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
    with SeedLock(data_dir):
        recover_interrupted_seed(data_dir)
        for name in (DB_NAME, PAYLOAD_NAME):
            path = os.path.join(data_dir, name)
            if os.path.exists(path):
                raise FileExistsError(
                    errno.EEXIST, "dataset file already exists", path)
        _seed_locked(data_dir, rows, seed, anchor, progress, span_seconds)


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
    fsync_file(db_path)


def SeedLock(data_dir):
    """The exclusive lock on ``DIR/.seed.lock``, across processes."""
    return FileLock(os.path.join(data_dir, SEED_LOCK_NAME))


def recover_interrupted_seed(data_dir):
    """Undo what a killed seeding left; call with the seed lock held."""
    marker = os.path.join(data_dir, SEED_MARKER_NAME)
    if os.path.exists(marker):
        # Killed between the two moves: the payload file moved first, so a
        # database in place means the dataset is whole; otherwise the lone
        # payload file is ours to remove.
        if not os.path.exists(os.path.join(data_dir, DB_NAME)):
            remove_if_present(os.path.join(data_dir, PAYLOAD_NAME))
        os.remove(marker)
        fsync_dir(data_dir)
    for name in os.listdir(data_dir):
        if name.startswith(SEED_TMP_PREFIX):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)


def fsync_dir(path):
    """Flush a directory's entries (a rename, a new file) to disk;
    a no-op where directories cannot be opened (not POSIX)."""
    if os.name == "posix":
        fsync_file(path)


def fsync_file(path):
    """Flush a file (or, on POSIX, a directory) to disk by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_if_present(path):
    """Remove the file at ``path``; one already gone is not an error."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _raise_one_missing(db_path, payload_path):
    missing = db_path if not os.path.isfile(db_path) else payload_path
    raise DatasetMissingError(
        f"audit dataset is incomplete: {missing} is missing"
        " (the other file exists; seeding only happens when neither does)")


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
        crash_point("before_move", _CRASH_AT)
        marker = os.path.join(data_dir, SEED_MARKER_NAME)
        with open(marker, "w"):
            pass
        fsync_dir(data_dir)
        os.replace(tmp_payloads, os.path.join(data_dir, PAYLOAD_NAME))
        crash_point("between_moves", _CRASH_AT)
        os.replace(tmp_db, os.path.join(data_dir, DB_NAME))
        fsync_dir(data_dir)
        crash_point("after_moves", _CRASH_AT)
        os.remove(marker)
        fsync_dir(data_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
