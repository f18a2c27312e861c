"""The HTTP side: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /dicom-web and the browser viewer
and console on it (console.py), one Starlette app.

Routes are thin: each calls the archive's own functions (storage/query for
searches, the ingest path for STOW, the stored files for WADO). The app runs
in a process of its own next to the DIMSE listener (node/web/server.py), so
HTTP work never takes the receiving process's interpreter.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from dicomnode.node import services
from dicomnode.node.settings import Settings
from dicomnode.node.web import access, console, create, guard, health, pictures, qido, stow, wado
from dicomnode.node.web.context import BASE, Problem, Web, problem

STUDY = BASE + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def routes() -> list[Route | Mount]:
    return [
        # QIDO-RS
        Route(BASE + "/studies", qido.search, methods=["GET"]),
        Route(BASE + "/series", qido.search, methods=["GET"]),
        Route(BASE + "/instances", qido.search, methods=["GET"]),
        Route(STUDY + "/series", qido.search, methods=["GET"]),
        Route(STUDY + "/instances", qido.search, methods=["GET"]),
        Route(SERIES + "/instances", qido.search, methods=["GET"]),
        # STOW-RS
        Route(BASE + "/studies", stow.store, methods=["POST"]),
        Route(STUDY, stow.store, methods=["POST"]),
        # WADO-RS
        Route(STUDY, wado.retrieve, methods=["GET"]),
        Route(SERIES, wado.retrieve, methods=["GET"]),
        Route(INSTANCE, wado.retrieve, methods=["GET"]),
        Route(STUDY + "/metadata", wado.metadata, methods=["GET"]),
        Route(SERIES + "/metadata", wado.metadata, methods=["GET"]),
        Route(INSTANCE + "/metadata", wado.metadata, methods=["GET"]),
        Route(INSTANCE + "/frames/{frames}", wado.frames, methods=["GET"]),
        Route(INSTANCE + "/bulkdata/{path:path}", wado.bulkdata, methods=["GET"]),
        Route(STUDY + "/rendered", pictures.rendered, methods=["GET"]),
        Route(SERIES + "/rendered", pictures.rendered, methods=["GET"]),
        Route(INSTANCE + "/rendered", pictures.rendered, methods=["GET"]),
        Route(INSTANCE + "/frames/{frames}/rendered", pictures.rendered, methods=["GET"]),
        Route(STUDY + "/thumbnail", pictures.thumbnail, methods=["GET"]),
        Route(SERIES + "/thumbnail", pictures.thumbnail, methods=["GET"]),
        Route(INSTANCE + "/thumbnail", pictures.thumbnail, methods=["GET"]),
        Route(INSTANCE + "/frames/{frames}/thumbnail", pictures.thumbnail, methods=["GET"]),
        # WADO-URI
        Route(BASE + "/wado", pictures.wado_uri, methods=["GET"]),
        Route("/wado", pictures.wado_uri, methods=["GET"]),
        # probes and Prometheus metrics (outside /dicom-web: they are about the node, not its data)
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.scrape, methods=["GET"]),
        # new objects from non-DICOM files (images, arrays, PDF, video), as `dicomnode create` makes them
        Route("/api/create", create.create, methods=["POST"]),
        # the viewer and operator console (pages, their static files, /api)
        *console.routes(),
    ]


def create_app(settings: Settings) -> Starlette:
    arc = services.archive(settings)
    app = Starlette(routes=routes(), middleware=[Middleware(guard.BodyPace, chunk_timeout=settings.network_timeout),
                                                Middleware(access.Access, settings=settings)],
                    exception_handlers={Problem: _problem})
    app.state.web = Web(settings, arc, services.ingester(settings, arc))
    return app


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem(exc.status, exc.message)
