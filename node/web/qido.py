"""QIDO-RS (PS3.18 10.6): searches, answered by the same matcher and response builder as C-FIND.

The query parameters become a C-FIND identifier (filters as keys with values,
`includefield` and the level's default attributes as return keys), which the
archive's one matcher answers (storage/query/identifier.py): wildcards,
ranges, UID lists, sequence keys and case-insensitive names behave exactly as
over DIMSE. Each match becomes a DICOM JSON object as the cursor streams.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
from dicomnode.storage.query.identifier import HeaderReader, build_response, iter_matches, parse_identifier
from dicomnode.storage.query.sql import run

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
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
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
    except QueryError as exc:
        return problem(400, str(exc))
    base = web.base_url(request)
    if limit is None:  # the whole answer, streamed from the cursor
        return StreamingResponse(dicomjson.stream_array(_matches(web, req, None, offset, base)), media_type=DICOM_JSON)
    # a page: one match more than asked for tells whether the answer was cut
    page = await anyio.to_thread.run_sync(lambda: list(_matches(web, req, limit + 1, offset, base)))
    cut = len(page) > limit
    headers = {"Warning": '299 dicomnode: "There are additional results that can be requested with offset '
                          f'{offset + limit}"'} if cut else None
    return Response(b"".join(dicomjson.stream_array(page[:limit])), media_type=DICOM_JSON, headers=headers)


def _matches(web: Web, req: Any, limit: int | None, offset: int, base: str) -> Iterator[dict[str, Any]]:
    headers = HeaderReader(web.archive.layout.root)
    sent = skipped = 0
    with web.archive.db.engine.connect() as conn:
        for row, header in iter_matches(req, run(conn, req.query, web.archive.db.dialect), headers):
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and sent >= limit:
                return
            ds = build_response(req, row, header, web.settings.aet)
            for kw in ("QueryRetrieveLevel", "RetrieveAETitle"):
                if kw in ds:
                    delattr(ds, kw)
            ds.RetrieveURL = _retrieve_url(base, req.query.level, row, ds)
            yield dicomjson.to_json(ds)
            sent += 1


def _retrieve_url(base: str, level: str, row: dict[str, Any], ds: Dataset) -> str:
    study = str(ds.get("StudyInstanceUID") or row.get("StudyInstanceUID") or "")
    url = f"{base}/studies/{study}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{ds.get('SeriesInstanceUID') or row.get('SeriesInstanceUID')}"
    if level == "IMAGE":
        url += f"/instances/{ds.get('SOPInstanceUID') or row.get('SOPInstanceUID')}"
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
    return {"identifier": ds, "limit": limit, "offset": offset}


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
