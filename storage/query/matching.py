"""C-FIND matching keys (PS3.4 C.2.2.2), parsed once and evaluated two ways.

A key's value decides its kind: empty is universal (no condition), ``*`` or
``?`` make a wildcard, ``a-b`` on a DA/TM/DT is a range, backslashes on a UI
are a list of UIDs, anything else is single value matching. storage/query.py
turns a Condition into SQL for the indexed attributes; ``matches`` below
evaluates the same Condition in Python against values read from a stored
header, for the attributes the index does not hold. Both sides compare the
DICOM string forms, which is what makes DA/TM/DT ranges plain comparisons
once the upper bound is padded to the end of the unit it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dicomnode.errors import QueryError

SINGLE, WILDCARD, RANGE, LIST = "single", "wildcard", "range", "list"
DATE_VRS = ("DA", "TM", "DT")
# Upper bounds are padded with these, so "-1000" includes 10:00:59 and "-2024" all of 2024.
_UPPER_PAD = {"DA": "99999999", "TM": "999999.999999", "DT": "99999999999999.999999"}
_STRIP = {"DA": ".", "TM": ":"}  # old ACR-NEMA forms 2024.01.31 and 10:30:00


@dataclass(frozen=True)
class Condition:
    keyword: str
    vr: str
    kind: str
    values: tuple[str, ...]  # single/wildcard: (v,); range: (low, high) with '' open; list: the values
    fold: bool = False  # case-insensitive (PN, by configuration)

    def bounds(self) -> tuple[str, str]:
        """A range's (low, padded high), '' where open."""
        low, high = self.values
        return low, (pad_upper(self.vr, high) if high else "")


def pad_upper(vr: str, value: str) -> str:
    pad = _UPPER_PAD.get(vr, "")
    return value + pad[len(value):] if len(value) < len(pad) else value


def normalise(vr: str, value: str) -> str:
    value = value.strip()
    strip = _STRIP.get(vr)
    return value.replace(strip, "") if strip else value


def parse(keyword: str, vr: str, value: str | list[str], fold_pn: bool = True) -> Condition | None:
    """The condition a key's value asks for, or None for universal matching."""
    if isinstance(value, list):
        values = [v.strip() for v in value if v.strip()]
        if not values:
            return None
        if len(values) > 1:
            return Condition(keyword, vr, LIST, tuple(values))
        value = values[0]
    value = value.strip() if vr != "PN" else value.strip(" ")
    if value in ("", "*"):
        return None
    fold = fold_pn and vr == "PN"
    if vr in DATE_VRS and "-" in value and not (vr == "DT" and _is_dt_offset(value)):
        low, _, high = value.partition("-")
        low, high = normalise(vr, low), normalise(vr, high)
        if not low and not high:
            return None
        for bound in (low, high):
            if bound and not re.fullmatch(r"[0-9.+]+", bound):
                raise QueryError(f"{keyword}: {value!r} is not a {vr} range")
        return Condition(keyword, vr, RANGE, (low, high))
    if vr in DATE_VRS:
        value = normalise(vr, value)
        if not re.fullmatch(r"[0-9.+\-*?]+", value):  # "garbage" would silently match nothing
            raise QueryError(f"{keyword}: {value!r} is not a {vr} value")
    if vr != "UI" and ("*" in value or "?" in value):
        return Condition(keyword, vr, WILDCARD, (value,), fold)
    if vr == "UI" and ("*" in value or "?" in value):
        raise QueryError(f"{keyword}: wildcards are not allowed in UIDs (only a list or a single UID)")
    return Condition(keyword, vr, SINGLE, (value,), fold)


def _is_dt_offset(value: str) -> bool:
    """A DT with a negative UTC offset (20240131103000-0500) is one value, not a range."""
    head, _, tail = value.rpartition("-")
    return len(head) >= 10 and len(tail) == 4 and tail.isdigit() and "-" not in head


def fold(text: str) -> str:
    """Case folding shared by the SQL side (a registered function on SQLite) and Python."""
    return text.casefold()


@lru_cache(maxsize=1024)
def wildcard_regex(pattern: str, folded: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if folded else 0))


def matches(cond: Condition, value: str | list[str] | None) -> bool:
    """Whether a stored value (or any of its values) satisfies the condition.

    An absent or empty value matches nothing but universal matching, as in
    the SQL form (NULL compares false).
    """
    if value is None:
        return False
    values = value if isinstance(value, list) else [value]
    return any(_matches_one(cond, v) for v in values if v != "")


def _matches_one(cond: Condition, v: str) -> bool:
    if cond.kind == SINGLE:
        return fold(v) == fold(cond.values[0]) if cond.fold else v == cond.values[0]
    if cond.kind == LIST:
        return v in cond.values
    if cond.kind == WILDCARD:
        return wildcard_regex(cond.values[0], cond.fold).fullmatch(v) is not None
    low, high = cond.bounds()
    v = normalise(cond.vr, v)
    return (not low or v >= low) and (not high or v <= high)
