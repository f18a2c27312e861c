"""The HTTP side as a process of its own, started and stopped by `dicomnode serve`.

A separate process: HTTP work (JSON encoding, rendering pictures, streaming
files) never takes the interpreter the DIMSE receiver needs. It opens the
archive itself (as the worker process does) and binds its socket before it
says it is ready, so `serve` can print where it listens (port 0 included) or
why it cannot. It stops when told (SIGTERM: uvicorn finishes open requests)
or when `serve` is gone (kill -9).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from dicomnode.node.logs import setup_logging
from dicomnode.node.settings import Settings

log = logging.getLogger("dicomnode")
READY_SECONDS = 60.0


def _main(settings: Settings, report: Any) -> None:
    setup_logging(settings.log_level)
    try:
        import uvicorn

        from dicomnode.node.web import guard
        from dicomnode.node.web.app import create_app

        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.http_host, settings.http_port))
        sock.listen(128)
        guard.configure(settings.http_max_per_host, settings.http_head_timeout)
        app = create_app(settings)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                ssl_certfile=settings.web_tls_cert or None, ssl_keyfile=settings.web_tls_key or None,
                                timeout_keep_alive=settings.http_head_timeout, limit_concurrency=256,
                                h11_max_incomplete_event_size=1 << 20, http=guard.GuardedH11)
        server = uvicorn.Server(config)
    except Exception as exc:  # not listening: serve says why and stops
        report.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    report.put(("ready", sock.getsockname()[1]))
    parent = os.getppid()

    def orphaned() -> None:  # serve was killed without telling us
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, daemon=True).start()
    server.run(sockets=[sock])


class WebProcess:
    """The parent's handle on the HTTP process."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._report = ctx.Queue()
        self._proc = ctx.Process(target=_main, args=(settings, self._report), name="dicomnode-web", daemon=False)
        self.port = 0

    def start(self) -> int:
        """Start and wait until it listens; its port, or OSError with the child's reason."""
        self._proc.start()
        try:
            kind, value = self._report.get(timeout=READY_SECONDS)
        except Exception:
            self.stop()
            raise OSError("the HTTP process did not start") from None
        if kind != "ready":
            self.stop()
            raise OSError(value)
        self.port = int(value)
        return self.port

    def stop(self, timeout: float = 30) -> None:
        if self._proc.is_alive():
            self._proc.terminate()  # SIGTERM: uvicorn lets open requests finish
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
