"""Import real audit logs into a dataset: CloudTrail, Kubernetes, JSON lines.

An import reads every input file, maps each record to the five attributes
a query filters on (time, actor, action, resource type, resource id) and
writes a dataset with exactly the schema ``audit_dataset`` seeds, so both
query modules serve it unchanged.  The payload line of an event is the
whole original record, re-encoded as compact UTF-8 JSON: a query returns a
payload equal to the source record.

Ids follow time order, then input order (a stable sort on the time), so
events of the same second keep their order in the files.  Times are ISO
8601 (``Z``, ``+hh:mm``, fractions up to nine digits, a space for ``T``)
or Unix seconds, stored as Unix seconds rounded down.

A build is atomic.  It happens in a private directory inside the target
directory, under the same lock seeding takes, and is moved into place with
seeding's marker protocol, so an error or a crash leaves either the
dataset that was there or the new one, never a half-built one.  An append
copies the dataset, adds to the copy and swaps it in.

Actors: ``actor_id`` is an INTEGER column, and SQLite stores text that
looks like a number as a number.  An actor written as a canonical decimal
integer (``"1000"``) is therefore stored, and must be queried, as the int
1000; any other text is kept as text, exactly; text that SQLite would
rewrite in some other way (``"007"``, ``"1e3"``) is refused, naming it.

Limitations: the whole input is parsed in memory before it is written;
records are not deduplicated (CloudTrail may deliver an event twice); a
running enhanced module keeps serving the snapshot it took before an
import, so restart it after one.
"""

import codecs
import collections
import gzip
import json
import math
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import zlib
from datetime import date, datetime
from operator import itemgetter

import audit_dataset
import audit_log_service
import audit_seed
import audit_writer
import enhanced_audit_log_service
from audit_query import INT64_MAX, INT64_MIN, Query

__all__ = [
    "FORMATS", "FIELD_NAMES", "AuditImportError", "ImportResult",
    "parse_time", "parse_query_time", "parse_field_spec", "read_records",
    "import_files", "detect_format", "add_commands", "real_log_checks",
]

FORMATS = ("cloudtrail", "k8s", "jsonl")
MODES = ("create", "replace", "append")
# The attributes a --field mapping may set, in the order of the columns.
FIELD_NAMES = ("time", "actor", "action", "resource_type", "resource_id")
FIELD_ALIASES = {"created_at": "time", "actor_id": "actor"}
K8S_API_VERSIONS = ("audit.k8s.io/v1", "audit.k8s.io/v1beta1")
K8S_TIME_FIELDS = ("stageTimestamp", "requestReceivedTimestamp",
                   "timestamp")
CLOUDTRAIL_ACTOR_FIELDS = ("arn", "userName", "principalId", "invokedBy",
                           "accountId")
MAX_FRACTION_DIGITS = 9
IMPORT_TMP_PREFIX = ".import-tmp-"
INSERT_BATCH = 10_000

# The Microsoft 365 unified audit log as exported to JSON lines: its times
# carry no zone, and the service writes them in UTC.
M365_FIELDS = {"time": "CreationTime", "actor": "UserId",
               "action": "Operation", "resource_type": "Workload",
               "resource_id": "ObjectId"}

_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]"
    r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?")
_UNIX_TIME_RE = re.compile(r"-?[0-9]+")
_CANONICAL_INT_RE = re.compile(r"-?[1-9][0-9]*|0")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MISSING = object()


class AuditImportError(audit_dataset.DatasetError, ValueError):
    """An input cannot be imported, or an import or query request is wrong.

    The message names the file, the line or record, the field and the
    value at fault.
    """


ImportResult = collections.namedtuple(
    "ImportResult", "data_dir format events total files")
ImportResult.__doc__ = """What an import did.

``events`` is the number of events imported, ``total`` the number the
dataset holds afterwards, ``files`` a tuple of ``(path, events)``.
"""


# ---------------------------------------------------------------- times

