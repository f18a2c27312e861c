"""Real peers for the tests: the node as a subprocess, DCMTK's command-line tools, Orthanc.

Servers listen on loopback ports chosen at run time (the node on port 0,
announced by its ready line) and are stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netutil import free_port, wait_port  # noqa: F401 - re-exported for the tests

ROOT = Path(__file__).resolve().parents[1]
DICOMNODE = [sys.executable, "-m", "node.cli"]
READY = re.compile(r"dicomnode listening on (\S+):(\d+) as (\S+)")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; scripts/test installs it (apt-get install dcmtk orthanc)")
    return path


def run(cmd: list[str], timeout: float = 120, check: bool = False, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return p


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `dicomnode` command line, in a subprocess."""
    return run([*DICOMNODE, *args], timeout=timeout, check=check, cwd=ROOT)


@dataclass
class Node:
    storage: Path
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    aet: str = "DICOMNODE"
    log_path: Path | None = None

    def start(self, timeout: float = 30) -> "Node":
        self.log_path = self.storage.parent / f"{self.storage.name}-node.log"
        log = open(self.log_path, "a")
        args = [*DICOMNODE, "serve", "--storage", str(self.storage), "--host", "127.0.0.1", "--port",
                str(self.port or 0), "--aet", self.aet, *self.extra]
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
    def peer(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--storage", str(self.storage), check=check)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    nodes: list[Node] = []

    def factory(name: str = "archive", env: dict[str, str] | None = None, extra: list[str] | None = None,
                start: bool = True) -> Node:
        n = Node(tmp_path / name, {"DICOMNODE_MIN_FREE_MB": "0", **(env or {})}, extra or [])
        nodes.append(n)
        return n.start() if start else n

    yield factory
    for n in nodes:
        n.stop()


@pytest.fixture
def node(make_node) -> Node:  # type: ignore[no-untyped-def]
    return make_node()


def storescu(node: Node, *files: Path | str, extra: list[str] | None = None,
             calling: str = "STORESCU", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    need("storescu")
    return run(["storescu", "-aet", calling, "-aec", node.aet, *(extra or []), "127.0.0.1", str(node.port),
                *map(str, files)], timeout=timeout)


def pydicom_test_files() -> list[Path]:
    """The files pydicom ships (its test_files folder only: never the network download)."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
