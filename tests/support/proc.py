"""Running commands: the real `dicomnode` command line and the peers' tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DICOMNODE = [sys.executable, "-m", "dicomnode"]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; scripts/test installs it (apt-get install dcmtk orthanc postgresql)")
    return path


def run(cmd: list[str], timeout: float = 120, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {p.returncode}\nstdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-3000:]}")
    return p


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `dicomnode` command line, in a subprocess."""
    return run([*DICOMNODE, *args], timeout=timeout, check=check, cwd=ROOT)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its children (storescp --fork, Orthanc's single process)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
