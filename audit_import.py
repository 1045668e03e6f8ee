"""Import real audit logs into a dataset, and query one from the shell.

An import reads every input file (through ``audit_formats``), maps each
record to the five attributes a query filters on and writes a dataset
with exactly the schema ``audit_seed`` writes, so both query modules
serve it unchanged.  The payload line of an event is the whole original
record, re-encoded as compact UTF-8 JSON: a query returns a payload equal
to the source record.

Ids follow time order, then input order (a stable sort on the time), so
events of the same second keep their order in the files.

A build is atomic.  It happens in a private directory inside the target
directory, under the same lock seeding takes, and is moved into place with
seeding's marker protocol, so an error or a crash leaves either the
dataset that was there or the new one, never a half-built one.  An append
copies the dataset, adds to the copy and swaps it in.

``add_commands`` gives runner.py its ``import`` and ``query`` commands.

Limitations: the whole input is parsed in memory before it is written;
records are not deduplicated (CloudTrail may deliver an event twice).
A running enhanced module notices the swapped files at its next request.
"""

import collections
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from operator import itemgetter

import audit_dataset
import audit_log_service
import audit_seed
import audit_writer
import enhanced_audit_log_service
from audit_formats import (FORMATS, AuditImportError, Mapper, check_fields,
                           parse_field_spec, parse_query_time, query_actor,
                           read_records)
from audit_query import INT64_MAX, INT64_MIN, Query

__all__ = [
    "ImportResult", "IMPLEMENTATIONS", "import_files", "add_commands",
]

MODES = ("create", "replace", "append")
IMPORT_TMP_PREFIX = ".import-tmp-"
INSERT_BATCH = 10_000
# Returned by _copy_dataset when the database has no dataset_info table.
_MISSING = object()


ImportResult = collections.namedtuple(
    "ImportResult", "data_dir format events total files")
ImportResult.__doc__ = """What an import did.

``events`` is the number of events imported, ``total`` the number the
dataset holds afterwards, ``files`` a tuple of ``(path, events)``.
"""


# ---------------------------------------------------------------- building

