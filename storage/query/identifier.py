"""Query identifiers in, matching data sets out: C-FIND and QIDO-RS both (the SQL side is sql.py).

An identifier's elements become matching keys; every requested key gets a
value in each response: from the index, from the hierarchy (counts,
ModalitiesInStudy), or from the stored header of the row's first instance,
sequences included. Responses are written in the requester's character set
when it can carry the values, else in UTF-8 (ISO_IR 192).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from dicomnode.errors import QueryError
from dicomnode.storage.archive.header import nesting_depth, read_stored_header
from dicomnode.storage.query.matching import Condition, matches, parse
from dicomnode.storage.query.sql import Query, build_query, split_aggregate

log = logging.getLogger("dicomnode.find")

QUERY_LEVEL = 0x00080052
CHARSET = 0x00080005
RETRIEVE_AET = 0x00080054
AVAILABILITY = 0x00080056
SPECIAL = (QUERY_LEVEL, CHARSET, RETRIEVE_AET, AVAILABILITY)
AGGREGATES = ("ModalitiesInStudy", "SOPClassesInStudy", "SourceApplicationEntityTitle")
MAX_KEY_NESTING = 8  # sequence matching within sequences: deeper identifiers are refused (0xA900)


@dataclass
class Request:
    """An identifier, parsed: the query, plus what only the response builder needs."""

    query: Query
    identifier: Dataset
    keys: list[tuple[str, str, Condition | None]] = field(default_factory=list)
    charset: list[str] = field(default_factory=list)
    sequences: dict[str, Dataset | None] = field(default_factory=dict)  # SQ key -> its request item
    plan: list[tuple[int, str, str, str]] | None = None  # how each key gets its value (response_elements)


def parse_identifier(ds: Dataset, model: str, fold_pn: bool = True, hierarchical: bool = True) -> Request:
    """The identifier as a Query; QueryError names what is wrong with it."""
    if nesting_depth(ds, MAX_KEY_NESTING) > MAX_KEY_NESTING:
        raise QueryError(f"sequence keys nested more than {MAX_KEY_NESTING} levels deep")
    try:
        level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
        charset = _charset_list(ds.get("SpecificCharacterSet"))
        keys: list[tuple[str, str, Condition | None]] = []
        sequences: dict[str, Dataset | None] = {}
        for elem in ds:
            if elem.tag in SPECIAL or elem.tag.is_private or elem.tag.element == 0 or not elem.keyword:
                continue
            vr = element_vr(elem)
            if vr == "SQ":
                items = list(elem.value or [])
                sequences[elem.keyword] = items[0] if items else None
                keys.append((elem.keyword, vr, None))
                continue
            keys.append((elem.keyword, vr, parse(elem.keyword, vr, _text(elem.value), fold_pn)))
    except QueryError:
        raise
    except Exception as exc:  # undecodable identifier
        raise QueryError(f"cannot decode the identifier: {type(exc).__name__}: {exc}") from exc
    query = build_query(model, level, keys, hierarchical)
    return Request(query, ds, keys, charset, sequences)


def element_vr(elem: DataElement) -> str:
    """The element's VR, from the dictionary when the wire did not say (UN, implicit ambiguity)."""
    if elem.VR not in ("UN", "OB or OW", "US or SS", "US or OW", "US or SS or OW"):
        return elem.VR
    try:
        vr = dictionary_VR(elem.tag)
    except KeyError:
        return elem.VR
    return vr.split(" or ")[0]


def _text(value: Any) -> str | list[str]:
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return [_text(v) for v in value]  # type: ignore[misc]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    return str(value)


def _charset_list(value: Any) -> list[str]:
    if not value:
        return []
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


# -- matching on stored headers ----------------------------------------------------


