"""The node as a subprocess of the tests and benchmarks: `dicomnode serve` on a free loopback
port (port 0, announced by its ready line), stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.proc import DICOMNODE, ROOT, cli, need, run

READY = re.compile(r"dicomnode listening on (\S+):(\d+) as (\S+)")
TLS_READY = re.compile(r"dicomnode listening with TLS on (\S+):(\d+) as (\S+)")
WEB_READY = re.compile(r"dicomnode web on (https?)://\S+:(\d+)/dicom-web")


@dataclass
class Node:
    storage: Path
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    aet: str = "DICOMNODE"
    log_path: Path | None = None
    web: bool = False  # the HTTP side too (a free port), else --no-web
    http_port: int = 0
    http_scheme: str = "http"
    tls: bool = False  # a TLS listener is configured: wait for it too ([tls] in a --config file)
    tls_port: int = 0

    def start(self, timeout: float = 30) -> Node:
        self.log_path = self.storage.parent / f"{self.storage.name}-node.log"
        log = open(self.log_path, "a")
        args = [*DICOMNODE, "serve", "--storage", str(self.storage), "--host", "127.0.0.1", "--port",
                str(self.port or 0), "--aet", self.aet, *(["--http-port", "0"] if self.web else ["--no-web"]),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                                     env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = READY.search(line)
            if m:
                self.port = int(m.group(2))
                if not self.web and not self.tls:
                    return self
            t = TLS_READY.search(line)
            if t:
                self.tls_port = int(t.group(2))
                if not self.web:
                    return self
            w = WEB_READY.search(line)
            if w:
                self.http_scheme, self.http_port = w.group(1), int(w.group(2))
                return self
        self.stop()
        raise AssertionError(f"node did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    @property
    def dicomweb(self) -> str:
        return f"{self.http_scheme}://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def peer(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command on this node's archive (and its index, when started with --db)."""
        db = self.extra[self.extra.index("--db") + 1:][:1] if "--db" in self.extra else []
        return cli(*args, "--storage", str(self.storage), *(["--db", *db] if db else []), check=check)


def storescu(node: Node, *files: Path | str, extra: list[str] | None = None,
             calling: str = "STORESCU", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    need("storescu")
    return run(["storescu", "-aet", calling, "-aec", node.aet, *(extra or []), "127.0.0.1", str(node.port),
                *map(str, files)], timeout=timeout)
