"""Loading the settings: built-in defaults, then node.toml, then DICOMNODE_* variables, then flags.

The settings themselves, their sections and defaults, are in node/settings.py;
this module reads them from their sources and checks them, so a bad value is
refused at start-up with the setting's name rather than found later.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError
from dicomnode.node.pipeline.actions import ACTIONS
from dicomnode.node.pipeline.actions import describe as describe_actions
from dicomnode.node.processing.anonymize.profile import OPTIONS
from dicomnode.node.settings import SERVICES, Remote, Rule, Settings, toml_key

ENV_PREFIX = "DICOMNODE_"


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
    known = {(f.metadata["section"], toml_key(f)): f.name for f in fields(Settings)}
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
            elif (section, key) in known:
                out[known[(section, key)]] = value
            elif section in {f.metadata["section"] for f in fields(Settings)}:
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
        if t.get("url"):  # a DICOMweb endpoint: find (QIDO-RS) and send (STOW-RS)
            url = str(t["url"]).rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError
            return Remote(name, str(t.get("aet", name))[:16], "", 0, _strings(t.get("services", ("store", "find"))),
                          url)
        services = _strings(t.get("services", SERVICES))
        if not isinstance(t.get("tls", False), bool):
            raise ValueError
        return Remote(name, str(t["aet"]), str(t["host"]), int(t["port"]), services, tls=t.get("tls", False),
                      certificate=str(t.get("certificate", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"{path}: [remotes.{name}] needs aet, host and port (DIMSE; tls = true|false) or "
                          "url (DICOMweb, http(s)://.../dicom-web)") from None


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
    if s.uid_root and (len(s.uid_root) > 40 or not re.fullmatch(r"[1-9]\d*(\.(0|[1-9]\d*))*", s.uid_root.rstrip("."))):
        raise ConfigError(f"uid_root {s.uid_root!r}: digits and dots, no leading zeros, at most 40 characters "
                          "(e.g. 1.2.826.0.1.3680043.10.999)")
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
    if s.quota_policy not in ("reject", "recycle"):
        raise ConfigError(f"quota_policy {s.quota_policy!r}: reject or recycle")
    for name in ("max_size_gb", "max_studies", "max_patients"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: 0 (no limit) or more")
    for title in s.allowed_calling:
        if not 1 <= len(title) <= 16:
            raise ConfigError(f"allowed_calling: {title!r} is not an AE title")
    for uid in s.extra_sop_classes:
        if not uid or len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
            raise ConfigError(f"extra_sop_classes: {uid!r} is not a UID")
    for actions in [s.default_actions, *(r.actions for r in s.rules)]:
        for a in actions:
            kind, colon, target = a.partition(":")
            action = ACTIONS.get(kind)
            if action is None or (action.needs_remote != bool(colon)):
                raise ConfigError(f"unknown action {a!r}: {describe_actions()}")
            if action.needs_remote:
                if target not in s.remotes:
                    raise ConfigError(f"action {a!r}: no [remotes.{target}] configured")
                if "store" not in s.remotes[target].services:
                    raise ConfigError(f"action {a!r}: remote {target} is not allowed the store service")
    bad = [f for f in s.convert_formats if f not in ("png", "mp4", "gif", "txt", "json")]
    if bad:
        raise ConfigError(f"convert_formats: unknown {bad}; png, mp4, gif, txt, json")
    if s.web_auth not in ("none", "basic", "bearer"):
        raise ConfigError(f"[web] auth {s.web_auth!r}: none, basic or bearer")
    if s.web_auth == "basic" and not s.web_users:
        raise ConfigError("[web] auth = basic needs users (name:hash, see `dicomnode hash-password`)")
    if s.web_auth == "bearer" and not (s.jwt_secret or s.jwt_jwks):
        raise ConfigError("[web] auth = bearer needs jwt_secret or jwt_jwks")
    if s.http_port >= 0 and s.web_auth == "none" and not s.web_insecure and not _loopback(s.http_host):
        raise ConfigError(f"[web] host {s.http_host}: serving beyond loopback needs [web] auth (basic or bearer), "
                          "or --web-insecure to do without")
    if bool(s.web_tls_cert) != bool(s.web_tls_key):
        raise ConfigError("[web] tls_cert and tls_key go together")
    if s.http_max_per_host < 1 or s.http_head_timeout < 1:
        raise ConfigError("[web] max_connections_per_host and head_timeout: 1 or more")
    _validate_tls(s)
    for entry in s.user_services:
        name, eq, services = entry.partition("=")
        bad = [x for x in services.split(",") if x.strip() not in SERVICES]
        if not eq or not name.strip() or bad:
            raise ConfigError(f"user_services: {entry!r} is not NAME=SERVICE,... ({', '.join(SERVICES)})")
    for entry in s.dicom_users:
        if ":" not in entry or not entry.partition(":")[2].startswith("pbkdf2-sha256$"):
            raise ConfigError(f"[security] users: {entry.partition(':')[0]!r} needs NAME:HASH "
                              "(dicomnode hash-password NAME)")
    if s.png_bits not in (8, 16):
        raise ConfigError("png_bits: 8 or 16")

    unknown = [o for o in s.anonymize_options if o.replace("-", "_") not in OPTIONS]
    if unknown:
        raise ConfigError(f"anonymize_options: unknown {unknown}; known: {', '.join(OPTIONS)}")


def _validate_tls(s: Settings) -> None:
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("[tls] cert and key go together")
    if s.tls_min_version not in ("1.2", "1.3"):
        raise ConfigError(f"[tls] min_version {s.tls_min_version!r}: 1.2 or 1.3 (DICOM's BCP 195 profiles)")
    if not 0 <= s.tls_port <= 65535:
        raise ConfigError(f"[tls] port {s.tls_port}: not a TCP port")
    if s.tls_require_client_cert and not s.tls_ca:
        raise ConfigError("[tls] require_client_cert needs ca: the CA that signs the peers' certificates")
    if not s.tls_plain and not s.tls_enabled:
        raise ConfigError("[tls] plain = false turns the only listener off: set [tls] cert and key")
    for r in s.remotes.values():
        if r.certificate and not (s.tls_enabled and s.tls_ca):
            raise ConfigError(f"[remotes.{r.name}] certificate: checking a peer's certificate needs [tls] cert, "
                              "key and ca")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
