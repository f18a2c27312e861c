"""QIDO-RS (PS3.18 10.6): searches, answered by the same matcher and response builder as C-FIND.

The query parameters become a C-FIND identifier (filters as keys with values,
`includefield` and the level's default attributes as return keys), which the
archive's one matcher answers (storage/query/identifier.py): wildcards,
ranges, UID lists, sequence keys and case-insensitive names behave exactly as
over DIMSE. Each match becomes a DICOM JSON object as the cursor streams.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomnode.errors import QueryError
from dicomnode.node.web import dicomjson
from dicomnode.node.web.context import DICOM_JSON, Web, problem
from dicomnode.storage.query.identifier import (
    HeaderReader,
    build_response,
    index_value,
    iter_matches,
    parse_identifier,
    response_charset,
    response_plan,
)
from dicomnode.storage.query.identifier import (
    Request as Search,
)
from dicomnode.storage.query.sql import run, select_for

# PS3.18 Tables 10.6.3-3, -4, -5: what every match carries without being asked
DEFAULTS = {
    "STUDY": ["StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "StudyDescription"],
    "SERIES": ["Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "StudyInstanceUID"],
    "IMAGE": ["SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber", "Rows", "Columns",
              "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID"],
}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "orderby"}
MAX_PARAMETERS = 200
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


async def search(request: Request) -> Response:
    web: Web = request.app.state.web
    level = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}[request.url.path.rstrip("/").rsplit("/", 1)[1]]
    try:
        query = _identifier(level, request)
    except QueryError as exc:
        return problem(400, str(exc))
    limit, offset = query.pop("limit"), query.pop("offset")
    ident: Dataset = query["identifier"]
    try:
        req = parse_identifier(ident, "STUDY", web.settings.pn_case_insensitive, hierarchical=False)
        req.query.order = query["order"]
        if not req.query.needs_header and not req.sequences:
            # every row the cursor gives is a match: the page is cut in SQL, so page 200 of a
            # large archive costs what page 1 costs (one row more tells whether there is more)
            req.query.offset, offset = offset, 0
            req.query.limit = None if limit is None else limit + 1
        if req.query.order:
            _ = select_for(req.query, web.archive.db.dialect)  # an unsortable key: 400 now, not mid-stream
    except QueryError as exc:
        return problem(400, str(exc))
    base = web.base_url(request)
    if limit is None:  # the whole answer, streamed from the cursor
        chunks = dicomjson.stream_array(_matches(web, req, None, offset, base))
        # the first two chunks in one hand-over to a thread: a small answer (the usual one) is then
        # complete and goes out as one plain response, without a thread hop per chunk
        head = await anyio.to_thread.run_sync(lambda: [c for c in itertools.islice(chunks, 2)])
        if len(head) < 2:
            return Response(b"".join(head), media_type=DICOM_JSON)
        return StreamingResponse(itertools.chain(head, chunks), media_type=DICOM_JSON)
    # a page: one match more than asked for tells whether the answer was cut
    page = await anyio.to_thread.run_sync(lambda: list(_matches(web, req, limit + 1, offset, base)))
    cut = len(page) > limit
    headers = {"Warning": '299 dicomnode: "There are additional results that can be requested with offset '
                          f'{offset + limit}"'} if cut else None
    return Response(b"".join(dicomjson.stream_array(page[:limit])), media_type=DICOM_JSON, headers=headers)


def _matches(web: Web, req: Search, limit: int | None, offset: int, base: str) -> Iterator[dict[str, Any]]:
    headers = HeaderReader(web.archive.layout.root)
    plan = _plan(req)
    sent = skipped = 0
    with web.archive.db.engine.connect() as conn:
        for row, header in iter_matches(req, run(conn, req.query, web.archive.db.dialect), headers):
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and sent >= limit:
                return
            if plan is not None:
                yield _row_json(plan, req, row, base)
            else:
                ds = build_response(req, row, header, web.settings.aet)
                for kw in ("QueryRetrieveLevel", "RetrieveAETitle"):
                    if kw in ds:
                        delattr(ds, kw)
                ds.RetrieveURL = _retrieve_url(base, req.query.level, row, ds)
                yield dicomjson.to_json(ds)
            sent += 1


@dataclass(frozen=True)
class _Field:
    tag: str  # 8 hex digits, as DICOM JSON keys them
    keyword: str
    vr: str
    kind: str  # index (a column or a count) | availability | empty


def _plan(req: Search) -> list[_Field] | None:
    """How each match becomes DICOM JSON straight from its row, decided once per search: the same
    object build_response + to_json would make (a test holds them equal), without a pydicom data
    set per match. None when matches need their stored headers (header keys, sequences).
    It is the C-FIND responses' plan (response_plan) less the keys QIDO-RS does not return."""
    if req.query.needs_header or req.sequences:
        return None
    return [_Field(f"{tag:08X}", kw, vr, kind) for tag, kw, vr, kind in response_plan(req)
            if kind not in ("level", "aet")]