def parse_time(text, assume_utc=False):
    """Unix seconds (UTC) of an ISO 8601 date and time, rounded down.

    Accepts ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` followed by ``Z``,
    ``+hh:mm``, ``+hhmm`` or ``+hh`` (or ``-``); a space may stand for the
    ``T`` and the fraction has 1 to 9 digits.  A time without a zone is
    refused unless ``assume_utc``, which reads it as UTC.  The result is
    the second the instant falls in.  Raises AuditImportError (a
    ValueError) naming the value and the rule it breaks.
    """
    if not isinstance(text, str):
        raise AuditImportError(
            f"time must be an ISO 8601 string, got {text!r}")
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise AuditImportError(
            f"time {text!r} is not an ISO 8601 date and time"
            " (expected e.g. 2023-07-10T11:54:39Z)")
    (year, month, day, hour, minute, second, fraction, zulu, sign,
     offset_h, offset_m) = match.groups()
    if fraction is not None and len(fraction) > MAX_FRACTION_DIGITS:
        raise AuditImportError(
            f"time {text!r} has a fraction of {len(fraction)} digits;"
            f" at most {MAX_FRACTION_DIGITS} are supported")
    if zulu is None and sign is None and not assume_utc:
        raise AuditImportError(
            f"time {text!r} has no time zone (add Z or an offset such as"
            " +00:00; an import reads it as UTC with --assume-utc)")
    try:
        moment = datetime(int(year), int(month), int(day), int(hour),
                          int(minute), int(second or 0))
    except ValueError as exc:
        raise AuditImportError(
            f"time {text!r} is out of range: {exc}") from exc
    offset_s = 0
    if sign is not None:
        hours, minutes = int(offset_h), int(offset_m or 0)
        if hours > 23 or minutes > 59:
            raise AuditImportError(
                f"time {text!r} has a zone offset out of range"
                " (at most 23:59)")
        offset_s = (hours * 3600 + minutes * 60) * (-1 if sign == "-"
                                                    else 1)
    # The fraction never changes the second: it only adds to it.
    days = moment.toordinal() - _EPOCH_ORDINAL
    return (days * 86400 + moment.hour * 3600 + moment.minute * 60
            + moment.second - offset_s)


def parse_query_time(text):
    """A command-line time: Unix seconds (digits) or ISO 8601 with a zone.

    Raises AuditImportError naming the value.
    """
    if _UNIX_TIME_RE.fullmatch(text):
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX:
            raise AuditImportError(
                f"time {text!r} does not fit in a signed 64-bit integer")
        return value
    return parse_time(text)


