"""Who may call the HTTP side, from where, and how answers are packed.

- Authentication (`[web] auth`): none (loopback only, unless `insecure`),
  basic (users with PBKDF2 password hashes in the configuration), or bearer
  (JWTs checked with PyJWT against a shared secret or the issuer's JWKS).
  401 with a WWW-Authenticate challenge when credentials are missing or wrong.
- CORS: off unless `cors_origins` names origins; then their requests and
  OPTIONS preflights are answered, Authorization allowed.
- gzip for JSON answers when the client accepts it (never for DICOM, whose
  pixel data does not shrink and whose streams must not be buffered).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomnode.node.identity import TokenRefused, Tokens, Users, token_user
from dicomnode.node.settings import Settings
from dicomnode.node.web import console

JSON_TYPES = (b"application/dicom+json", b"application/json")
# Probes (node/web/health.py): load balancers and orchestrators call them without credentials, and
# they tell no more than up or not (and why). /metrics is not among them: it asks what the API asks.
OPEN_PATHS = ("/healthz", "/readyz")


class Access:
    """ASGI middleware: authentication, CORS, gzip of JSON."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.users = Users(settings.web_users)
        self.tokens = Tokens(settings.jwt_secret, settings.jwt_jwks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = origin if origin and (origin in self.settings.cors_origins or "*" in self.settings.cors_origins) \
            else None
        if scope["method"] == "OPTIONS" and headers.get("access-control-request-method"):
            await self._preflight(send, allowed)
            return
        path = scope["path"]
        why = None if path in OPEN_PATHS or console.is_open(path) else self._refusal(headers, scope)
        if why is not None:
            challenge = self._challenge()
            if headers.get("x-dicomnode-login"):
                # the viewer's own requests: its sign-in page asks, not the browser's Basic dialog
                challenge = "Form" + challenge
            await _plain(send, 401, why, {"WWW-Authenticate": challenge}, allowed)
            return
        gzip_ok = "gzip" in headers.get("accept-encoding", "")
        await self.app(scope, receive, _Packer(send, allowed, gzip_ok).send)

    def _challenge(self) -> str:
        return 'Bearer realm="dicomnode"' if self.settings.web_auth == "bearer" else 'Basic realm="dicomnode"'

    def _refusal(self, headers: Headers, scope: Scope) -> str | None:
        """Why a request may not pass, or None; who it is goes into the scope (`dicomnode.user`)."""
        mode = self.settings.web_auth
        if mode == "none":
            return None
        auth = headers.get("authorization", "")
        scheme, _, credential = auth.partition(" ")
        if mode == "basic":
            if scheme.lower() != "basic":
                return "authentication required (HTTP Basic)"
            try:
                name, _, password = base64.b64decode(credential).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return "malformed Basic credentials"
            if not self.users.verify(name, password):
                return "wrong user name or password"
            scope["dicomnode.user"] = name
            return None
        if scheme.lower() != "bearer" or not credential:
            return "authentication required (Bearer token)"
        try:
            scope["dicomnode.user"] = token_user(self.tokens.claims(credential.strip())) or None
        except TokenRefused as exc:
            return str(exc)
        return None

    async def _preflight(self, send: Send, origin: str | None) -> None:
        if origin is None:
            await _plain(send, 403, "cross-origin requests are not allowed (cors_origins)", {}, None)
            return
        await _plain(send, 204, "", {
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Accept, Content-Type, X-Dicomnode-Login",
            "Access-Control-Max-Age": "600"}, None)


async def _plain(send: Send, status: int, text: str, headers: dict[str, str], origin: str | None) -> None:
    body = text.encode()
    raw = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if origin:
        raw += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Packer:
    """Adds CORS headers, and gzips a JSON answer as it streams (never buffered whole)."""

    def __init__(self, send: Send, origin: str | None, gzip_ok: bool) -> None:
        self._send = send
        self.origin = origin
        self.gzip_ok = gzip_ok
        self.zip: Any = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(raw=list(message["headers"]))
            if self.origin:
                headers["Access-Control-Allow-Origin"] = self.origin
                headers.append("Vary", "Origin")
            ctype = headers.get("content-type", "").encode()
            if self.gzip_ok and ctype.startswith(JSON_TYPES) and "content-encoding" not in headers:
                self.zip = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container
                headers["Content-Encoding"] = "gzip"
                headers.append("Vary", "Accept-Encoding")
                if "content-length" in headers:
                    del headers["content-length"]
            await self._send({**message, "headers": headers.raw})
            return
        if self.zip is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        more = message.get("more_body", False)
        body = self.zip.compress(message.get("body", b"")) + (b"" if more else self.zip.flush())
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
