"""What every route of the web side shares: the archive it serves, its URL, how errors look."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive
from dicomnode.storage.archive.ingest import Ingester

DICOM_JSON = "application/dicom+json"
BASE = "/dicom-web"


@dataclass
class Web:
    settings: Settings
    archive: Archive
    ingester: Ingester

    def base_url(self, request: Request) -> str:
        """The absolute URL of /dicom-web as the client reaches it: the configured public URL, else
        what a reverse proxy says (X-Forwarded-Proto/-Host/-Prefix), else the request's own."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        h = request.headers
        proto = h.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
        forwarded = h.get("x-forwarded-host")
        host = (forwarded or h.get("host", request.url.netloc)).split(",")[0].strip()
        server = request.scope.get("server")
        if not forwarded and server and not host.endswith("]") and ":" not in host \
                and server[1] != {"http": 80, "https": 443}.get(proto):
            host = f"{host}:{server[1]}"  # some clients (dicomweb-client) send Host without the port
        prefix = h.get("x-forwarded-prefix", "").rstrip("/")
        return f"{proto}://{host}{prefix}{BASE}"


class Problem(Exception):
    """Raised by a route's helpers to answer with problem(status, message); the app turns it into
    the response, so routes need not pass an error back through every layer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error with its reason: a JSON object {"error": ...}, and the reason in a Warning header too."""
    body = json.dumps({"error": message}, ensure_ascii=False).encode()
    one_line = " ".join(message.split())[:200].replace('"', "'")  # a header value: no line breaks, no quotes
    warning = {"Warning": f'299 dicomnode: "{one_line}"'.encode("ascii", "replace").decode()}
    return Response(body, status_code=status, media_type="application/json", headers={**warning, **(headers or {})})