def _time_value(value, assume_utc):
    """Unix seconds from an ISO 8601 string or a JSON number of seconds."""
    if isinstance(value, str):
        return parse_time(value, assume_utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise AuditImportError(f"time {value!r} is not a finite number")
        seconds = math.floor(value)
        if not INT64_MIN <= seconds <= INT64_MAX:
            raise AuditImportError(
                f"time {value!r} does not fit in a signed 64-bit integer")
        return seconds
    raise AuditImportError(
        f"time must be an ISO 8601 string or Unix seconds, got {value!r}")


# ---------------------------------------------------------------- reading

def read_records(path, fmt):
    """Yield ``(where, record)`` for every record of one file, in order.

    ``where`` locates the record for messages: ``line 3`` in JSON lines,
    ``record 5`` in a CloudTrail delivery file (``{"Records": [...]}``),
    ``line 2, record 4`` for such a document on one line of several.
    Gzip files are read whatever their name.  Blank lines are skipped.
    Raises AuditImportError naming the file, the line and the problem.
    """
    text = _read_text(path)
    if fmt == "cloudtrail":
        yield from _cloudtrail_records(path, text)
        return
    for where, record in _json_lines(path, text):
        yield where, _require_object(path, where, record)


def _read_text(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise AuditImportError(
            f"{path}: cannot read: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise AuditImportError(
                f"{path}: not a readable gzip file: {exc}") from exc
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise AuditImportError(
            f"{path}: line {line}: not UTF-8 at byte offset {exc.start}"
            f" ({exc.reason})") from exc


def _json_lines(path, text):
    # Split on "\n" only: str.splitlines would also split at U+2028,
    # which JSON allows unescaped inside strings.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except ValueError as exc:
            raise AuditImportError(
                f"{path}: line {number}: invalid JSON: {exc}") from exc


def _cloudtrail_records(path, text):
    """Records of a delivery file, or of JSON lines of records."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return
    try:
        document = json.loads(text)
    except ValueError as exc:
        document_error = exc
        document = _MISSING
    if isinstance(document, dict) and "Records" in document:
        yield from _delivery_records(path, "", document)
        return
    if document is not _MISSING and len(lines) > 1:
        # One record spread over several lines.
        yield "record 1", _require_object(path, "record 1", document)
        return
    if document is _MISSING and len(lines) > 1:
        try:
            json.loads(lines[0])
        except ValueError:
            # Not JSON lines either: the document's own error has the
            # right line and column.
            raise AuditImportError(
                f"{path}: invalid JSON: {document_error}"
            ) from document_error
    for where, record in _json_lines(path, text):
        if isinstance(record, dict) and "Records" in record:
            yield from _delivery_records(path, where + ", ", record)
        else:
            yield where, _require_object(path, where, record)


def _delivery_records(path, prefix, document):
    records = document["Records"]
    if not isinstance(records, list):
        raise AuditImportError(
            f"{path}: {prefix}field Records: expected a list of records,"
            f" got {_short(records)}")
    for number, record in enumerate(records, 1):
        where = f"{prefix}record {number}"
        yield where, _require_object(path, where, record)


def _require_object(path, where, record):
    if not isinstance(record, dict):
        raise AuditImportError(
            f"{path}: {where}: expected a JSON object, got {_short(record)}")
    return record


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- mapping

def parse_field_spec(spec):
    """``"actor=user.name"`` -> ``("actor", "user.name")``.

    NAME is one of time, actor, action, resource_type, resource_id (or
    created_at, actor_id); the path is keys joined by dots, a number
    indexing a list.  Raises AuditImportError naming the spec.
    """
    name, sep, path = spec.partition("=")
    name = FIELD_ALIASES.get(name.strip(), name.strip())
    path = path.strip()
    if (not sep or name not in FIELD_NAMES or not path
            or "" in path.split(".")):
        raise AuditImportError(
            f"--field {spec!r}: expected NAME=DOTTED.PATH with NAME one of "
            + ", ".join(FIELD_NAMES))
    return name, path


def _check_fields(fmt, fields):
    """Normalise a mapping of field overrides; jsonl needs a time."""
    if fmt not in FORMATS:
        raise AuditImportError(
            f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checked = {}
    for name, path in dict(fields or {}).items():
        name, path = parse_field_spec(f"{name}={path}")
        checked[name] = path
    if fmt == "jsonl" and "time" not in checked:
        raise AuditImportError(
            "format jsonl needs --field time=PATH (and usually actor,"
            " action, resource_type and resource_id)")
    return checked


def _lookup(record, path):
    """The value at a dotted path in ``record``, or _MISSING."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and _UNIX_TIME_RE.fullmatch(part):
            index = int(part)
            value = value[index] if 0 <= index < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return value
    return value


def _cloudtrail_sources(record):
    """(label, value) for each attribute of a CloudTrail record."""
    identity = record.get("userIdentity")
    actor = ("userIdentity", _MISSING)
    if isinstance(identity, dict):
        for key in CLOUDTRAIL_ACTOR_FIELDS:
            if identity.get(key) not in (None, ""):
                actor = (f"userIdentity.{key}", identity[key])
                break
    source = record.get("eventSource", _MISSING)
    resource_type = ("eventSource", source)
    resource_id = ("resources", "")
    resources = record.get("resources")
    if isinstance(resources, list):
        entries = [(i, e) for i, e in enumerate(resources)
                   if isinstance(e, dict)]
        if entries:
            # The first entry with a type, else the first entry.
            i, entry = next(((i, e) for i, e in entries if e.get("type")),
                            entries[0])
            if entry.get("type"):
                resource_type = (f"resources.{i}.type", entry["type"])
            for key in ("ARN", "ARNPrefix"):
                if entry.get(key) not in (None, ""):
                    resource_id = (f"resources.{i}.{key}", entry[key])
                    break
    return (("eventTime", record.get("eventTime", _MISSING)), actor,
            ("eventName", record.get("eventName", _MISSING)),
            resource_type, resource_id)


def _k8s_sources(record):
    """(label, value) for each attribute of a Kubernetes audit event."""
    version = record.get("apiVersion")
    if version not in K8S_API_VERSIONS:
        raise AuditImportError(
            f"field apiVersion: expected {' or '.join(K8S_API_VERSIONS)},"
            f" got {_short(version)}")
    if record.get("kind", "Event") != "Event":
        raise AuditImportError(
            f"field kind: expected 'Event', got {_short(record['kind'])}")
    time = ("stageTimestamp", _MISSING)
    for key in K8S_TIME_FIELDS:
        if record.get(key) is not None:
            time = (key, record[key])
            break
    user = record.get("user")
    actor = ("user.username", user.get("username", _MISSING)
             if isinstance(user, dict) else _MISSING)
    ref = record.get("objectRef")
    if isinstance(ref, dict):
        resource = _text("objectRef.resource", ref.get("resource"))
        if ref.get("subresource"):
            resource += "/" + _text("objectRef.subresource",
                                    ref["subresource"])
        namespace = _text("objectRef.namespace", ref.get("namespace"))
        name = _text("objectRef.name", ref.get("name"))
        if namespace:
            name = f"{namespace}/{name}"
        resource_type = ("objectRef.resource", resource)
        resource_id = ("objectRef.name", name)
    else:
        # A non-resource request (/healthz, /apis): its URI is the id.
        resource_type = ("objectRef", "")
        resource_id = ("requestURI", record.get("requestURI", ""))
    return (time, actor, ("verb", record.get("verb", _MISSING)),
            resource_type, resource_id)


def _jsonl_sources(record):
    return (("time", _MISSING), ("actor", ""), ("action", ""),
            ("resource_type", ""), ("resource_id", ""))


_SOURCES = {"cloudtrail": _cloudtrail_sources, "k8s": _k8s_sources,
            "jsonl": _jsonl_sources}


class _Mapper:
    """Maps records of one format to column values, for one import.

    ``found`` collects the --field names whose path matched a record.
    """

    def __init__(self, fmt, fields, assume_utc):
        self.sources = _SOURCES[fmt]
        self.fields = fields
        self.assume_utc = assume_utc
        self.found = set()
        # Asks SQLite itself what its INTEGER affinity does to a text.
        self.probe = sqlite3.connect(":memory:")
        self.probe.execute("CREATE TABLE probe (actor_id INTEGER)")
        self.stored = {}  # text -> what SQLite stores for it

    def close(self):
        self.probe.close()

    def map(self, record):
        """``(created_at, actor, action, resource_type, resource_id)``."""
        sources = list(self.sources(record))
        for i, name in enumerate(FIELD_NAMES):
            path = self.fields.get(name)
            if path is not None:
                value = _lookup(record, path)
                if value is not _MISSING:
                    self.found.add(name)
                sources[i] = (path, value)
        label, value = sources[0]
        if value is _MISSING or value is None:
            raise AuditImportError(
                f"field {label}: missing; every event needs a time")
        try:
            created_at = _time_value(value, self.assume_utc)
        except AuditImportError as exc:
            raise AuditImportError(f"field {label}: {exc}") from exc
        return ((created_at, self._actor(*sources[1]))
                + tuple(_text(*source) for source in sources[2:]))

    def _actor(self, label, value):
        if value is _MISSING or value is None:
            return ""
        if type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return value
        if not isinstance(value, str):
            value = _text(label, value)
        if _CANONICAL_INT_RE.fullmatch(value):
            number = int(value)
            if INT64_MIN <= number <= INT64_MAX:
                return number
        stored = self.stored.get(value, _MISSING)
        if stored is _MISSING:
            stored = self.stored[value] = audit_writer.integer_affinity(
                value, self.probe)
        if type(stored) is not str:
            raise AuditImportError(
                f"field {label}: actor {value!r} would be stored as"
                f" {stored!r}: the INTEGER column actor_id turns text"
                " that reads as a number into that number, so this"
                " actor could not be matched exactly")
        return value


def _text(label, value):
    """A text column's value: strings as they are, scalars as JSON."""
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        raise AuditImportError(
            f"field {label}: expected text or a number, got"
            f" {_short(value)}")
    return json.dumps(value)


def _payload_bytes(record):
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") has no UTF-8 form; escaped, it
        # still decodes to the same record.
        return (json.dumps(record, separators=(",", ":")) + "\n").encode(
            "ascii")


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
    fields = _check_fields(fmt, fields)
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
        with audit_seed.SeedLock(data_dir):
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
        mapper = _Mapper(self.fmt, self.fields, self.assume_utc)
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
        _fsync_file(self.db_path)

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
        if set(os.listdir(data_dir)) <= {audit_seed.SEED_LOCK_NAME}:
            shutil.rmtree(data_dir)
    except OSError:
        pass


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    saved = module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE
    module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = paths
    try:
        events = module.query_events(q)
    finally:
        module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = saved
    lines = [json.dumps(event, ensure_ascii=False) + "\n"
             for event in events]
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write("".join(lines))
    else:
        sys.stdout.flush()
        out.write("".join(lines).encode("utf-8"))
        out.flush()
    return 0


def query_actor(text):
    """A command-line actor: canonical digits are the int, else the text.

    Import stores an actor written as a canonical integer as that
    integer, so ``--actor 1000`` finds it whether the log wrote 1000 or
    "1000".
    """
    if text is not None and _CANONICAL_INT_RE.fullmatch(text):
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return text


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


# ---------------------------------------------------------------- checks

def detect_format(path):
    """Which import reads ``path``: ``(format, options, reason)``.

    ``format`` is None when no format recognises the file, and ``reason``
    then says why; ``options`` are import_files keyword arguments.  Looks
    at the whole document (a CloudTrail delivery file) or its first line:
    a Kubernetes audit event, a CloudTrail record, or a Microsoft 365
    audit record (imported as jsonl with M365_FIELDS, in UTC).
    """
    try:
        text = _read_text(path)
    except AuditImportError as exc:
        return None, {}, str(exc)
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None, {}, "empty file"
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(
            document.get("Records"), list):
        return "cloudtrail", {}, ""
    try:
        first = json.loads(lines[0])
    except ValueError:
        return None, {}, f"not JSON (first line: {_short(lines[0], 40)})"
    if not isinstance(first, dict):
        return None, {}, f"first line is not a JSON object: {_short(first)}"
    if first.get("apiVersion") in K8S_API_VERSIONS:
        return "k8s", {}, ""
    if "eventTime" in first and "eventSource" in first:
        return "cloudtrail", {}, ""
    if all(path in first for path in M365_FIELDS.values()):
        return "jsonl", {"fields": dict(M365_FIELDS),
                         "assume_utc": True}, ""
    return None, {}, ("JSON, but not a CloudTrail, Kubernetes audit or"
                      " Microsoft 365 record (keys: "
                      + ", ".join(sorted(first)[:8]) + ")")


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

    saved = [(m, m.DATA_DIR, m.DB_PATH, m.PAYLOAD_FILE)
             for m in IMPLEMENTATIONS.values()]
    paths_now = audit_dataset.resolve_paths(data_dir)
    try:
        for module in IMPLEMENTATIONS.values():
            module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = paths_now
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
    finally:
        for module, data, db, payload in saved:
            module.DATA_DIR, module.DB_PATH, module.PAYLOAD_FILE = (
                data, db, payload)
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
    mapper = _Mapper(fmt, _check_fields(fmt, options.get("fields")),
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
                                 f" {_short(a)} != source {_short(b)}")
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
