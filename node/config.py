"""Settings: built-in defaults, then node.toml, then DICOMNODE_* variables, then flags.

Every setting has one name, used as its key in its TOML section and, upper-
cased behind ``DICOMNODE_``, as its environment variable (``port`` in
``[network]`` is ``DICOMNODE_PORT``). config/node.toml documents them all
with the same defaults as here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DICOMNODE_"


class ConfigError(ValueError):
    pass


def _setting(section: str, default: Any, help: str) -> Any:
    return field(default_factory=lambda: default, metadata={"section": section, "help": help})


@dataclass
class Settings:
    aet: str = _setting("node", "DICOMNODE", "this node's AE title")
    host: str = _setting("network", "0.0.0.0", "address to listen on")
    port: int = _setting("network", 11112, "TCP port to listen on")
    max_associations: int = _setting("network", 16, "concurrent associations accepted")
    max_pdu: int = _setting("network", 65536, "maximum PDU length we receive (0 = unlimited)")
    acse_timeout: float = _setting("network", 30.0, "seconds to wait for association messages")
    dimse_timeout: float = _setting("network", 60.0, "seconds to wait for DIMSE messages")
    network_timeout: float = _setting("network", 60.0, "seconds an idle association is kept")
    shutdown_grace: float = _setting("network", 30.0, "seconds SIGTERM waits for associations to finish")
    storage: str = _setting("storage", "./data", "archive folder (objects, temp files, default index)")
    db: str = _setting("storage", "", "SQLAlchemy URL of the index; empty = SQLite in the archive folder")
    duplicate_policy: str = _setting("storage", "keep", "keep | overwrite | reject a SOP Instance UID seen before")
    min_free_mb: int = _setting("storage", 512, "refuse stores (0xA700) when less disk is free")
    require_called_aet: bool = _setting("security", True, "reject associations not addressed to our AE title")
    allowed_calling: list[str] = _setting("security", [], "calling AE titles allowed in; empty = anyone")
    log_level: str = _setting("logging", "INFO", "DEBUG | INFO | WARNING | ERROR")

    @property
    def storage_path(self) -> Path:
        return Path(self.storage).expanduser()

    @property
    def db_url(self) -> str | None:
        return self.db or None


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Resolve settings; `overrides` are the command-line flags (None = not given)."""
    values: dict[str, Any] = {}
    path = config_file or (Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None)
    if path is not None:
        values.update(_from_toml(path))
    values.update(_from_env())
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings()
    for f in fields(Settings):
        if f.name in values:
            setattr(settings, f.name, _coerce(f.name, f.type, values[f.name]))
    _validate(settings)
    return settings


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    known = {f.name: f.metadata["section"] for f in fields(Settings)}
    out: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        for key, value in table.items():
            if known.get(key) == section:
                out[key] = value
            elif section in {"node", "network", "storage", "security", "logging"}:
                raise ConfigError(f"{path}: unknown setting {key!r} in [{section}]")
    return out


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Settings):
        raw = os.environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            out[f.name] = raw
    return out


def _coerce(name: str, kind: Any, value: Any) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: cannot read {value!r} as {kind}") from None


def _validate(s: Settings) -> None:
    if not 1 <= len(s.aet) <= 16:
        raise ConfigError(f"aet {s.aet!r}: an AE title has 1 to 16 characters")
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"port {s.port}: not a TCP port")
    if s.duplicate_policy not in ("keep", "overwrite", "reject"):
        raise ConfigError(f"duplicate_policy {s.duplicate_policy!r}: keep, overwrite or reject")
    for title in s.allowed_calling:
        if not 1 <= len(title) <= 16:
            raise ConfigError(f"allowed_calling: {title!r} is not an AE title")