def import_files(paths, fmt, data_dir=None, mode="create",
                 assume_utc=False, fields=None, progress=None):
    """Build a dataset in ``data_dir`` from audit log files, atomically.

    ``fmt`` is cloudtrail, k8s or jsonl; ``fields`` maps attribute names
    (see parse_field_spec) to dotted paths, overriding the format's own
    mapping (jsonl needs at least ``time``).  ``mode`` is ``create``
    (refuses an existing dataset), ``replace`` or ``append``; appended
    events get ids after the existing ones.  ``progress``, if given, is
    called with a line of text per file.  ``data_dir`` defaults as in
    audit_dataset.resolve_paths and is created if needed.

    Returns an ImportResult.  Raises AuditImportError naming the file, the
    line or record, the field and the value; the dataset directory is then
    as it was.
    """
    fields = check_fields(fmt, fields)
    if mode not in MODES:
        raise AuditImportError(
            f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise AuditImportError("no input files given")
    data_dir, db_path, payload_path = audit_dataset.resolve_paths(data_dir)
    created_dir = not os.path.isdir(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    try:
        # The writers' lock too: a record_event landing between the copy
        # of an append and its swap would be lost, and its id reused.
        with audit_seed.SeedLock(data_dir), \
                audit_writer.write_lock(data_dir):
            audit_seed.recover_interrupted_seed(data_dir)
            _remove_stale_builds(data_dir)
            existing = _existing_dataset(data_dir, db_path, payload_path,
                                         mode)
            tmp_dir = tempfile.mkdtemp(prefix=IMPORT_TMP_PREFIX,
                                       dir=data_dir)
            try:
                build = _Build(tmp_dir, fmt, fields, assume_utc, progress)
                build.parse(paths)
                build.write(db_path, payload_path,
                            existing and mode == "append")
                _move_into_place(data_dir, build, db_path, payload_path,
                                 existing, mode)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        if created_dir:
            _remove_if_only_lock(data_dir)
        raise
    return ImportResult(data_dir, fmt, len(build.events), build.total,
                        tuple(build.file_counts))


def _existing_dataset(data_dir, db_path, payload_path, mode):
    """Whether a dataset is there to replace or append to; refuse else."""
    has_db = os.path.isfile(db_path)
    has_payloads = os.path.isfile(payload_path)
    for suffix in ("-journal", "-wal"):
        if os.path.exists(db_path + suffix):
            raise AuditImportError(
                f"cannot import into {data_dir}: {db_path + suffix} exists"
                " (a writer is active or was interrupted)")
    if not (has_db or has_payloads):
        return False
    if mode == "create":
        raise AuditImportError(
            f"a dataset already exists in {data_dir}; use --replace to"
            " overwrite it or --append to add to it")
    if mode == "append" and not (has_db and has_payloads):
        missing = payload_path if has_db else db_path
        raise AuditImportError(
            f"cannot append to the dataset in {data_dir}: {missing} is"
            " missing")
    return True


class _Build:
    """One import's files, in its private directory."""

    def __init__(self, tmp_dir, fmt, fields, assume_utc, progress):
        self.fmt = fmt
        self.fields = fields
        self.assume_utc = assume_utc
        self.progress = progress
        self.scratch_path = os.path.join(tmp_dir, "scratch.jsonl")
        self.db_path = os.path.join(tmp_dir, audit_dataset.DB_NAME)
        self.payload_path = os.path.join(tmp_dir, audit_dataset.PAYLOAD_NAME)
        # (created_at, actor, action, resource_type, resource_id,
        #  scratch offset, payload length)
        self.events = []
        self.file_counts = []
        self.total = 0

    def parse(self, paths):
        """Map every record and keep its payload in the scratch file."""
        mapper = Mapper(self.fmt, self.fields, self.assume_utc)
        offset = 0
        try:
            with open(self.scratch_path, "wb") as scratch:
                for path in paths:
                    count = 0
                    for where, record in read_records(path, self.fmt):
                        try:
                            values = mapper.map(record)
                        except AuditImportError as exc:
                            raise AuditImportError(
                                f"{path}: {where}: {exc}") from exc
                        raw = _payload_bytes(record)
                        scratch.write(raw)
                        self.events.append(values + (offset, len(raw)))
                        offset += len(raw)
                        count += 1
                    self.file_counts.append((path, count))
                    if self.progress:
                        self.progress(f"import: {path}: {count:,} events")
        finally:
            mapper.close()
        unmatched = sorted(set(self.fields) - mapper.found)
        if self.events and unmatched:
            raise AuditImportError(
                "no record has the field(s) "
                + ", ".join(f"{name}={self.fields[name]}"
                            for name in unmatched)
                + f" in {', '.join(paths)}")
        # Stable: events of the same second keep their input order.
        self.events.sort(key=itemgetter(0))

    def write(self, db_path, payload_path, existing):
        """Write the database and payload file, appending to a copy of
        the existing dataset when ``existing``."""
        first_id, base_offset, info = 1, 0, None
        if existing:
            first_id, info = _copy_dataset(db_path, self.db_path)
            shutil.copyfile(payload_path, self.payload_path)
            base_offset = os.path.getsize(self.payload_path)
        conn = sqlite3.connect(self.db_path)
        try:
            if not existing:
                conn.execute("PRAGMA journal_mode=OFF")
                conn.executescript(audit_dataset.SCHEMA_SQL)
            self._write_events(conn, first_id, base_offset)
            if not existing:
                conn.execute(audit_dataset.INDEX_SQL)
            self.total = conn.execute(
                "SELECT count(*) FROM audit_events").fetchone()[0]
            newest = conn.execute(
                "SELECT max(created_at) FROM audit_events").fetchone()[0]
            self._write_info(conn, info, newest)
            conn.commit()
        finally:
            conn.close()
        audit_seed.fsync_file(self.db_path)

    def _write_events(self, conn, first_id, offset):
        batch = []
        with open(self.scratch_path, "rb") as scratch, \
                open(self.payload_path, "ab") as out:
            for event_id, event in enumerate(self.events, first_id):
                scratch.seek(event[5])
                raw = scratch.read(event[6])
                out.write(raw)
                batch.append((event_id,) + event[:5] + (offset, len(raw)))
                offset += len(raw)
                if len(batch) == INSERT_BATCH:
                    conn.executemany(audit_dataset.INSERT_SQL, batch)
                    batch.clear()
            conn.executemany(audit_dataset.INSERT_SQL, batch)
            out.flush()
            os.fsync(out.fileno())

    def _write_info(self, conn, info, newest):
        source = f"import:{self.fmt}"
        anchor = newest if newest is not None else 0
        if info is None:
            conn.execute(
                "INSERT INTO dataset_info (anchor, seed, rows, source)"
                " VALUES (?, NULL, ?, ?)", (anchor, self.total, source))
            return
        if info is _MISSING:
            return  # another tool's dataset: its anchor is max(created_at)
        old_anchor, old_source = info
        if old_anchor is not None:
            anchor = max(anchor, old_anchor)
        if old_source and source not in old_source.split("+"):
            source = f"{old_source}+{source}"
        elif old_source:
            source = old_source
        conn.execute("DELETE FROM dataset_info")
        conn.execute(
            "INSERT INTO dataset_info (anchor, seed, rows, source)"
            " VALUES (?, NULL, ?, ?)", (anchor, self.total, source))


def _copy_dataset(db_path, tmp_db):
    """Copy the database with SQLite's backup; return (next id, info).

    info is (anchor, source) from dataset_info, None when the table is
    empty, _MISSING when there is no such table.
    """
    src = audit_dataset.connect_readonly(db_path)
    try:
        audit_dataset.check_schema(src, db_path)
        dst = sqlite3.connect(tmp_db)
        try:
            src.backup(dst)
        finally:
            dst.close()
        last = src.execute("SELECT max(id) FROM audit_events").fetchone()[0]
        try:
            # AUTOINCREMENT never reuses an id, even a deleted one's.
            row = src.execute("SELECT seq FROM sqlite_sequence"
                              " WHERE name = 'audit_events'").fetchone()
            if row is not None and row[0] is not None:
                last = max(last or 0, row[0])
        except sqlite3.OperationalError:
            pass
        try:
            info = src.execute(
                "SELECT anchor, source FROM dataset_info").fetchone()
        except sqlite3.OperationalError:
            info = _MISSING
    except sqlite3.DatabaseError as exc:
        raise AuditImportError(f"cannot copy {db_path}: {exc}") from exc
    finally:
        src.close()
    return (last or 0) + 1, info


def _move_into_place(data_dir, build, db_path, payload_path, existing,
                     mode):
    if existing and mode == "append":
        # The new payload file starts with the old one, byte for byte, so
        # the old database is whole with either file: after a crash
        # between the two moves, the old dataset is still complete.
        os.replace(build.payload_path, payload_path)
        audit_seed.fsync_dir(data_dir)
        os.replace(build.db_path, db_path)
        audit_seed.fsync_dir(data_dir)
        return
    # Seeding's protocol: while the marker exists and the database does
    # not, recovery removes the lone payload file; so from here a crash
    # leaves either no dataset or the new one, never a mix of two.
    marker = os.path.join(data_dir, audit_seed.SEED_MARKER_NAME)
    with open(marker, "w"):
        pass
    audit_seed.fsync_dir(data_dir)
    if existing:
        audit_seed.remove_if_present(db_path)
        audit_seed.fsync_dir(data_dir)
    os.replace(build.payload_path, payload_path)
    os.replace(build.db_path, db_path)
    audit_seed.fsync_dir(data_dir)
    os.remove(marker)
    audit_seed.fsync_dir(data_dir)


def _remove_stale_builds(data_dir):
    # Called with the lock held: no other import is running here.
    for name in os.listdir(data_dir):
        if name.startswith(IMPORT_TMP_PREFIX):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)


def _remove_if_only_lock(data_dir):
    """Undo the creation of ``data_dir`` when a failed import made it."""
    try:
        if set(os.listdir(data_dir)) <= {audit_seed.SEED_LOCK_NAME,
                                         audit_writer.WRITE_LOCK_NAME}:
            shutil.rmtree(data_dir)
    except OSError:
        pass


def _payload_bytes(record):
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") has no UTF-8 form; escaped, it
        # still decodes to the same record.
        return (json.dumps(record, separators=(",", ":")) + "\n").encode(
            "ascii")


# ---------------------------------------------------------------- commands

IMPLEMENTATIONS = {
    "enhanced": enhanced_audit_log_service,
    "baseline": audit_log_service,
}


def add_commands(subparsers):
    """Add the ``import`` and ``query`` subcommands to runner's parser."""
    imp = subparsers.add_parser(
        "import", help="build a dataset from real audit logs",
        description="Build a dataset from CloudTrail, Kubernetes audit or"
                    " JSON-lines files, atomically.")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("--data-dir", default=None,
                     help="dataset directory (default: data/ or"
                          " $AUDIT_LOG_DATA_DIR)")
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true",
                      help="overwrite an existing dataset")
    mode.add_argument("--append", action="store_true",
                      help="add to an existing dataset")
    imp.add_argument("--assume-utc", action="store_true",
                     help="read times without a zone as UTC")
    imp.add_argument("--field", action="append", default=[],
                     metavar="NAME=PATH",
                     help="map time, actor, action, resource_type or"
                          " resource_id to a dotted path (repeatable)")
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.set_defaults(func=cmd_import)

    query = subparsers.add_parser(
        "query", help="print one page of events as JSON lines",
        description="Print one page of events, newest first, as JSON"
                    " lines.  Times are ISO 8601 with a zone or Unix"
                    " seconds; the default window is the whole log.")
    query.add_argument("--data-dir", default=None)
    query.add_argument("--from", dest="from_time", default=None,
                       metavar="T")
    query.add_argument("--to", dest="to_time", default=None, metavar="T")
    query.add_argument("--actor", default=None,
                       help="exact actor; digits match an integer actor")
    query.add_argument("--action", default=None)
    query.add_argument("--resource-type", default=None)
    query.add_argument("--resource-id", default=None)
    query.add_argument("--page", type=int, default=1)
    query.add_argument("--page-size", type=int, default=20)
    query.add_argument("--impl", choices=tuple(IMPLEMENTATIONS),
                       default="enhanced")
    query.set_defaults(func=cmd_query)


