"""node.toml files for tests and benchmarks, written by one writer (tomli-w) from plain dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def remotes(entries: dict[str, tuple[str, int, list[str]]], host: str = "127.0.0.1") -> dict[str, Any]:
    """[remotes.NAME] tables from NAME -> (AE title, port, services)."""
    return {name: {"aet": aet, "host": host, "port": port, "services": services}
            for name, (aet, port, services) in entries.items()}