def _row_json(plan: list[_Field], req: Search, row: dict[str, Any], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    texts: list[str] = []
    for f in plan:
        if f.kind == "availability":
            out[f.tag] = {"vr": f.vr, "Value": ["ONLINE"]}
            continue
        value = index_value(f.keyword, f.vr, row.get(f.keyword)) if f.kind == "index" else None
        if value is None:
            out[f.tag] = {"vr": f.vr}
            continue
        values = value if isinstance(value, list) else [value]
        if f.vr in ("PN", "SH", "LO", "ST", "LT", "UT", "UC"):
            texts.extend(str(v) for v in values)
        out[f.tag] = _json_value(f.vr, values)
    charset = response_charset(req.charset, texts)
    if charset:
        out["00080005"] = {"vr": "CS", "Value": charset if isinstance(charset, list) else [charset]}
    out["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, req.query.level, row, None)]}
    return dict(sorted(out.items()))


def _json_value(vr: str, values: list[Any]) -> dict[str, Any]:
    """PS3.18 F.2.2 for the VRs index columns have, as pydicom's to_json_dict writes them."""
    try:
        if vr == "PN":
            names = []
            for v in values:
                groups = str(v).split("=")
                name = {"Alphabetic": groups[0]}
                if len(groups) > 1:
                    name["Ideographic"] = groups[1]
                if len(groups) > 2:
                    name["Phonetic"] = groups[2]
                names.append(name)
            return {"vr": vr, "Value": names}
        if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV"):
            return {"vr": vr, "Value": [None if v in ("", None) else _integer(v) for v in values]}
        if vr in ("DS", "FL", "FD"):
            return {"vr": vr, "Value": [None if v in ("", None) else float(v) for v in values]}
        return {"vr": vr, "Value": [str(v) for v in values]}
    except (TypeError, ValueError):  # a value that is not what its VR says: the element, empty
        return {"vr": vr}


def _integer(v: Any) -> int:
    try:
        return int(v)
    except ValueError:
        f = float(v)
        if not f.is_integer():
            raise
        return int(f)


def _retrieve_url(base: str, level: str, row: dict[str, Any], ds: Dataset | None) -> str:
    def uid(kw: str) -> str:
        return str((ds.get(kw) if ds is not None else None) or row.get(kw) or "")

    url = f"{base}/studies/{uid('StudyInstanceUID')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{uid('SeriesInstanceUID')}"
    if level == "IMAGE":
        url += f"/instances/{uid('SOPInstanceUID')}"
    return url


def _identifier(level: str, request: Request) -> dict[str, Any]:
    """The query parameters as a C-FIND identifier, plus limit and offset."""
    items = request.query_params.multi_items()
    if len(items) > MAX_PARAMETERS:
        raise QueryError(f"{len(items)} query parameters: at most {MAX_PARAMETERS}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.SpecificCharacterSet = "ISO_IR 192"
    include: list[str] = list(DEFAULTS[level])
    limit: int | None = None
    offset = 0
    everything = False
    order: list[tuple[str, bool]] = []
    for key, value in items:
        if key == "includefield":
            for name in value.split(","):
                if name.strip() == "all":
                    everything = True
                elif name.strip():
                    include.append(_keyword(name.strip()))
        elif key in ("limit", "offset"):
            if not value.isdigit():
                raise QueryError(f"{key}={value!r}: a number")
            if key == "limit":
                limit = int(value)
            else:
                offset = int(value)
        elif key == "orderby":  # dcm4chee's extension: orderby=-StudyDate,PatientName
            for name in value.split(","):
                name = name.strip()
                if name:
                    order.append((_keyword(name.lstrip("-")), name.startswith("-")))
                    include.append(_keyword(name.lstrip("-")))
        elif key == "fuzzymatching":
            continue  # names already match regardless of case and accents: nothing fuzzier is offered
        else:
            _put(ds, key, value)
    for kw in ("study", "series"):  # /studies/{study}/series/... fixes the parents' UIDs
        uid = request.path_params.get(kw)
        if uid:
            _put(ds, "StudyInstanceUID" if kw == "study" else "SeriesInstanceUID", uid)
    for name in include:
        if name not in ds:
            _put(ds, name, "")
    if everything:
        for name in (*DEFAULTS["STUDY"], *DEFAULTS["SERIES"], *DEFAULTS["IMAGE"]):
            if name not in ds and (level != "STUDY" or name not in DEFAULTS["IMAGE"]):
                _put(ds, name, "")
    return {"identifier": ds, "limit": limit, "offset": offset, "order": order}


def _keyword(name: str) -> str:
    if _TAG.match(name):
        kw = keyword_for_tag(int(name, 16))
        if not kw:
            raise QueryError(f"{name}: not a tag this node knows")
        return kw
    if tag_for_keyword(name) is None:
        raise QueryError(f"{name}: not a DICOM keyword")
    return name


def _put(ds: Dataset, key: str, value: str) -> None:
    """Key=Value into the identifier; `Seq.Key` (or tags) is a sequence key with one item."""
    path = [_keyword(p) for p in key.split(".")]
    target = ds
    for seq in path[:-1]:
        if dictionary_VR(tag_for_keyword(seq)) != "SQ":  # type: ignore[arg-type]
            raise QueryError(f"{seq} is not a sequence")
        if seq not in target or not target[seq].value:
            target[seq] = _seq(seq)
        target = target[seq].value[0]
    kw = path[-1]
    vr = dictionary_VR(tag_for_keyword(kw)).split(" or ")[0]  # type: ignore[arg-type]
    if vr == "SQ":
        target.add_new(tag_for_keyword(kw), "SQ", Sequence([]))  # type: ignore[arg-type]
        return
    if vr == "UI":
        value = value.replace(",", "\\")
    if vr in ("US", "SS", "UL", "SL", "FL", "FD") and value:
        raise QueryError(f"{kw}: matching on a {vr} value is not supported")
    target.add_new(tag_for_keyword(kw), vr, value or None)  # type: ignore[arg-type]


def _seq(keyword: str) -> Any:
    from pydicom.dataelem import DataElement

    return DataElement(tag_for_keyword(keyword), "SQ", Sequence([Dataset()]))  # type: ignore[arg-type]
