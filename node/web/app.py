"""The HTTP side: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /dicom-web, one Starlette app.

Routes are thin: each calls the archive's own functions (storage/query for
searches, the ingest path for STOW, the stored files for WADO). The app runs
in a process of its own next to the DIMSE listener (node/web/server.py), so
HTTP work never takes the receiving process's interpreter.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from dicomnode.node import services
from dicomnode.node.settings import Settings
from dicomnode.node.web import access, pictures, qido, stow, wado
from dicomnode.node.web.context import BASE, Web

STUDY = BASE + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def routes() -> list[Route]:
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
    ]


def create_app(settings: Settings) -> Starlette:
    arc = services.archive(settings)
    app = Starlette(routes=routes(), middleware=[Middleware(access.Access, settings=settings)])
    app.state.web = Web(settings, arc, services.ingester(settings, arc))
    return app
