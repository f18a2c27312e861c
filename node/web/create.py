"""POST /api/create: a new DICOM object from a non-DICOM file, as `dicomnode create` makes it
(node/media/create.py), stored through the ingest path. DICOM itself goes in by STOW-RS.

The body is the file itself; its Content-Type says what it is:

    image/png, image/jpeg, image/tiff, image/bmp   Secondary Capture (a baseline JPEG kept as JPEG)
    application/x-npy                              a NumPy array (2-D, 3-D), values kept in their units
    application/pdf                                Encapsulated PDF
    video/mp4, video/quicktime                     Video Photographic, the H.264 stream not re-encoded

Query parameters: `study` (an archived study: patient and study copied, a new series) or
`series` (an archived series), else `PatientID` (required), `PatientName`, `PatientBirthDate`,
`PatientSex`, `StudyDescription`, `AccessionNumber`; and `SeriesDescription`, `Modality`,
`spacing=ROW,COL[,SLICE first]`, `slope`, `intercept`, `title` (a PDF's Document Title).

The answer is the new object's UIDs and its RetrieveURL (200), or a status with the reason: 400
bad parameters, 404 no such study or series, 413 above `max_stow_mb`, 415 another media type,
422 a file that cannot become that object, 507 no room (the object's ingest status 0xA700).
A cross-site form cannot send these media types, so a page elsewhere cannot create objects
through a signed-in browser.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomnode.node.media import create as make
from dicomnode.node.web.context import Web, problem
from dicomnode.node.web.wado import instance_url

TYPES = {"image/png": ("image", ".png"), "image/jpeg": ("image", ".jpg"), "image/tiff": ("image", ".tif"),
         "image/bmp": ("image", ".bmp"), "application/x-npy": ("array", ".npy"), "application/pdf": ("pdf", ".pdf"),
         "video/mp4": ("video", ".mp4"), "video/quicktime": ("video", ".mov")}


async def create(request: Request) -> Response:
    web: Web = request.app.state.web
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in TYPES:
        return problem(415, f"send the file with its media type: {', '.join(TYPES)}")
    kind, suffix = TYPES[media_type]
    q = request.query_params
    try:
        spacing = tuple(float(x) for x in q["spacing"].split(",")) if q.get("spacing") else None
        if spacing is not None and (len(spacing) not in (2, 3) or min(spacing) <= 0):
            raise ValueError
        slope, intercept = float(q.get("slope", 1)), float(q.get("intercept", 0))
    except ValueError:
        return problem(400, "spacing=ROW,COL or SLICE,ROW,COL (mm, positive); slope and intercept: numbers")
    if not (q.get("study") or q.get("series") or q.get("PatientID")):
        return problem(400, "name an archived study= or series=, or give a new study's PatientID=")
    limit = web.settings.max_stow_mb * (1 << 20)
    fd, name = tempfile.mkstemp(prefix="create-", suffix=suffix, dir=web.archive.layout.tmp)
    upload = Path(name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if limit and size > limit:
                    return problem(413, f"the file is larger than max_stow_mb ({web.settings.max_stow_mb} MB)")
                await anyio.to_thread.run_sync(f.write, chunk)
        if not size:
            return problem(400, "an empty body: send the file")

        def made() -> tuple[make.NewObject, int, str]:
            ctx = make.context_for(web.archive, web.settings.uid_root, q.get("Modality"), q.get("study"),
                                   q.get("series"), {k: q.get(k) for k in (*make.NEW_STUDY_KEYS, "SeriesDescription")})
            obj = make.from_files(kind, [upload], ctx, spacing, slope, intercept, q.get("title"))
            out = make.store(obj, web.ingester)
            return obj, out.status, out.comment

        try:
            obj, status, comment = await anyio.to_thread.run_sync(made)
        except make.NotArchived as exc:
            return problem(404, str(exc))
        except make.CreateError as exc:
            return problem(422, str(exc))
        if status == 0xA700:
            return problem(507, comment)
        if status != 0:
            return problem(409 if status == 0x0111 else 500, f"not stored (0x{status:04X}): {comment}")
        ds = obj.ds
        row = {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
               "SOPInstanceUID": ds.SOPInstanceUID}
        return JSONResponse({**{k: str(v) for k, v in row.items()}, "SOPClassUID": str(ds.SOPClassUID),
                             "RetrieveURL": instance_url(web.base_url(request), row)})
    finally:
        upload.unlink(missing_ok=True)
