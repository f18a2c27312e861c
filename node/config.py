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


ACTIONS = ("analyze", "anonymize", "convert")  # plus forward:NAME and anonymize+forward:NAME
SERVICES = ("store", "find", "move", "get")


@dataclass(frozen=True)
class Remote:
    name: str
    aet: str
    host: str
    port: int
    services: tuple[str, ...] = SERVICES


@dataclass(frozen=True)
class Rule:
    """Actions for the instances whose calling AE, modality and SOP class match (empty = any)."""

    actions: tuple[str, ...]
    calling_aet: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()

    def matches(self, calling_aet: str | None, modality: str | None, sop_class: str | None) -> bool:
        return all(not want or (have or "") in want for want, have in (
            (self.calling_aet, calling_aet), (self.modality, modality), (self.sop_class, sop_class)))


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
    extra_sop_classes: list[str] = _setting("storage", [], "private storage SOP class UIDs also accepted")
    require_called_aet: bool = _setting("security", True, "reject associations not addressed to our AE title")
    allowed_calling: list[str] = _setting("security", [], "calling AE titles allowed in; empty = anyone")
    open_services: list[str] = _setting("security", list(SERVICES),
                                        "services a calling AE not listed in [remotes] may use")
    max_results: int = _setting("query", 0, "C-FIND matches sent at most (0 = all); more end with 0xA700")
    pn_case_insensitive: bool = _setting("query", True, "person names match regardless of case")
    log_level: str = _setting("logging", "INFO", "DEBUG | INFO | WARNING | ERROR")
    workers: int = _setting("pipeline", 2, "worker threads running on-arrival jobs (0 = none)")
    max_attempts: int = _setting("pipeline", 10, "attempts before a job stays failed")
    retry_base_seconds: float = _setting("pipeline", 2.0, "first retry delay; doubles per attempt, at most 300 s")
    defer_while_receiving: float = _setting("pipeline", 60.0, "seconds jobs may wait while images are arriving "
                                            "(0 = never wait)")
    default_actions: list[str] = _setting("pipeline", ["analyze"], "actions for every instance when no rule is set")
    anonymize_options: list[str] = _setting("anonymize", [], "PS3.15 E options, e.g. retain_uids, clean_descriptors")
    key_file: str = _setting("anonymize", "", "secret pseudonym key; empty = <storage>/secret/anonymize.key")
    patient_prefix: str = _setting("anonymize", "ANON", "prefix of pseudonymous PatientID / PatientName")
    to_archive: bool = _setting("anonymize", True, "archive the de-identified instance (linked to its original)")
    to_folder: str = _setting("anonymize", "", "also write de-identified instances into this folder")
    delete_original: bool = _setting("anonymize", False, "remove the original once its de-identified copy is safe")
    hold_burned_in: bool = _setting("anonymize", True, "do not forward instances that may show burned-in text")
    convert_formats: list[str] = _setting("convert", ["png", "mp4", "gif", "txt", "json"],
                                          "outputs of the convert action: png, mp4, gif, txt, json")
    png_bits: int = _setting("convert", 16, "grey PNG depth: 16 or 8")
    fps: float = _setting("convert", 0.0, "frame rate of videos; 0 = from the data set (else 10)")
    rules: list["Rule"] = field(default_factory=list, metadata={"section": "pipeline", "help": "[[pipeline.rules]]"})
    remotes: dict[str, "Remote"] = field(default_factory=dict, metadata={"section": "remotes", "help": "[remotes.NAME]"})

    @property
    def storage_path(self) -> Path:
        return Path(self.storage).expanduser()

    @property
    def key_path(self) -> Path:
        return Path(self.key_file).expanduser() if self.key_file else self.storage_path / "secret" / "anonymize.key"

    @property
    def db_url(self) -> str | None:
        return self.db or None

    def remote_by_aet(self, aet: str) -> "Remote | None":
        for r in self.remotes.values():
            if r.aet == aet:
                return r
        return None

    def may_use(self, calling_aet: str, service: str) -> bool:
        """A peer configured in [remotes] may use its listed services; any other, open_services."""
        remote = self.remote_by_aet(calling_aet.strip())
        return service in (remote.services if remote is not None else self.open_services)

    def actions_for(self, calling_aet: str | None, modality: str | None, sop_class: str | None) -> list[str]:
        """The on-arrival actions of one instance: every matching rule's, in order, once each."""
        if not self.rules:
            return list(self.default_actions)
        out: list[str] = []
        for rule in self.rules:
            if rule.matches(calling_aet, modality, sop_class):
                out.extend(a for a in rule.actions if a not in out)
        return out


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
        if f.name in ("rules", "remotes"):
            if f.name in values:
                setattr(settings, f.name, values[f.name])
        elif f.name in values:
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
        if section == "remotes":
            out["remotes"] = {name: _remote(path, name, t) for name, t in table.items()}
            continue
        for key, value in table.items():
            if section == "pipeline" and key == "rules":
                out["rules"] = [_rule(path, i, r) for i, r in enumerate(value)]
            elif known.get(key) == section:
                out[key] = value
            elif section in {"node", "network", "storage", "security", "query", "logging", "pipeline", "anonymize",
                             "convert"}:
                raise ConfigError(f"{path}: unknown setting {key!r} in [{section}]")
    return out


