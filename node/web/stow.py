"""STOW-RS (PS3.18 10.5): objects stored over HTTP through the very same ingest path as C-STORE.

Each part of the multipart/related body streams into a temp file in the
archive (hashed as it is written), then goes through the ingest path: the
same checks, duplicate policy, fsync, rename, index commit and on-arrival
jobs; only then is it listed as stored. Finished parts are ingested side by
side while the rest of the body arrives (their fsyncs overlap and share the
archive's group commits). Memory holds one chunk of the body, whatever a
part's size. The answer lists what was stored (ReferencedSOPSequence
with RetrieveURLs) and what failed, with the DICOM status as FailureReason:
200 when everything was stored, 202 when some parts failed, 409 when none
was stored, 507 (Insufficient Storage) when none was stored for want of room
(0xA700: a storage quota, the free-space reserve, a full disk).
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from starlette.requests import Request
from starlette.responses import Response

from dicomnode.node import metrics
from dicomnode.node.web import dicomjson
from dicomnode.node.web.context import DICOM_JSON, Web, problem
from dicomnode.node.web.guard import SlowBody
from dicomnode.node.web.multipart import Part, Reader
from dicomnode.node.web.negotiation import parse_accept
from dicomnode.storage.archive.ingest import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, Outcome

PROCESSING_FAILURE = 0x0110
IN_FLIGHT = 4  # parts of one request being ingested at once


async def store(request: Request) -> Response:
    web: Web = request.app.state.web
    ctype = parse_accept(request.headers.get("content-type"))[0]
    boundary = ctype.params.get("boundary")
    if ctype.media_type != "multipart/related" or ctype.part_type not in (None, "application/dicom") or not boundary:
        return problem(415, 'STOW-RS takes multipart/related; type="application/dicom" with a boundary')
    limit = web.settings.max_stow_mb * (1 << 20)
    declared = request.headers.get("content-length")
    if limit and declared and declared.isdigit() and int(declared) > limit:
        return problem(413, f"the request is larger than max_stow_mb ({web.settings.max_stow_mb} MB)")
    study = request.path_params.get("study")
    peer = f"http:{request.client.host if request.client else '?'}"
    results: list[tuple[Part, Outcome] | None] = []

    def open_part(headers: dict[str, str]) -> Any:
        kind = parse_accept(headers.get("content-type", "application/dicom"))[0].media_type
        return web.ingester.new_sink() if kind == "application/dicom" else None

    reader = Reader(boundary, open_part)
    # Finished parts are ingested side by side (up to IN_FLIGHT) while the body is still being
    # read, so their fsyncs overlap and share group commits; a full pipeline stops the reading.
    room = anyio.Semaphore(IN_FLIGHT)

    async def ingest(slot: int, part: Part) -> None:
        try:
            t0 = time.perf_counter()
            size = part.sink.size
            out = await anyio.to_thread.run_sync(lambda: web.ingester.ingest(part.sink, study=study, peer=peer))
            results[slot] = (part, out)
            metrics.object_received("STOW-RS", out.status, size, time.perf_counter() - t0 if out.ok else None)
        finally:
            room.release()

    async def start_done(tg: TaskGroup) -> None:
        while reader.done:
            part = reader.done.pop(0)
            results.append((part, Outcome(CANNOT_UNDERSTAND, "not an application/dicom part", action="failed"))
                           if part.sink is None else None)
            if part.sink is not None:
                await room.acquire()
                tg.start_soon(ingest, len(results) - 1, part)

    refusal: Response | str | None = None
    received = 0
    async with anyio.create_task_group() as tg:  # left only when every started ingest has ended
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if limit and received > limit:
                    refusal = problem(413, f"the request is larger than max_stow_mb ({web.settings.max_stow_mb} MB)")
                    break
                await anyio.to_thread.run_sync(reader.feed, chunk)
                await start_done(tg)
            else:
                await anyio.to_thread.run_sync(reader.finish)
                await start_done(tg)
        except SlowBody:
            raise  # guard.BodyPace answers 408 and closes; the parts taken so far stay stored
        except Exception as exc:  # python-multipart's parse errors, a connection cut off
            refusal = f"malformed multipart body ({type(exc).__name__})"
    done = [r for r in results if r is not None]
    stored = sum(1 for _p, o in done if o.ok)
    if isinstance(refusal, Response):
        _discard(reader)
        return refusal
    if refusal is not None:
        _discard(reader)
        return problem(400, f"{refusal}; {stored} part(s) before it stored")
    if not reader.complete:
        _discard(reader)
        return problem(400, f"the multipart body does not end with its closing boundary; {stored} part(s) "
                       "before the cut stored")
    if not done:
        return problem(400, "no parts in the multipart body")
    return _answer(web.base_url(request), study, done)


def _discard(reader: Reader) -> None:
    """An unfinished part's temp file goes (a finished one was ingested or discarded already)."""
    part = reader._part
    if part is not None and part.sink is not None:
        part.sink.discard()


def _answer(base: str, study: str | None, results: list[tuple[Part, Outcome]]) -> Response:
    rsp = Dataset()
    stored, failed = [], []
    for _part, out in results:
        item = Dataset()
        header = out.identity
        item.ReferencedSOPClassUID = header.get("SOPClassUID", "")
        item.ReferencedSOPInstanceUID = out.sop_instance_uid or header.get("SOPInstanceUID", "")
        if out.ok:
            item.RetrieveURL = (f"{base}/studies/{header.get('StudyInstanceUID')}/series/"
                                f"{header.get('SeriesInstanceUID')}/instances/{item.ReferencedSOPInstanceUID}")
            stored.append(item)
        else:
            item.FailureReason = out.status
            failed.append(item)
    if study:
        rsp.RetrieveURL = f"{base}/studies/{study}"
    if stored:
        rsp.ReferencedSOPSequence = Sequence(stored)
    if failed:
        rsp.FailedSOPSequence = Sequence(failed)
    status = 200 if not failed else 202 if stored else 409 if any(
        item.FailureReason != OUT_OF_RESOURCES for item in failed) else 507
    return Response(json.dumps(dicomjson.to_json(rsp)).encode(), status_code=status, media_type=DICOM_JSON)