class HeaderReader:
    """Stored headers by archive path, the last one kept (rows of one series share it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._last: tuple[str, Dataset | None] | None = None

    def get(self, rel_path: str | None, pixel_data_offset: int | None) -> Dataset | None:
        if rel_path is None:
            return None
        if self._last and self._last[0] == rel_path:
            return self._last[1]
        try:
            ds: Dataset | None = read_stored_header(self.root / rel_path, pixel_data_offset)
        except Exception as exc:  # a file gone or damaged: its keys stay empty, the answer goes on
            log.warning("cannot read the header of %s: %s", rel_path, exc)
            ds = None
        self._last = (rel_path, ds)
        return ds


def header_matches(req: Request, header: Dataset | None) -> bool:
    """The keys the index cannot evaluate, evaluated against the stored header."""
    for key in req.query.header_conditions:
        if header is None or not matches(key.condition, _value_of(header, key.keyword)):  # type: ignore[arg-type]
            return False
    for keyword, item in req.sequences.items():
        if item is not None and not _sequence_matches(item, _element(header, keyword)):
            return False
    return True


def _element(ds: Dataset | None, keyword: str) -> DataElement | None:
    """The element itself (Dataset.get by keyword would give its value)."""
    tag = tag_for_keyword(keyword)
    return ds[tag] if ds is not None and tag is not None and tag in ds else None


def _value_of(ds: Dataset, keyword: str) -> str | list[str] | None:
    elem = _element(ds, keyword)
    if elem is None or elem.value is None or elem.VR == "SQ":
        return None
    return _text(elem.value)


def _sequence_matches(request_item: Dataset, stored: Any) -> bool:
    """Sequence matching (PS3.4 C.2.2.2.6): some stored item matches every keyed sub-key, and
    every sub-sequence with a keyed item in turn (the identifier's depth is limited on parsing)."""
    conds = []
    nested: list[tuple[str, Dataset]] = []
    for elem in request_item:
        if not elem.keyword:
            continue
        if elem.VR == "SQ":
            if elem.value and len(elem.value[0]):
                nested.append((elem.keyword, elem.value[0]))
            continue
        cond = parse(elem.keyword, element_vr(elem), _text(elem.value))
        if cond is not None:
            conds.append(cond)
    if not conds and not nested:
        return True
    if stored is None:
        return False
    return any(all(matches(c, _value_of(item, c.keyword)) for c in conds)
               and all(_sequence_matches(sub, _element(item, kw)) for kw, sub in nested)
               for item in stored.value or [])


# -- responses --------------------------------------------------------------------


Element = tuple[int, str, Any]  # tag, VR, value: a response element before it is a DataElement


def response_elements(req: Request, row: dict[str, Any], header: Dataset | None,
                      aet: str) -> list[Element]:
    """One pending response as (tag, VR, value) in tag order: every key of the identifier with a
    value where known, the response's Specific Character Set among them when it needs one.

    Values of stored headers are taken as they are (not copied); build_response makes the data
    set, the C-FIND front end may encode these directly (node/dimse/wire.py)."""
    out: list[Element] = []
    texts: list[str] = []
    for tag, kw, vr, kind in response_plan(req):
        value: Any = None
        if kind == "level":
            value = req.query.level
        elif kind == "aet":
            value = aet
        elif kind == "availability":
            value = "ONLINE"
        elif kind == "sequence":
            value = _sequence_response(header, kw, req.sequences.get(kw)).value
        elif kind == "index":
            value = index_value(kw, vr, row.get(kw))
        elif kind == "header" and header is not None and tag in header:
            stored = header[tag]
            vr, value = stored.VR, (_decoded(stored).value if stored.VR == "SQ" else stored.value)
        out.append((tag, vr, value))
        if value is not None:
            texts.extend(_texts(DataElement(tag, vr, value)) if vr == "SQ" else _value_texts(value))
    present = {e[0] for e in out}
    if QUERY_LEVEL not in present:
        _insert(out, (QUERY_LEVEL, "CS", req.query.level))
    if RETRIEVE_AET not in present:
        _insert(out, (RETRIEVE_AET, "AE", aet))
    charset = response_charset(req.charset, texts)
    if charset:
        _insert(out, (CHARSET, "CS", charset))
    return out


def response_plan(req: Request) -> list[tuple[int, str, str, str]]:
    """How each identifier key gets its value (decided once per request): (tag, keyword, VR, kind),
    kind one of level, aet, availability, sequence, index (a column or a count), header, empty."""
    plan = req.plan
    if plan is None:
        sources = {k.keyword: k.source for k in req.query.keys}
        plan = []
        for elem in req.identifier:
            tag = elem.tag
            if tag == CHARSET or tag.is_private or tag.element == 0:
                continue
            kw = elem.keyword
            vr = element_vr(elem)
            kind = {QUERY_LEVEL: "level", RETRIEVE_AET: "aet", AVAILABILITY: "availability"}.get(int(tag)) or (
                "sequence" if vr == "SQ" else
                "index" if sources.get(kw, "header") in ("index", "computed") else
                "header" if sources.get(kw, "header") == "header" else "empty")
            plan.append((int(tag), kw, "CS" if kind in ("level", "availability") else "AE" if kind == "aet"
                         else vr, kind))
        req.plan = plan
    return plan


def _insert(elements: list[Element], element: Element) -> None:
    i = 0
    while i < len(elements) and elements[i][0] < element[0]:
        i += 1
    elements.insert(i, element)


def _value_texts(value: Any) -> list[str]:
    if isinstance(value, (list, MultiValue)):
        return [str(x) for x in value]
    return [str(value)] if isinstance(value, (str, PersonName)) else []


def build_response(req: Request, row: dict[str, Any], header: Dataset | None, aet: str) -> Dataset:
    """One pending response: every key of the identifier, in its order, with a value where known."""
    return dataset_of(response_elements(req, row, header, aet))


def dataset_of(elements: list[Element]) -> Dataset:
    rsp = Dataset()
    for tag, vr, value in elements:
        rsp[tag] = DataElement(tag, vr, value)
    return rsp


def index_value(keyword: str, vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if keyword in AGGREGATES:
        return split_aggregate(value)
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return int(value)
    if vr == "IS":
        return str(value)
    if vr == "DS":
        return str(value)
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
        return value.split("\\")
    return value


def _decoded(elem: DataElement) -> DataElement:
    """A copy of a header element with text decoded (it is re-encoded in the response's charset)."""
    if elem.VR == "SQ":
        return DataElement(elem.tag, "SQ", Sequence([_decoded_item(i) for i in elem.value or []]))
    return DataElement(elem.tag, elem.VR, elem.value)


def _decoded_item(item: Dataset) -> Dataset:
    out = Dataset()
    for elem in item:
        out[elem.tag] = _decoded(elem)
    return out


def _sequence_response(header: Dataset | None, keyword: str, request_item: Dataset | None) -> DataElement:
    """The stored sequence: whole when asked for empty, else each item cut to the requested sub-keys."""
    tag = tag_for_keyword(keyword)
    assert tag is not None  # an identifier element's own keyword
    stored = _element(header, keyword)
    if stored is None or not stored.value:
        return DataElement(tag, "SQ", Sequence([]))
    if request_item is None or len(request_item) == 0:
        return _decoded(stored)
    items = []
    for item in stored.value:
        out = Dataset()
        for sub in request_item:
            if sub.tag in item:
                out[sub.tag] = _decoded(item[sub.tag])
            else:
                out[sub.tag] = DataElement(sub.tag, element_vr(sub), None if element_vr(sub) != "SQ" else Sequence([]))
        items.append(out)
    return DataElement(tag, "SQ", Sequence(items))


def _texts(elem: DataElement) -> list[str]:
    if elem.VR == "SQ":
        return [t for item in elem.value or [] for e in item for t in _texts(e)]
    v = elem.value
    if v is None:
        return []
    if isinstance(v, (list, MultiValue)):
        return [str(x) for x in v]
    return [str(v)] if isinstance(v, (str, PersonName)) else []


def response_charset(requested: list[str], texts: list[str]) -> str | list[str] | None:
    """The requester's character set if it can carry every value, else UTF-8."""
    if all(t.isascii() for t in texts):
        return (requested[0] if len(requested) == 1 else requested) if requested else None
    if len(requested) == 1:
        try:
            codec = convert_encodings(requested)[0]
            codecs.lookup(codec)
            for t in texts:
                t.encode(codec)
            return requested[0]
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    return "ISO_IR 192"


def iter_matches(req: Request, rows: Iterator[dict[str, Any]], headers: HeaderReader,
                 ) -> Iterator[tuple[dict[str, Any], Dataset | None]]:
    """Rows that also pass the header-side keys, with the header each response needs."""
    need_header = req.query.needs_header or bool(req.sequences)
    for row in rows:
        header = headers.get(row.get("_path"), row.get("_pdo")) if need_header else None
        if header_matches(req, header):
            yield row, header
