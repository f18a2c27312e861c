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

from dicomnode.errors import DisplayError
from dicomnode.node.web import dicomjson, multipart
from dicomnode.node.web.context import DICOM_JSON, Problem, Web, problem
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


async def named(request: Request, missing: str) -> tuple[Web, list[dict[str, Any]]]:
    """The web side and the rows a URL names; 404 with `missing` as the reason when there are none."""
    web: Web = request.app.state.web
    rows = await anyio.to_thread.run_sync(instances, web, request)
    if not rows:
        raise Problem(404, missing)
    return web, rows


def _uid_shaped(uid: str) -> bool:
    return 0 < len(uid) <= 64 and all(part.isdigit() for part in uid.split("."))


def instance_url(base: str, row: dict[str, Any]) -> str:
    return (f"{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
            f"/instances/{row['SOPInstanceUID']}")


async def retrieve(request: Request) -> Response:
    web, rows = await named(request, "no such study, series or instance in the archive")
    wanted = _dicom_syntax(parse_accept(request.headers.get("accept")))
    if wanted is None:
        return problem(406, 'this resource is sent as multipart/related; type="application/dicom"')
    for row in rows:
        why = _cannot(row["TransferSyntaxUID"], wanted)
        if why:
            return problem(406, f"{row['SOPInstanceUID']}: {why}")
    p = request.path_params
    web.archive.audit.record("retrieve", service="WADO-RS", host=request.client.host if request.client else None,
                             user=request.scope.get("dicomnode.user"), study=p.get("study"), series=p.get("series"),
                             sop=p.get("instance"), instances=len(rows))
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
            from dicomnode.node.transcode import little_endian

            ds = little_endian(ds)
        ds.file_meta.TransferSyntaxUID = UID(wanted)
        ds.set_original_encoding(UID(wanted).is_implicit_VR, True, ds.original_character_set)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    yield buf.getvalue()


async def metadata(request: Request) -> Response:
    web, rows = await named(request, "no such study, series or instance in the archive")
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


# -- frames, bulk data --------------------------------------------------------------------------

# the media type of a stored compressed frame (PS3.18 Table 8.7.3-4)
FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}
OCTETS = "application/octet-stream"


class PixelData:
    """Where an archived object's pixel data lies, read from its header (never from its value)."""

    def __init__(self, path: Path, row: dict[str, Any]) -> None:
        from dicomnode.storage.archive.header import read_header

        header = read_header(path)
        ds = header.ds
        self.path = path
        self.syntax = UID(header.transfer_syntax)
        try:
            self.frames = int(ds.get("NumberOfFrames") or 1)
            self.frame_bytes = (int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
                                * int(ds.get("SamplesPerPixel") or 1) * int(ds.get("BitsAllocated") or 0)) // 8
            self.bits = int(ds.get("BitsAllocated") or 0)
        except (TypeError, ValueError) as exc:  # e.g. Number of Frames "1A"
            raise LookupError(f"the image attributes cannot be read: {exc}") from None
        with open(path, "rb") as f:
            f.seek(header.end)
            head = f.read(12)
        if len(head) < 8 or head[:4] != b"\xe0\x7f\x10\x00" and head[:4] != b"\x7f\xe0\x00\x10":
            raise LookupError("the object has no Pixel Data")
        little = self.syntax.is_little_endian if self.syntax.is_transfer_syntax else True
        explicit = head[4:6].isalpha()
        import struct

        self.value = header.end + (12 if explicit else 8)
        self.length = struct.unpack(("<" if little else ">") + "I", head[8:12] if explicit else head[4:8])[0]

    @property
    def encapsulated(self) -> bool:
        return self.syntax.is_compressed

    def native_frame(self, i: int) -> bytes:
        """Frame i (0-based) of uncompressed pixel data, little endian."""
        if self.bits < 8 or not self.frame_bytes:
            raise LookupError("bit-packed pixel data: decoded instead")
        with open(self.path, "rb") as f:
            f.seek(self.value + i * self.frame_bytes)
            data = f.read(self.frame_bytes)
        if len(data) < self.frame_bytes:
            raise LookupError(f"frame {i + 1} runs past the end of the pixel data")
        if self.syntax == ExplicitVRBigEndian and self.bits > 8:
            import numpy as np

            size = self.bits // 8
            data = np.frombuffer(data, f">u{size}").astype(f"<u{size}").tobytes()
        return data

    def stored_frame(self, i: int) -> bytes:
        """Frame i (0-based) of encapsulated pixel data, as stored (its fragments joined)."""
        from pydicom.encaps import get_frame

        with open(self.path, "rb") as f:
            f.seek(self.value)
            return get_frame(f, i, number_of_frames=self.frames)

    def decoded_frame(self, i: int) -> bytes:
        """Frame i decoded to uncompressed little endian bytes (colour as RGB), by the decoders of the
        display pipeline (pydicom's, then GDCM's); DisplayError when none can."""
        from dicomnode.node.processing import display

        _, arr = next(display.decoded(self.path, display.header(self.path), [i]))
        return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def _frame_numbers(text: str, frames: int) -> list[int] | None:
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return None
    if not numbers or any(not 1 <= n <= frames for n in numbers):
        return None
    return numbers


