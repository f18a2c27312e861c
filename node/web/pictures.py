"""Rendered resources (PS3.18 10.4.1.1.3, 8.3.5) and thumbnails, and WADO-URI (PS3.18 9).

Pictures come from the display pipeline of `dicomnode convert`
(node/processing/render.py): the same modality LUT, VOI and photometric
handling, so the browser sees what a converted PNG shows. Query parameters:
window=center,width[,LINEAR|LINEAR_EXACT|SIGMOID], viewport=width,height
(scaled to fit, aspect kept), quality=1..100 (JPEG).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from dicomnode.errors import DisplayError
from dicomnode.node.processing import render
from dicomnode.node.processing.display import Window
from dicomnode.node.web import multipart
from dicomnode.node.web.context import Web, problem
from dicomnode.node.web.negotiation import parse_accept
from dicomnode.node.web.wado import _cannot, _object_bytes, _sent_syntax, named

PICTURES = ("image/jpeg", "image/png", "image/gif")
VIDEOS = {"video/mp4": "mp4", "image/gif": "gif"}


class BadParameter(ValueError):
    pass


def rendering_params(request: Request) -> dict[str, Any]:
    """window=, viewport= and quality= of a rendering request (also the processing route's window)."""
    q = request.query_params
    out: dict[str, Any] = {"window": None, "viewport": None, "quality": 90}
    if q.get("window"):
        parts = q["window"].split(",")
        try:
            function = parts[2].strip().upper() if len(parts) > 2 else "LINEAR"
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or len(parts) > 3:
                raise ValueError
            out["window"] = Window(float(parts[0]), float(parts[1]), function)
        except (ValueError, IndexError):
            raise BadParameter("window=center,width[,LINEAR|LINEAR_EXACT|SIGMOID]") from None
    if q.get("viewport"):
        try:
            w, h = (int(x) for x in q["viewport"].split(",")[:2])
            if not (0 < w <= 8192 and 0 < h <= 8192):
                raise ValueError
            out["viewport"] = (w, h)
        except ValueError:
            raise BadParameter("viewport=width,height (1 to 8192)") from None
    if q.get("quality"):
        if not q["quality"].isdigit() or not 1 <= int(q["quality"]) <= 100:
            raise BadParameter("quality=1..100")
        out["quality"] = int(q["quality"])
    return out


def _picture_type(request: Request, allowed: tuple[str, ...] = PICTURES) -> str | None:
    for r in parse_accept(request.headers.get("accept")):
        for t in allowed:
            if r.matches(t):
                return t
    return None


async def rendered(request: Request) -> Response:
    web, rows = await named(request, "no such study, series or instance in the archive")
    try:
        p = rendering_params(request)
    except BadParameter as exc:
        return problem(400, str(exc))
    frame_list = request.path_params.get("frames")
    paths = [web.archive.layout.absolute(r["path"]) for r in rows]
    if "instance" in request.path_params and frame_list is None and int(rows[0].get("NumberOfFrames") or 1) > 1:
        # a multi-frame object as a film, when that is what the client names first (not */*)
        first = next((r.media_type for r in parse_accept(request.headers.get("accept"))), "*/*")
        if first in VIDEOS:
            return await _animation(paths[0], VIDEOS[first], p["window"])
    media = _picture_type(request)
    if media is None:
        return problem(406, "rendered as image/jpeg, image/png or image/gif (video/mp4 for multi-frame objects)")
    if frame_list is not None:
        try:
            indices = [int(x) - 1 for x in frame_list.split(",")]
        except ValueError:
            return problem(400, "frame numbers: a comma-separated list")
        targets = [(paths[0], i) for i in indices]
    else:
        targets = [(path, 0) for path in paths]
    try:
        if len(targets) == 1:
            data = await anyio.to_thread.run_sync(
                lambda: render.rendered(targets[0][0], targets[0][1], media, p["window"], p["viewport"], p["quality"]))
            return Response(data, media_type=media)
    except (DisplayError, StopIteration, IndexError) as exc:
        return problem(404 if isinstance(exc, (StopIteration, IndexError)) else 422, str(exc) or "no such frame")
    boundary = multipart.new_boundary()
    parts = ((media, _one(path, i, media, p)) for path, i in targets)
    return StreamingResponse(multipart.write(parts, boundary), media_type=multipart.content_type(media, boundary))


def _one(path: Path, index: int, media: str, p: dict[str, Any]) -> Any:
    yield render.rendered(path, index, media, p["window"], p["viewport"], p["quality"])


async def _animation(path: Path, kind: str, window: Window | None) -> Response:
    try:
        made = await anyio.to_thread.run_sync(lambda: render.animation(path, kind, window))
    except DisplayError as exc:
        return problem(422, str(exc))
    return FileResponse(made, media_type="video/mp4" if kind == "mp4" else "image/gif",
                        background=BackgroundTask(shutil.rmtree, made.parent, True))


async def thumbnail(request: Request) -> Response:
    """The middle frame of the middle instance (of the first series, for a study), small."""
    web, rows = await named(request, "no such study, series or instance in the archive")
    media = _picture_type(request, ("image/jpeg", "image/png"))
    if media is None:
        return problem(406, "thumbnails are image/jpeg or image/png")
    series = rows[0]["SeriesInstanceUID"]
    pick = [r for r in rows if r["SeriesInstanceUID"] == series]
    row = pick[len(pick) // 2]
    size = render.THUMBNAIL_PX
    if request.query_params.get("viewport"):
        try:
            size = max(int(x) for x in request.query_params["viewport"].split(",")[:2])
        except ValueError:
            return problem(400, "viewport=width,height")
    try:
        data = await anyio.to_thread.run_sync(
            lambda: render.thumbnail(web.archive.layout.absolute(row["path"]), media, max(1, min(size, 1024))))
    except DisplayError as exc:
        return problem(422, str(exc))
    return Response(data, media_type=media)


async def wado_uri(request: Request) -> Response:
    """WADO-URI: one object, as DICOM or as a picture, named by query parameters."""
    web: Web = request.app.state.web
    q = request.query_params
    if q.get("requestType") != "WADO":
        return problem(400, "requestType=WADO is required")
    for key in ("studyUID", "seriesUID", "objectUID"):
        if not q.get(key):
            return problem(400, f"{key} is required")
    request.path_params.update(study=q["studyUID"], series=q["seriesUID"], instance=q["objectUID"])
    _, rows = await named(request, "no such object in the archive")
    row = rows[0]
    path = web.archive.layout.absolute(row["path"])
    wanted = [t.strip() for t in (q.get("contentType") or "image/jpeg").split(",")]
    if "application/dicom" in wanted:
        ts = q.get("transferSyntax") or "*"
        why = _cannot(row["TransferSyntaxUID"], ts)
        if why:
            return problem(406, why)
        return StreamingResponse(_object_bytes(path, row["TransferSyntaxUID"], ts), media_type="application/dicom",
                                 headers={"Content-Disposition": f'attachment; filename="{row["SOPInstanceUID"]}.dcm"',
                                          "X-Transfer-Syntax": _sent_syntax(row["TransferSyntaxUID"], ts)})
    media = next((t for t in wanted if t in ("image/jpeg", "image/png", "image/gif")), None)
    if media is None:
        return problem(406, "contentType: application/dicom, image/jpeg, image/png or image/gif")
    try:
        index = int(q.get("frameNumber", "1")) - 1
        window = Window(float(q["windowCenter"]), float(q["windowWidth"])) \
            if q.get("windowCenter") and q.get("windowWidth") else None
        rows_px, cols_px = int(q.get("rows", 0)), int(q.get("columns", 0))
        quality = int(q.get("imageQuality", 90))
    except ValueError:
        return problem(400, "frameNumber, windowCenter, windowWidth, rows, columns, imageQuality: numbers")
    viewport = (cols_px or rows_px * 100, rows_px or cols_px * 100) if (rows_px or cols_px) else None
    try:
        data = await anyio.to_thread.run_sync(lambda: render.rendered(path, index, media, window, viewport, quality))
    except (DisplayError, StopIteration) as exc:
        return problem(422 if isinstance(exc, DisplayError) else 404, str(exc) or "no such frame")
    return Response(data, media_type=media)
