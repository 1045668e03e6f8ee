"""The query both audit log modules answer, and the benchmark query mixes.

``Query`` is defined once, here; ``audit_log_service`` and
``enhanced_audit_log_service`` re-export it.  It validates every field at
construction, so the query functions can trust what they are given.
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple, Union

__all__ = ["Query", "pick_query", "pick_realistic_query", "DataProfile",
           "MAX_PAGE_SIZE", "MAX_OFFSET"]

MAX_PAGE_SIZE = 1000
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
# Deepest row a page may start at: SQLite's OFFSET is a signed 64-bit int.
MAX_OFFSET = INT64_MAX

WEEK_SECONDS = 7 * 86400


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
                f" {self.page_size!r} starts past row 2**63")

    @property
    def offset(self):
        """Rows before this page in the full, ordered result."""
        return (self.page - 1) * self.page_size

    def as_dict(self):
        return dataclasses.asdict(self)


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