def _strings(v: Any) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(str(x) for x in v)


def _rule(path: Path, i: int, r: Any) -> Rule:
    if not isinstance(r, dict) or "actions" not in r:
        raise ConfigError(f"{path}: [[pipeline.rules]] #{i + 1} needs actions = [...]")
    match = r.get("match", {})
    unknown = set(match) - {"calling_aet", "modality", "sop_class"}
    if unknown:
        raise ConfigError(f"{path}: rule #{i + 1} matches on unknown keys {sorted(unknown)} "
                          "(calling_aet, modality, sop_class)")
    return Rule(_strings(r["actions"]), *(_strings(match.get(k, ())) for k in ("calling_aet", "modality", "sop_class")))


def _remote(path: Path, name: str, t: Any) -> Remote:
    try:
        services = _strings(t.get("services", SERVICES))
        return Remote(name, str(t["aet"]), str(t["host"]), int(t["port"]), services)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"{path}: [remotes.{name}] needs aet, host and port") from None


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
            if isinstance(value, str):  # from the environment: comma-separated
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
    for name in s.open_services:
        if name not in SERVICES:
            raise ConfigError(f"open_services: {name!r} is not one of {', '.join(SERVICES)}")
    for r in s.remotes.values():
        for name in r.services:
            if name not in SERVICES:
                raise ConfigError(f"[remotes.{r.name}] services: {name!r} is not one of {', '.join(SERVICES)}")
    if s.max_results < 0:
        raise ConfigError("max_results: 0 (no limit) or more")
    for title in s.allowed_calling:
        if not 1 <= len(title) <= 16:
            raise ConfigError(f"allowed_calling: {title!r} is not an AE title")
    for uid in s.extra_sop_classes:
        if not uid or len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
            raise ConfigError(f"extra_sop_classes: {uid!r} is not a UID")
    for actions in [s.default_actions, *(r.actions for r in s.rules)]:
        for a in actions:
            kind, _, target = a.partition(":")
            if kind in ("forward", "anonymize+forward"):
                if target not in s.remotes:
                    raise ConfigError(f"action {a!r}: no [remotes.{target}] configured")
                if "store" not in s.remotes[target].services:
                    raise ConfigError(f"action {a!r}: remote {target} is not allowed the store service")
            elif a not in ACTIONS:
                raise ConfigError(f"unknown action {a!r}: {', '.join(ACTIONS)}, forward:NAME or "
                                  "anonymize+forward:NAME")
    bad = [f for f in s.convert_formats if f not in ("png", "mp4", "gif", "txt", "json")]
    if bad:
        raise ConfigError(f"convert_formats: unknown {bad}; png, mp4, gif, txt, json")
    if s.png_bits not in (8, 16):
        raise ConfigError("png_bits: 8 or 16")
    from node.deid_profile import OPTIONS

    unknown = [o for o in s.anonymize_options if o.replace("-", "_") not in OPTIONS]
    if unknown:
        raise ConfigError(f"anonymize_options: unknown {unknown}; known: {', '.join(OPTIONS)}")
