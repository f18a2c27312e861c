"""The browser side: the pages of the viewer and operator console, and the few JSON routes they
need beyond DICOMweb.

Pages (stable URLs, shareable): `/` the study list, `/studies/{StudyInstanceUID}` the viewer,
`/jobs` the on-arrival queue, `/status` the node at a glance, `/login`. Each is the same small
HTML shell naming its script; the scripts and styles are static files of this package
(node/web/static/), plain ES modules with no build step and nothing fetched from elsewhere.
Pages and static files carry no patient data, so they are served without credentials; every
route that returns data (DICOMweb, /api) asks what the DICOMweb API asks (access.py).

/api routes:
- GET  /api/status: node/status.py's report (what `dicomnode status --json` prints), with today's arrivals
  and the analysis findings.
- GET  /api/dictionary: tag -> [keyword, name], for the tag browser.
- GET  /api/jobs?state=&limit=: the queue, newest first, and its depth by state.
- POST /api/jobs/retry {"id": N} or {"failed": true}: as `dicomnode jobs retry`.
- GET  /api/studies/{s}/series/{se}/instances/{i}/frames/{n}/processed?op=...: a frame processed
  by node/processing/enhance.py (scikit-image), as PNG; figures (threshold, area) in X-Figures.
POSTs must be application/json: a cross-site form cannot send that without a CORS preflight,
which the node refuses, so a page elsewhere cannot make a logged-in browser retry jobs.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import anyio
from PIL import Image
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomnode.errors import DisplayError
from dicomnode.node import status
from dicomnode.node.processing import enhance
from dicomnode.node.web.context import Web, problem
from dicomnode.node.web.pictures import BadParameter, rendering_params
from dicomnode.node.web.wado import named

STATIC = Path(__file__).with_name("static")
PAGES = {"list": "Studies", "viewer": "Viewer", "jobs": "Jobs", "status": "Status", "login": "Sign in"}
# the pages' paths, open without credentials (access.py): they are shells, the data comes from /api and /dicom-web
PAGE_PATH = re.compile(r"^/(?:|jobs|status|login|studies/[0-9.]{1,64})$")
PROCESSED = "/api/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/processed"


def routes() -> list[Route | Mount]:
    return [
        Route("/", _page("list"), methods=["GET"]),
        Route("/studies/{study}", _page("viewer"), methods=["GET"]),
        Route("/jobs", _page("jobs"), methods=["GET"]),
        Route("/status", _page("status"), methods=["GET"]),
        Route("/login", _page("login"), methods=["GET"]),
        Route("/api/status", api_status, methods=["GET"]),
        Route("/api/jobs", api_jobs, methods=["GET"]),
        Route("/api/jobs/retry", api_retry, methods=["POST"]),
        Route("/api/dictionary", api_dictionary, methods=["GET"]),
        Route(PROCESSED, api_processed, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def is_open(path: str) -> bool:
    return path.startswith("/static/") or PAGE_PATH.match(path) is not None


def _page(name: str):  # type: ignore[no-untyped-def]
    async def page(request: Request) -> Response:
        return HTMLResponse(shell(name), headers={"Cache-Control": "no-cache",
                                                  # nothing but the node: scripts, styles, images, requests
                                                  "Content-Security-Policy": "default-src 'self'; img-src 'self' "
                                                  "blob: data:; style-src 'self'; object-src 'none'; "
                                                  "frame-ancestors 'none'"})
    return page


def shell(name: str) -> str:
    title = html.escape(PAGES[name])
    return f"""<!doctype html>
<html lang="en" data-page="{name}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · dicomnode</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css">
<script type="module" src="/static/{name}.js"></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top" role="banner">
  <span class="brand">dicomnode</span>
  <nav aria-label="Main">
    <a href="/" data-nav="list">Studies</a>
    <a href="/jobs" data-nav="jobs">Jobs</a>
    <a href="/status" data-nav="status">Status</a>
  </nav>
  <span class="who" id="who"></span>
</header>
<main id="main" tabindex="-1"></main>
</body>
</html>
"""


async def api_status(request: Request) -> Response:
    web: Web = request.app.state.web
    report = await anyio.to_thread.run_sync(lambda: status.report(web.settings, web.archive, today=True))
    return JSONResponse(report)


async def api_jobs(request: Request) -> Response:
    web: Web = request.app.state.web
    state = request.query_params.get("state") or None
    if state not in (None, "pending", "running", "failed", "done"):
        return problem(400, "state: pending, running, failed or done")
    limit_text = request.query_params.get("limit", "200")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 5000:
        return problem(400, "limit: 1 to 5000")

    def read() -> dict[str, object]:
        return {"depth": web.archive.jobs.depth(), "jobs": web.archive.jobs.list(state, int(limit_text))}

    return JSONResponse(await anyio.to_thread.run_sync(read))


async def api_retry(request: Request) -> Response:
    web: Web = request.app.state.web
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return problem(415, "send application/json: {\"id\": N} or {\"failed\": true}")
    try:
        body = json.loads(await request.body() or b"{}")
        job_id, failed = body.get("id"), bool(body.get("failed"))
        if not failed and not isinstance(job_id, int):
            raise ValueError
    except (ValueError, AttributeError):
        return problem(400, "send {\"id\": N} or {\"failed\": true}")
    n = await anyio.to_thread.run_sync(lambda: web.archive.jobs.retry(None if failed else job_id, all_failed=failed))
    return JSONResponse({"requeued": n})


def api_dictionary(_request: Request) -> Response:
    """The data dictionary (tag -> keyword, name) for the tag browser: pydicom's, so the viewer
    names elements as the CLI does. Cached by the browser for a day."""
    from pydicom.datadict import DicomDictionary

    return JSONResponse({f"{tag:08X}": [entry[4], entry[2]] for tag, entry in DicomDictionary.items()},
                        headers={"Cache-Control": "private, max-age=86400"})


async def api_processed(request: Request) -> Response:
    web, rows = await named(request, "no such instance in the archive")
    row = rows[0]
    text = request.path_params["frames"]
    frames = int(row.get("NumberOfFrames") or 1)
    if not text.isdigit() or not 1 <= int(text) <= frames:
        return problem(400, f"one frame number, 1 to {frames}")
    q = dict(request.query_params)
    try:
        window = rendering_params(request)["window"]
    except BadParameter as exc:
        return problem(400, str(exc))
    path = web.archive.layout.absolute(row["path"])
    try:
        result = await anyio.to_thread.run_sync(
            lambda: enhance.process(path, int(text) - 1, q.pop("op", ""), q, window))
    except enhance.BadRequest as exc:
        return problem(400, str(exc))
    except DisplayError as exc:
        return problem(422, str(exc))
    buf = io.BytesIO()
    Image.fromarray(result.image).save(buf, format="PNG", compress_level=1)
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"X-Figures": json.dumps(result.figures), "Cache-Control": "private, max-age=60"})
