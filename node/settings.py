"""The node's settings: every one with its section, default and meaning (config.py loads them).

Every setting has one name, used as its key in its TOML section and, upper-
cased behind ``DICOMNODE_``, as its environment variable (``port`` in
``[network]`` is ``DICOMNODE_PORT``). config/node.toml documents them all
with the same defaults as here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.storage.archive.layout import Layout


def _setting(section: str, default: Any, help: str, key: str | None = None) -> Any:
    """A setting: `key` in its TOML section (its own name unless given), DICOMNODE_<NAME> in the environment."""
    return field(default_factory=lambda: default, metadata={"section": section, "help": help, "key": key})


def toml_key(f: Any) -> str:
    """The key of a setting's field in its node.toml section."""
    return str(f.metadata.get("key") or f.name)


SERVICES = ("store", "find", "move", "get")


@dataclass(frozen=True)
class Remote:
    name: str
    aet: str
    host: str
    port: int
    services: tuple[str, ...] = SERVICES
    url: str = ""  # a DICOMweb endpoint (find: QIDO-RS, send: STOW-RS) instead of a DIMSE peer
    tls: bool = False  # reach it over DICOM TLS ([tls] ca checks its certificate; cert/key are ours)
    # the name (certificate CN or subjectAltName) a peer calling with this AE title must present over TLS
    certificate: str = ""


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
    name: str = _setting("node", "", "this node's name among nodes sharing one index and archive (job leases, "
                         "run marker); empty = HOST/AET")
    uid_root: str = _setting("node", "", "UID root of objects the node creates (dicomnode create); empty = "
                             "2.25 UIDs derived from random UUIDs (PS3.5 B.2)")
    host: str = _setting("network", "127.0.0.1", "address to listen on (loopback unless told otherwise)")
    port: int = _setting("network", 11112, "TCP port to listen on")
    receivers: int = _setting("network", 0, "processes receiving on the DIMSE port(s), accepting on one "
                              "listening socket: 0 = one per CPU core (one when a quota is set)")
    max_associations: int = _setting("network", 32, "associations open at once, counted from their request on")
    max_associations_per_host: int = _setting("network", 16, "of those, from one IP address")
    max_associations_per_aet: int = _setting("network", 16, "of those, of one calling AE title")
    max_pending_per_host: int = _setting("network", 16, "connections from one IP address that have not sent "
                                         "their association request yet; more are closed")
    max_pdu: int = _setting("network", 131072, "maximum PDU length we receive (0 = unlimited)")
    acse_timeout: float = _setting("network", 30.0, "seconds to wait for association messages")
    dimse_timeout: float = _setting("network", 60.0, "seconds to wait for DIMSE messages")
    network_timeout: float = _setting("network", 60.0, "seconds an idle association is kept")
    shutdown_grace: float = _setting("network", 30.0, "seconds SIGTERM waits for associations to finish")
    storage: str = _setting("storage", "./data", "archive folder (objects, temp files, default index)")
    db: str = _setting("storage", "", "SQLAlchemy URL of the index; empty = SQLite in the archive folder")
    duplicate_policy: str = _setting("storage", "keep", "keep | overwrite | reject a SOP Instance UID seen before")
    min_free_mb: int = _setting("storage", 512, "refuse stores (0xA700) when less disk is free")
    max_size_gb: float = _setting("storage", 0.0, "quota: archive size in GiB, a fraction allowed (0 = none)")
    max_studies: int = _setting("storage", 0, "quota: studies in the archive (0 = no limit)")
    max_patients: int = _setting("storage", 0, "quota: patients in the archive (0 = no limit)")
    quota_policy: str = _setting("storage", "reject", "at a quota: reject (0xA700) | recycle (remove the least "
                                 "recently received unprotected studies)")
    extra_sop_classes: list[str] = _setting("storage", [], "private storage SOP class UIDs also accepted")
    require_called_aet: bool = _setting("security", True, "reject associations not addressed to our AE title")
    allowed_calling: list[str] = _setting("security", [], "calling AE titles allowed in; empty = anyone")
    open_services: list[str] = _setting("security", list(SERVICES),
                                        "services a calling AE not listed in [remotes] may use")
    dicom_users: list[str] = _setting("security", [], "DICOM user identity: name:hash entries "
                                      "(dicomnode hash-password); JWTs are checked with [web] jwt_secret/jwt_jwks",
                                      key="users")
    require_user_identity: bool = _setting("security", False, "reject associations without a verified user "
                                           "identity (user name and passcode, or JWT)")
    user_services: list[str] = _setting("security", [], "services per user, e.g. \"alice=store,find\"; a user "
                                        "not listed has its calling AE's rights")
    max_results: int = _setting("query", 0, "C-FIND matches sent at most (0 = all); more end with 0xA700")
    pn_case_insensitive: bool = _setting("query", True, "person names match regardless of case")
    log_level: str = _setting("logging", "INFO", "DEBUG | INFO | WARNING | ERROR")
    workers: int = _setting("pipeline", 2, "worker threads running on-arrival jobs (0 = none)")
    max_attempts: int = _setting("pipeline", 10, "attempts before a job stays failed")
    job_lease_seconds: float = _setting("pipeline", 60.0, "how long a node's claim on a running job holds "
                                        "without its heartbeat; a dead node's jobs are taken over after it")
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
    http_port: int = _setting("web", 8042, "HTTP port of DICOMweb and the viewer (0 = any free port, -1 = off)",
                              key="port")
    http_host: str = _setting("web", "127.0.0.1", "address the HTTP side listens on", key="host")
    public_url: str = _setting("web", "", "the DICOMweb base URL clients use, when a proxy changes it "
                               "(e.g. https://pacs.example/dicom-web); empty = as requested")
    web_auth: str = _setting("web", "none", "none | basic | bearer", key="auth")
    web_users: list[str] = _setting("web", [], "basic auth: name:hash (dicomnode hash-password)", key="users")
    jwt_secret: str = _setting("web", "", "bearer auth: HS256 shared secret")
    jwt_jwks: str = _setting("web", "", "bearer auth: JWKS file or URL of the token issuer's keys")
    cors_origins: list[str] = _setting("web", [], "origins allowed to call the API from a browser (empty = none)")
    http_max_per_host: int = _setting("web", 64, "HTTP connections open at once from one address; more are "
                                      "closed at once", key="max_connections_per_host")
    http_head_timeout: int = _setting("web", 15, "seconds a request head may take to arrive whole (also the "
                                      "keep-alive of an idle connection)", key="head_timeout")
    max_stow_mb: int = _setting("web", 4096, "largest STOW-RS request (MB; 0 = no limit): more is 413")
    web_tls_cert: str = _setting("web", "", "HTTPS: certificate file (PEM)", key="tls_cert")
    web_tls_key: str = _setting("web", "", "HTTPS: private key file (PEM)", key="tls_key")
    web_insecure: bool = _setting("web", False, "allow listening beyond loopback without auth", key="insecure")
    tls_cert: str = _setting("tls", "", "DICOM TLS: this node's certificate (PEM, chain allowed); with key, "
                             "turns on the TLS listener and is presented to TLS remotes", key="cert")
    tls_key: str = _setting("tls", "", "DICOM TLS: the certificate's private key (PEM)", key="key")
    tls_ca: str = _setting("tls", "", "DICOM TLS: CA bundle (PEM) trusted for peers' certificates; empty = the "
                           "system's CAs for remotes, and no client certificates checked", key="ca")
    tls_require_client_cert: bool = _setting("tls", False, "TLS listener: peers must present a certificate "
                                             "signed by ca (mutual TLS)", key="require_client_cert")
    tls_port: int = _setting("tls", 2762, "TLS listener's port (2762: DICOM over TLS; 0 = any free port)",
                             key="port")
    tls_plain: bool = _setting("tls", True, "keep the plain listener on [network] port beside the TLS one",
                               key="plain")
    tls_min_version: str = _setting("tls", "1.2", "lowest TLS version, both ways: 1.2 | 1.3", key="min_version")
    convert_formats: list[str] = _setting("convert", ["png", "mp4", "txt", "json"],
                                          "outputs of the convert action: png, mp4, gif, txt, json")
    png_bits: int = _setting("convert", 16, "grey PNG depth: 16 or 8")
    fps: float = _setting("convert", 0.0, "frame rate of videos; 0 = from the data set (else 10)")
    rules: list[Rule] = field(default_factory=list, metadata={"section": "pipeline", "help": "[[pipeline.rules]]"})
    remotes: dict[str, Remote] = field(default_factory=dict, metadata={"section": "remotes", "help": "[remotes.NAME]"})

    @property
    def storage_path(self) -> Path:
        return Path(self.storage).expanduser()

    @property
    def key_path(self) -> Path:
        return Path(self.key_file).expanduser() if self.key_file else Layout(self.storage_path).pseudonym_key

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def db_url(self) -> str | None:
        return self.db or None

    @property
    def node_name(self) -> str:
        """This node among nodes sharing an index: `[node] name`, else HOST/AET."""
        import socket

        return self.name or f"{socket.gethostname()}/{self.aet}"

    def remote_by_aet(self, aet: str) -> Remote | None:
        for r in self.remotes.values():
            if r.aet == aet:
                return r
        return None

    def user_rights(self) -> dict[str, tuple[str, ...]]:
        """user_services as user -> services."""
        out: dict[str, tuple[str, ...]] = {}
        for entry in self.user_services:
            name, _, services = entry.partition("=")
            out[name.strip()] = tuple(x.strip() for x in services.split(",") if x.strip())
        return out

    def may_use(self, calling_aet: str, service: str, user: str | None = None) -> bool:
        """A verified user listed in user_services may use its services; else a peer configured in
        [remotes] its listed services; any other, open_services."""
        if user is not None:
            rights = self.user_rights().get(user)
            if rights is not None:
                return service in rights
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
