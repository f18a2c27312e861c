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
from datetime import date

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
            if bound and not valid_date_time(vr, bound):
                raise QueryError(f"{keyword}: {value!r} is not a {vr} range ({_FORMS[vr]})")
        return Condition(keyword, vr, RANGE, (low, high))
    if vr in DATE_VRS:
        value = normalise(vr, value)
        wild = "*" in value or "?" in value
        if (wild and not re.fullmatch(r"[0-9.+\-*?]+", value)) or (not wild and not valid_date_time(vr, value)):
            # "garbage" or 20201301 would silently match nothing: the peer is told instead
            raise QueryError(f"{keyword}: {value!r} is not a {vr} value ({_FORMS[vr]})")
    if vr != "UI" and ("*" in value or "?" in value):
        return Condition(keyword, vr, WILDCARD, (value,), fold)
    if vr == "UI" and ("*" in value or "?" in value):
        raise QueryError(f"{keyword}: wildcards are not allowed in UIDs (only a list or a single UID)")
    return Condition(keyword, vr, SINGLE, (value,), fold)


_FORMS = {"DA": "YYYYMMDD", "TM": "HH[MM[SS[.FFFFFF]]]", "DT": "YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][+/-ZZZZ]"}
_TM = re.compile(r"(\d\d)(?:(\d\d)(?:(\d\d)(?:\.\d{1,6})?)?)?")
_DT = re.compile(r"(\d{4})(?:(\d\d)(?:(\d\d)(?:(\d\d)(?:(\d\d)(?:(\d\d)(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")


def valid_date_time(vr: str, value: str) -> bool:
    """A DA, TM or DT value as PS3.5 6.2 defines it (TM and DT may stop after any component)."""
    if vr == "DA":
        return len(value) == 8 and value.isdigit() and _valid_date(int(value[:4]), int(value[4:6]), int(value[6:]))
    if vr == "TM":
        tm = _TM.fullmatch(value)
        return tm is not None and _valid_time(*tm.groups())
    m = _DT.fullmatch(value)
    if not m:
        return False
    _year, month, day, hour, minute, second, _zone = m.groups()
    return (month is None or 1 <= int(month) <= 12) and \
        (day is None or _valid_date(int(value[:4]), int(month), int(day))) and _valid_time(hour, minute, second)


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _valid_time(hour: str | None, minute: str | None, second: str | None) -> bool:
    return ((hour is None or int(hour) <= 23) and (minute is None or int(minute) <= 59)
            and (second is None or int(second) <= 60))


def _is_dt_offset(value: str) -> bool:
    """A DT with a negative UTC offset (20240131103000-0500) is one value, not a range."""
    head, _, tail = value.rpartition("-")
    return len(head) >= 10 and len(tail) == 4 and tail.isdigit() and "-" not in head


def fold(text: str) -> str:
    """Case folding shared by the SQL side (a registered function on SQLite) and Python."""
    return text.casefold()


def glob_match(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern` whole, `*` any run and `?` any one character.

    One pass with a single remembered star: at most len(pattern) x len(text)
    steps whatever the pattern. A regular expression of the same pattern
    backtracks: '*a*a*a*a*a*a*a*aQ' against 60 a's took 38 s, in the
    association's thread, holding the interpreter for every other peer.
    """
    p = t = 0
    star, resume = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]):
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif star >= 0:
            p, resume = star + 1, resume + 1
            t = resume
        else:
            return False
    return all(ch == "*" for ch in pattern[p:])


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
        pattern = cond.values[0]
        return glob_match(fold(pattern), fold(v)) if cond.fold else glob_match(pattern, v)
    low, high = cond.bounds()
    v = normalise(cond.vr, v)
    return (not low or v >= low) and (not high or v <= high)
