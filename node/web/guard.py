"""What keeps a hostile or broken HTTP client from taking the web side away from everyone else.

uvicorn bounds a request's head (h11_max_incomplete_event_size: 1 MiB, so
the header count too) and the connections in all (limit_concurrency; beyond,
503), but not how long a client may take: 300 connections that each send
half a request line and then nothing held every slot, and every other client
got 503 (tried before this module). So:

- Connections per client address are capped (`[web] max_connections_per_host`);
  more are closed at once, before they can take a slot.
- A request's head must arrive whole within `[web] head_timeout` seconds of
  the connection (or of the previous response): a slowloris is cut off.
- A request body must keep coming: each chunk within `network_timeout`
  and, after `BODY_GRACE_SECONDS`, at no less than `MIN_BODY_RATE` bytes a
  second on average; otherwise 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("dicomnode")

MAX_PER_HOST = 64  # [web] max_connections_per_host (configure())
HEAD_SECONDS = 15  # [web] head_timeout
BODY_GRACE_SECONDS = 30.0
MIN_BODY_RATE = 1024  # bytes/s: a modem's worth; a real upload is far above it


def configure(max_per_host: int, head_seconds: int) -> None:
    """The settings' limits, for the protocol instances uvicorn makes (one process: the web side)."""
    global MAX_PER_HOST, HEAD_SECONDS
    MAX_PER_HOST, HEAD_SECONDS = max_per_host, head_seconds


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a per-address connection cap and a deadline for request heads."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is not None and sum(1 for c in self.connections if _host(c) == host) > MAX_PER_HOST:
            log.warning("HTTP connection from %s closed: %d connections from it already open", host, MAX_PER_HOST)
            transport.close()
            return
        self._dn_arm()

    def _dn_arm(self) -> None:
        cycle = self.cycle
        self.__dict__["_dn_head_timer"] = self.loop.call_later(HEAD_SECONDS, self._dn_head_overdue, cycle)

    def _dn_head_overdue(self, cycle_then: Any) -> None:
        """No new request head since the timer was armed: a client that sends nothing, or too slowly
        (an idle keep-alive connection is closed too, quietly: it holds a slot as well)."""
        if self.cycle is not cycle_then or self.transport.is_closing():
            return
        if self.conn.their_state in (h11.IDLE, h11.DONE):
            if self.conn.trailing_data[0]:
                log.warning("HTTP connection from %s closed: no whole request head in %.0f s",
                            self.client[0] if self.client else "?", HEAD_SECONDS)
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        timer = self.__dict__.get("_dn_head_timer")
        if timer is not None:
            timer.cancel()
        if not self.transport.is_closing():
            self._dn_arm()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = self.__dict__.get("_dn_head_timer")
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)


def _host(connection: Any) -> str | None:
    client = getattr(connection, "client", None)
    return str(client[0]) if client else None


class SlowBody(Exception):
    pass


class BodyPace:
    """ASGI middleware: a request body that stalls or trickles is answered 408 (connection closed)."""

    def __init__(self, app: ASGIApp, chunk_timeout: float) -> None:
        self.app = app
        self.chunk_timeout = chunk_timeout or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        got = 0
        responding = False

        async def paced() -> Message:
            nonlocal got
            with anyio.move_on_after(self.chunk_timeout) as scopeguard:
                message = await receive()
            if scopeguard.cancelled_caught:
                raise SlowBody(f"no body data for {self.chunk_timeout:.0f} s")
            got += len(message.get("body", b""))
            elapsed = time.monotonic() - started
            if message.get("more_body") and elapsed > BODY_GRACE_SECONDS and got / elapsed < MIN_BODY_RATE:
                raise SlowBody(f"request body arriving at {got / elapsed:.0f} bytes/s")
            return message

        async def watched(message: Message) -> None:
            nonlocal responding
            responding = True
            await send(message)

        try:
            await self.app(scope, paced, watched)
        except* SlowBody as group:  # raised in a route's task group, it arrives wrapped
            exc = group.exceptions[0]
            client = scope.get("client") or ("?",)
            log.warning("HTTP request from %s cut off: %s", client[0], exc)
            if responding:
                raise
            body = f'{{"error": "{exc}"}}'.encode()
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