def cmd_import(args):
    fields = dict(parse_field_spec(spec) for spec in args.field)
    mode = ("replace" if args.replace else "append" if args.append
            else "create")
    result = import_files(args.files, args.format, data_dir=args.data_dir,
                          mode=mode, assume_utc=args.assume_utc,
                          fields=fields, progress=_print_progress)
    print(f"imported {result.events:,} events from {len(result.files)}"
          f" file(s) into {result.data_dir} ({result.total:,} events in"
          " the dataset)")
    return 0


def cmd_query(args):
    paths = audit_dataset.resolve_paths(args.data_dir)
    _require_dataset(*paths)
    try:
        q = Query(
            from_ts=(INT64_MIN if args.from_time is None
                     else parse_query_time(args.from_time)),
            to_ts=(INT64_MAX if args.to_time is None
                   else parse_query_time(args.to_time)),
            actor_id=query_actor(args.actor), action=args.action,
            resource_type=args.resource_type,
            resource_id=args.resource_id, page=args.page,
            page_size=args.page_size)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, AuditImportError):
            raise
        raise AuditImportError(str(exc)) from exc
    module = IMPLEMENTATIONS[args.impl]
    with audit_dataset.pointed_at([module], paths[0]):
        events = module.query_events(q)
    lines = [_json_line(event) for event in events]
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write("".join(lines))
    else:
        sys.stdout.flush()
        out.write("".join(lines).encode("utf-8"))
        out.flush()
    return 0


def _json_line(event):
    """One event as a line of JSON text that encodes to UTF-8: a payload
    holding a lone surrogate (JSON allows one, escaped) stays escaped."""
    line = json.dumps(event, ensure_ascii=False) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(event) + "\n"
    return line


def _require_dataset(data_dir, db_path, payload_path):
    # Querying never seeds: an empty folder is an error, not a new
    # generated dataset.
    has_db, has_payloads = os.path.isfile(db_path), os.path.isfile(
        payload_path)
    if not (has_db or has_payloads):
        raise audit_dataset.DatasetMissingError(
            f"no dataset in {data_dir}: import or seed one first")
    if not (has_db and has_payloads):
        missing = payload_path if has_db else db_path
        raise audit_dataset.DatasetMissingError(
            f"audit dataset is incomplete: {missing} is missing")


def _print_progress(message):
    print(message, file=sys.stderr, flush=True)
