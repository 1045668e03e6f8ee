"""The query both audit log modules answer, and the benchmark query mixes.

``Query`` is defined once, here; ``audit_log_service`` and
``enhanced_audit_log_service`` re-export it.  It validates every field at
construction, so the query functions can trust what they are given.

A cursor continues a query after one event.  It is an opaque URL-safe
string (unpadded base64url of compact JSON) that names the event by
``(created_at, id)`` and carries a short fingerprint of the query's window
and filters, so that a cursor is refused by any other query.  Page number
and page size are not in the fingerprint: they may change between pages.
The cursor is not signed; it protects against mistakes, not forgery (a
forged cursor only names another place in the same result).
"""

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
from typing import Optional, Sequence, Tuple, Union

__all__ = ["Query", "pick_query", "pick_realistic_query", "DataProfile",
           "MAX_PAGE_SIZE", "MAX_OFFSET", "make_cursor", "page_response"]

MAX_PAGE_SIZE = 1000
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
# Deepest row a page may start at: SQLite's OFFSET is a signed 64-bit int.
MAX_OFFSET = INT64_MAX

WEEK_SECONDS = 7 * 86400

CURSOR_VERSION = 1
# A cursor holds two 64-bit ints and a 16-character fingerprint; anything
# much longer is refused before it is decoded.
MAX_CURSOR_CHARS = 200
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")


def _check_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    # bool is a subclass of int, but True is no timestamp or page number.
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {value!r}"
                        f" ({type(value).__name__})")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in a signed 64-bit integer,"
                         f" got {value!r}")


def _check_str(name, value):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {value!r}"
                        f" ({type(value).__name__})")
    _check_text(name, value)


def _check_text(name, value):
    # A lone surrogate cannot be stored as UTF-8, so it matches nothing;
    # refused here, the baseline's SQLite binding cannot raise
    # UnicodeEncodeError while the snapshot answers [].
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} must be valid Unicode text (no lone"
                             f" surrogates), got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class Query:
    """One page of events: ``from_ts <= created_at <= to_ts``, newest first.

    Times are Unix seconds (UTC), both ends inclusive.  Filters match
    exactly and case-sensitively; None means no filter.  ``page`` counts
    from 1 and ``page_size`` is 1 to 1000.  Raises TypeError for a value of
    the wrong type and ValueError for one out of range, naming the field.
    """

    from_ts: int
    to_ts: int
    actor_id: Optional[Union[int, str]] = None
    action: Optional[str] = None
    page: int = 1
    page_size: int = 20
    resource_type: Optional[str] = None
    resource_id: Optional[str] = None
    cursor: Optional[str] = None

    def __post_init__(self):
        _check_int("from_ts", self.from_ts)
        _check_int("to_ts", self.to_ts)
        if self.from_ts > self.to_ts:
            raise ValueError(
                f"from_ts must not be after to_ts, got from_ts="
                f"{self.from_ts!r} and to_ts={self.to_ts!r}")
        if not (self.actor_id is None or isinstance(self.actor_id, str)):
            try:
                _check_int("actor_id", self.actor_id)
            except TypeError:
                raise TypeError(
                    f"actor_id must be an int, a str or None, got"
                    f" {self.actor_id!r} ({type(self.actor_id).__name__})"
                ) from None
        _check_text("actor_id", self.actor_id)
        _check_str("action", self.action)
        _check_str("resource_type", self.resource_type)
        _check_str("resource_id", self.resource_id)
        _check_int("page_size", self.page_size)
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE},"
                             f" got {self.page_size!r}")
        _check_int("page", self.page)
        if self.page < 1:
            raise ValueError(f"page must be 1 or more, got {self.page!r}")
        if (self.page - 1) * self.page_size > MAX_OFFSET:
            raise ValueError(
                f"page is too deep: page {self.page!r} of page_size"
                f" {self.page_size!r} starts at row 2**63 or later")
        after = None
        if self.cursor is not None:
            after = _decode_cursor(self.cursor, _fingerprint(self))
        # Not a field: equality, hashing and as_dict() see the cursor text.
        object.__setattr__(self, "_after", after)

    @property
    def offset(self):
        """Rows before this page: 0 with a cursor, which ignores page."""
        if self.cursor is not None:
            return 0
        return (self.page - 1) * self.page_size

    @property
    def after(self):
        """``(created_at, id)`` of the event the cursor names, or None.

        The page holds the events strictly after it in created_at DESC,
        id DESC order: older, or as old with a smaller id.
        """
        return self._after

    def as_dict(self):
        return dataclasses.asdict(self)


def make_cursor(q, created_at, event_id):
    """The cursor that continues ``q`` after the event
    ``(created_at, event_id)``: an opaque URL-safe string.

    Raises TypeError unless ``q`` is a Query and both values are ints,
    and ValueError for a value outside the signed 64-bit range.
    """
    if not isinstance(q, Query):
        raise TypeError(f"q must be a Query, got {q!r}")
    _check_int("created_at", created_at)
    _check_int("id", event_id)
    return _encode_cursor(created_at, event_id, _fingerprint(q))


