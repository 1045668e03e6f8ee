"""Reading audit log files: times, the three formats, and their mapping.

The import (``audit_import``) reads every record through this module: a
file becomes ``(where, record)`` pairs (``read_records``), and a record
becomes the five attributes a query filters on, time, actor, action,
resource type and resource id (``Mapper``).  CloudTrail and Kubernetes
audit records have a built-in mapping that ``--field NAME=PATH`` can
override; plain JSON lines need at least the time.  Every error is an
AuditImportError naming the file, the line or record, the field and the
value.

Times are ISO 8601 (``Z``, ``+hh:mm``, fractions up to nine digits, a
space for ``T``) or Unix seconds, and become Unix seconds rounded down.

Actors: ``actor_id`` is an INTEGER column, and SQLite stores text that
looks like a number as a number.  An actor written as a canonical decimal
integer (``"1000"``) is therefore stored, and must be queried, as the int
1000; any other text is kept as text, exactly; text that SQLite would
rewrite in some other way (``"007"``, ``"1e3"``) is refused, naming it.
"""

import codecs
import gzip
import json
import math
import re
import sqlite3
import zlib
from datetime import date, datetime

import audit_dataset
from audit_query import INT64_MAX, INT64_MIN
from audit_writer import integer_affinity

__all__ = [
    "FORMATS", "FIELD_NAMES", "M365_FIELDS", "AuditImportError",
    "parse_time", "parse_query_time", "query_actor", "read_records",
    "detect_format", "parse_field_spec", "check_fields", "Mapper",
    "short_repr",
]

FORMATS = ("cloudtrail", "k8s", "jsonl")
# The attributes a --field mapping may set, in the order of the columns.
FIELD_NAMES = ("time", "actor", "action", "resource_type", "resource_id")
FIELD_ALIASES = {"created_at": "time", "actor_id": "actor"}
K8S_API_VERSIONS = ("audit.k8s.io/v1", "audit.k8s.io/v1beta1")
K8S_TIME_FIELDS = ("stageTimestamp", "requestReceivedTimestamp",
                   "timestamp")
CLOUDTRAIL_ACTOR_FIELDS = ("arn", "userName", "principalId", "invokedBy",
                           "accountId")
MAX_FRACTION_DIGITS = 9

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
            yield f"line {number}", _loads(line)
        except ValueError as exc:
            raise AuditImportError(
                f"{path}: line {number}: invalid JSON: {exc}") from exc


def _cloudtrail_records(path, text):
    """Records of a delivery file, or of JSON lines of records."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return
    try:
        document = _loads(text)
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
            _loads(lines[0])
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
            f" got {short_repr(records)}")
    for number, record in enumerate(records, 1):
        where = f"{prefix}record {number}"
        yield where, _require_object(path, where, record)


def _require_object(path, where, record):
    if not isinstance(record, dict):
        raise AuditImportError(
            f"{path}: {where}: expected a JSON object, got"
            f" {short_repr(record)}")
    return record


def short_repr(value, limit=80):
    """``repr(value)``, cut to ``limit`` characters with "..." for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        document = _loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(
            document.get("Records"), list):
        return "cloudtrail", {}, ""
    try:
        first = _loads(lines[0])
    except ValueError:
        return None, {}, f"not JSON (first line: {short_repr(lines[0], 40)})"
    if not isinstance(first, dict):
        return None, {}, ("first line is not a JSON object:"
                          f" {short_repr(first)}")
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


def check_fields(fmt, fields):
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
            f" got {short_repr(version)}")
    if record.get("kind", "Event") != "Event":
        raise AuditImportError(
            f"field kind: expected 'Event', got {short_repr(record['kind'])}")
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


class Mapper:
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
        value = _text(label, value)
        if _CANONICAL_INT_RE.fullmatch(value):
            number = int(value)
            if INT64_MIN <= number <= INT64_MAX:
                return number
        stored = self.stored.get(value, _MISSING)
        if stored is _MISSING:
            stored = self.stored[value] = integer_affinity(
                value, self.probe)
        if type(stored) is not str:
            raise AuditImportError(
                f"field {label}: actor {value!r} would be stored as"
                f" {stored!r}: the INTEGER column actor_id turns text"
                " that reads as a number into that number, so this"
                " actor could not be matched exactly")
        return value


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (only Python's json accepts it)")


def _finite_float(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a float: it would be"
                         " written back as Infinity, which is not JSON")
    return value


def _loads(text):
    """json.loads, refusing NaN and Infinity, also as a number too large
    to hold: strict JSON only, so that every payload a query prints is
    JSON again."""
    return json.loads(text, parse_constant=_no_constant,
                      parse_float=_finite_float)


def _utf8_text(label, value):
    """``value`` if it has a UTF-8 form; a lone surrogate has none."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditImportError(
            f"field {label}: {short_repr(value)} holds a lone surrogate,"
            " which no column can store") from None
    return value


def _text(label, value):
    """A text column's value: strings as they are, scalars as JSON."""
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return _utf8_text(label, value)
    if isinstance(value, (dict, list)):
        raise AuditImportError(
            f"field {label}: expected text or a number, got"
            f" {short_repr(value)}")
    return json.dumps(value)