async def frames(request: Request) -> Response:
    web, rows = await named(request, "no such instance in the archive")
    row = rows[0]
    try:
        px = await anyio.to_thread.run_sync(PixelData, web.archive.layout.absolute(row["path"]), row)
    except LookupError as exc:
        return problem(404, str(exc))
    numbers = _frame_numbers(request.path_params["frames"], px.frames)
    if numbers is None:
        return problem(400, f"frame numbers: a comma-separated list of 1 to {px.frames}")
    stored_type = FRAME_TYPES.get(str(px.syntax), OCTETS) if px.encapsulated else OCTETS
    how = _frame_choice(parse_accept(request.headers.get("accept")), stored_type, px.encapsulated)
    if how is None:
        return problem(406, f"frames of this object are offered as {OCTETS} (uncompressed)"
                       + (f" or {stored_type} (as stored)" if px.encapsulated else ""))
    boundary = multipart.new_boundary()
    if how == "stored":
        ctype = f"{stored_type}; transfer-syntax={px.syntax}"
        read = px.stored_frame
    else:
        ctype = f"{OCTETS}; transfer-syntax={ExplicitVRLittleEndian}"
        read = px.decoded_frame if px.encapsulated else px.native_frame
    try:  # the first frame before the answer starts: an object no decoder reads is a 422, not a cut stream
        first = await anyio.to_thread.run_sync(read, numbers[0] - 1)
    except (DisplayError, LookupError) as exc:
        return problem(422 if isinstance(exc, DisplayError) else 404, str(exc))
    parts = ((ctype, [first] if k == 0 else _lazy(read, n - 1)) for k, n in enumerate(numbers))
    return StreamingResponse(multipart.write(parts, boundary),
                             media_type=multipart.content_type(ctype.split(";")[0], boundary))


def _lazy(read: Callable[[int], bytes], i: int) -> Iterator[bytes]:
    yield read(i)


def _frame_choice(accepts: list[MediaRange], stored_type: str, encapsulated: bool) -> str | None:
    """'stored' (the frames as they are) or 'octets' (uncompressed), by the client's preference."""
    for r in accepts:
        part = r.part_type if r.media_type == "multipart/related" else r.media_type
        if r.media_type == "*/*" or part in (None, "*/*"):
            return "stored" if encapsulated and r.transfer_syntax == "*" else "octets"
        if part == OCTETS:
            return "stored" if encapsulated and r.transfer_syntax == "*" else "octets"
        if encapsulated and part == stored_type:
            return "stored"
    return None


async def bulkdata(request: Request) -> Response:
    web, rows = await named(request, "no such instance in the archive")
    path = web.archive.layout.absolute(rows[0]["path"])
    where = request.path_params["path"].strip("/").split("/")
    boundary = multipart.new_boundary()
    if where == ["7FE00010"]:
        try:
            px = await anyio.to_thread.run_sync(PixelData, path, rows[0])
        except LookupError as exc:
            return problem(404, str(exc))
        if px.encapsulated:
            ctype = f"{FRAME_TYPES.get(str(px.syntax), OCTETS)}; transfer-syntax={px.syntax}"
            parts: Iterable[tuple[str, Iterable[bytes]]] = ((ctype, _lazy(px.stored_frame, i)) for i in range(px.frames))
        else:
            parts = [(f"{OCTETS}; transfer-syntax={px.syntax}", _file_range(path, px.value, px.length))]
        return StreamingResponse(multipart.write(parts, boundary), media_type=multipart.content_type(OCTETS, boundary))
    value = await anyio.to_thread.run_sync(_element_value, path, where)
    if value is None:
        return problem(404, f"no bulk data at {'/'.join(where)}")
    return StreamingResponse(multipart.write([(OCTETS, [value])], boundary),
                             media_type=multipart.content_type(OCTETS, boundary))


def _file_range(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from multipart.file_chunks(f, start, length)


def _element_value(path: Path, where: list[str]) -> bytes | None:
    """The value at tag/item/tag/... of the stored header, as bytes; None when there is none."""
    ds: Any = read_stored_header(path)
    try:
        for i, step in enumerate(where):
            if i % 2:
                ds = ds[int(step) - 1]  # an item number, 1-based
                continue
            elem = ds[int(step, 16)]
            ds = elem.value
        return bytes(ds) if isinstance(ds, (bytes, bytearray)) else None
    except (KeyError, ValueError, IndexError, TypeError):
        return None