def _fingerprint(q):
    # The window and the filters, the actor with its type (the int 7 and
    # the text "7" are different actors); sha256 cut to 64 bits is ample
    # to tell one query from another by mistake.
    actor = q.actor_id
    key = [q.from_ts, q.to_ts, type(actor).__name__, actor, q.action,
           q.resource_type, q.resource_id]
    text = json.dumps(key, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _encode_cursor(created_at, event_id, fingerprint):
    text = json.dumps([CURSOR_VERSION, created_at, event_id, fingerprint],
                      separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("ascii")).decode(
        "ascii").rstrip("=")


def _decode_cursor(cursor, fingerprint):
    """``(created_at, id)`` from ``cursor``; ValueError unless it is well
    formed and was made for a query with this ``fingerprint``."""
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str or None, got {cursor!r}"
                        f" ({type(cursor).__name__})")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError(f"cursor is malformed: longer than"
                         f" {MAX_CURSOR_CHARS} characters, got"
                         f" {cursor[:40]!r}... ({len(cursor)} characters)")
    if not _CURSOR_RE.fullmatch(cursor):
        raise ValueError(f"cursor is malformed: not unpadded base64url"
                         f" text, got {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = json.loads(raw.decode("ascii"),
                            parse_constant=_refuse_constant)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"cursor is malformed: {cursor!r} does not"
                         f" decode ({exc})") from None
    if not (type(fields) is list and len(fields) == 4
            and fields[0] == CURSOR_VERSION and type(fields[0]) is int
            and type(fields[1]) is int and type(fields[2]) is int
            and type(fields[3]) is str):
        raise ValueError(f"cursor is malformed: {cursor!r} does not hold"
                         f" [version {CURSOR_VERSION}, created_at, id,"
                         f" fingerprint], got {fields!r}")
    _, created_at, event_id, found = fields
    for name, value in (("created_at", created_at), ("id", event_id)):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"cursor is malformed: its {name} {value!r}"
                             f" does not fit in a signed 64-bit integer")
    # Only the canonical spelling is accepted, so one position has one
    # cursor (no padding, spaces or leading zeros slip through).
    if _encode_cursor(created_at, event_id, found) != cursor:
        raise ValueError(f"cursor is malformed: {cursor!r} is not in the"
                         f" form make_cursor writes")
    if found != fingerprint:
        raise ValueError(f"cursor belongs to a different query (other"
                         f" window or filters): {cursor!r}")
    return created_at, event_id


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number here")


def pick_query(rng, anchor):
    """A query from the benchmark mix, drawn with ``rng``.

    The window is the 7 days up to ``anchor``; ``actor_id`` is None or 1 to
    2000 with equal chance; ``action`` is None, UPDATE, CREATE or DELETE;
    ``page`` is uniform 1 to 2000; ``page_size`` is 10, 20 or 50.  Most of
    these pages lie past the end of the window's events.
    """
    actor_id = None if rng.random() < 0.5 else rng.randint(1, 2000)
    action = rng.choice((None, "UPDATE", "CREATE", "DELETE"))
    return Query(from_ts=anchor - WEEK_SECONDS, to_ts=anchor,
                 actor_id=actor_id, action=action,
                 page=rng.randint(1, 2000),
                 page_size=rng.choice((10, 20, 50)))


@dataclasses.dataclass(frozen=True)
class DataProfile:
    """What a realistic query mix draws from: the dataset's time span and
    a sample of its events' attributes, as tuples ``(actor_id, action,
    resource_type, resource_id)``."""

    first_ts: int
    anchor: int
    samples: Sequence[Tuple[object, str, str, str]]


# Filter sets of the realistic mix: none, each attribute alone, each pair.
_ATTRIBUTES = ("actor_id", "action", "resource_type", "resource_id")
REALISTIC_FILTERS = ((),) + tuple((a,) for a in _ATTRIBUTES) + tuple(
    (a, b) for i, a in enumerate(_ATTRIBUTES) for b in _ATTRIBUTES[i + 1:])


def pick_realistic_query(rng, profile):
    """A query from the realistic mix, drawn with ``rng`` from ``profile``.

    The window lasts from one hour to 30 days (log-uniform) and ends at the
    anchor half of the time, elsewhere in the data otherwise; the filters
    are none, one attribute or a pair (values from one sampled event, so
    pairs can match); pages lean to the front (1 to 3 mostly, some deep);
    ``page_size`` is 10, 20, 50 or 100.
    """
    length = int(math.exp(rng.uniform(math.log(3600),
                                      math.log(30 * 86400))))
    if rng.random() < 0.5:
        to_ts = profile.anchor
    else:
        to_ts = rng.randint(min(profile.first_ts + length, profile.anchor),
                            profile.anchor)
    sample = dict(zip(_ATTRIBUTES, rng.choice(profile.samples)))
    filters = {name: sample[name]
               for name in rng.choice(REALISTIC_FILTERS)}
    roll = rng.random()
    if roll < 0.6:
        page = 1
    elif roll < 0.8:
        page = 2
    elif roll < 0.9:
        page = 3
    else:
        page = rng.randint(4, 200)
    return Query(from_ts=to_ts - length, to_ts=to_ts, page=page,
                 page_size=rng.choice((10, 20, 50, 100)), **filters)


def page_response(q, events, has_more):
    """The dict ``handle_request`` returns for a page of ``q``:
    ``{"query", "events", "count", "next_cursor"}``; ``next_cursor``
    continues after the last event, None when no event follows."""
    next_cursor = None
    if has_more:
        last = events[-1]
        next_cursor = make_cursor(q, last["created_at"], last["id"])
    return {"query": q.as_dict(), "events": events, "count": len(events),
            "next_cursor": next_cursor}
