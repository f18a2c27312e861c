"""WADO-RS (PS3.18 10.4): studies, series and instances as DICOM, their metadata, bulk data.

Objects go out as stored, streamed from the archived file (memory stays flat
for a 1 GB object), when the client accepts that: `transfer-syntax=*`, the
stored syntax, or no transfer-syntax parameter (this node's default: the
object as it was received, never silently changed). An explicit other syntax
is produced where pydicom can (any decodable object to an uncompressed
syntax, uncompressed to RLE Lossless); the object is then held in memory
while it is rewritten. Anything else is 406 with the reason.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomnode.node.web import dicomjson, multipart
from dicomnode.node.web.context import DICOM_JSON, Web, problem
from dicomnode.node.web.negotiation import MediaRange, parse_accept
from dicomnode.storage.archive.header import read_stored_header
from dicomnode.storage.query.listing import list_level

STORED = "*"
UNCOMPRESSED = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}


def instances(web: Web, request: Request) -> list[dict[str, Any]]:
    """The index rows of the instances a URL names (study, series, instance), in arrival order."""
    p = request.path_params
    filters = {k: v for k, v in (("StudyInstanceUID", p.get("study")), ("SeriesInstanceUID", p.get("series")),
                                 ("SOPInstanceUID", p.get("instance"))) if v}
    for uid in filters.values():
        if not _uid_shaped(uid):
            return []
    return list(list_level(web.archive.db, "IMAGE", filters))


def _uid_shaped(uid: str) -> bool:
    return 0 < len(uid) <= 64 and all(part.isdigit() for part in uid.split("."))


def instance_url(base: str, row: dict[str, Any]) -> str:
    return (f"{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
            f"/instances/{row['SOPInstanceUID']}")


async def retrieve(request: Request) -> Response:
    web: Web = request.app.state.web
    rows = await anyio.to_thread.run_sync(instances, web, request)
    if not rows:
        return problem(404, "no such study, series or instance in the archive")
    wanted = _dicom_syntax(parse_accept(request.headers.get("accept")))
    if wanted is None:
        return problem(406, 'this resource is sent as multipart/related; type="application/dicom"')
    for row in rows:
        why = _cannot(row["TransferSyntaxUID"], wanted)
        if why:
            return problem(406, f"{row['SOPInstanceUID']}: {why}")
    boundary = multipart.new_boundary()
    layout = web.archive.layout
    parts = ((f"application/dicom; transfer-syntax={_sent_syntax(r['TransferSyntaxUID'], wanted)}",
              _object_bytes(layout.absolute(r["path"]), r["TransferSyntaxUID"], wanted)) for r in rows)
    return StreamingResponse(multipart.write(parts, boundary),
                             media_type=multipart.content_type("application/dicom", boundary))


def _dicom_syntax(accepts: list[MediaRange]) -> str | None:
    """The transfer syntax asked for (STORED for `*` or none), or None when nothing DICOM is accepted."""
    for r in accepts:
        if r.media_type == "*/*" or (r.media_type == "multipart/related" and r.part_type in (None, "application/dicom")
                                    ) or r.media_type == "application/dicom":
            return r.transfer_syntax or STORED
    return None


def _sent_syntax(stored: str, wanted: str) -> str:
    return stored if wanted in (STORED, stored) else wanted


def _cannot(stored: str, wanted: str) -> str | None:
    """Why an object stored in `stored` cannot be sent in `wanted`, or None."""
    if wanted in (STORED, stored):
        return None
    target = UID(wanted)
    if not target.is_transfer_syntax:
        return f"{wanted} is not a transfer syntax"
    if wanted in UNCOMPRESSED:
        return None  # decoded (if compressed) and rewritten
    if target == RLELossless and UID(stored) in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        return None
    return f"stored as {UID(stored).name}; this node does not convert it to {target.name}"


def _object_bytes(path: Path, stored: str, wanted: str) -> Iterator[bytes]:
    if wanted in (STORED, stored):
        with open(path, "rb") as f:
            yield from multipart.file_chunks(f)
        return
    ds: Dataset = dcmread(path)
    if UID(wanted) == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        if UID(stored).is_compressed:
            ds.decompress(generate_instance_uid=False)
        elif UID(stored) == ExplicitVRBigEndian:
            from dicomnode.node.dimse.scu import little_endian

            ds = little_endian(ds)
        ds.file_meta.TransferSyntaxUID = UID(wanted)
        ds.set_original_encoding(UID(wanted).is_implicit_VR, True, ds.original_character_set)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    yield buf.getvalue()


async def metadata(request: Request) -> Response:
    web: Web = request.app.state.web
    rows = await anyio.to_thread.run_sync(instances, web, request)
    if not rows:
        return problem(404, "no such study, series or instance in the archive")
    base = web.base_url(request)
    return StreamingResponse(dicomjson.stream_array(_metadata(web, rows, base)), media_type=DICOM_JSON)


def _bulk_uri(instance: str) -> Callable[[str], str]:
    return lambda path: f"{instance}/bulkdata/{path}"


def _metadata(web: Web, rows: Iterable[dict[str, Any]], base: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        url = instance_url(base, row)
        try:
            ds = read_stored_header(web.archive.layout.absolute(row["path"]), row.get("pixel_data_offset"))
        except Exception:  # a file gone or damaged: what the index knows
            ds = None
        obj = dicomjson.to_json(ds, _bulk_uri(url)) if ds is not None else {}
        if row.get("Rows") or row.get("pixel_data_size"):
            obj["7FE00010"] = {"vr": "OB" if UID(row["TransferSyntaxUID"]).is_compressed else "OW",
                               "BulkDataURI": f"{url}/bulkdata/7FE00010"}
        yield obj
