"""DICOM over TLS (PS3.15 Annex B, the BCP 195 TLS profiles): contexts, handshakes, their failures.

Both ways follow the profiles of PS3.15 B.9-B.13 (BCP 195, RFC 9325): TLS 1.2
at least (1.3 offered and preferred), and in TLS 1.2 only suites with forward
secrecy and authenticated encryption; TLS 1.3's own suites all qualify.

The listener's handshake runs in the connection's own thread with the ACSE
timeout (node/dimse/patches.py moves it out of pynetdicom's accept loop, where
one client that connects and sends nothing would hold every other client
out). A failed handshake is logged in one line that says what failed, and a
client is told the same in its own words (describe()).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any

from dicomnode.errors import ConfigError
from dicomnode.node.peers import TlsClient
from dicomnode.node.settings import Settings

log = logging.getLogger("dicomnode")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites of RFC 9325 4.2 (the BCP 195 profiles): ECDHE or DHE key exchange, AES-GCM or ChaCha20
TLS12_SUITES = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))


def _restrict(ctx: ssl.SSLContext, min_version: str) -> None:
    ctx.minimum_version = VERSIONS[min_version]
    ctx.set_ciphers(TLS12_SUITES)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    for name, path in (("cert", cert), ("key", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"[tls] {name} {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[tls] cert {cert} and key {key}: not a PEM certificate and its key ({exc})") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ConfigError(f"[tls] ca {ca}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[tls] ca {ca}: not a PEM CA bundle ({exc})") from None


def server_context(s: Settings) -> ssl.SSLContext:
    """The TLS listener's context: our certificate; peers' certificates checked against [tls] ca
    when they present one (required with require_client_cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _restrict(ctx, s.tls_min_version)
    _load_chain(ctx, s.tls_cert, s.tls_key)
    if s.tls_ca:
        _load_ca(ctx, s.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if s.tls_require_client_cert else ssl.CERT_OPTIONAL
    return ctx


class _Recording(ssl.SSLSocket):
    """Keeps a TLS failure: pynetdicom catches it and says only 'cannot connect' or 'aborted'. In TLS 1.3
    the server checks our certificate after our handshake has completed: its refusal arrives as an
    alert on the first read."""

    def _failed(self, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLError):  # not a refused or reset TCP connection: those say so themselves
            self.context.__dict__.setdefault("failure", exc)

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self._failed(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except OSError as exc:
            self._failed(exc)
            raise


def client_context(tls: TlsClient) -> ssl.SSLContext:
    """A context for calling one peer: its certificate must chain to [tls] ca (else the system's CAs)
    and name the host we call; ours goes with it when [tls] cert is set (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are its defaults
    _restrict(ctx, tls.min_version)
    if tls.ca:
        _load_ca(ctx, tls.ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert:
        _load_chain(ctx, tls.cert, tls.key)
    ctx.sslsocket_class = _Recording
    return ctx


def failure(ctx: ssl.SSLContext) -> str | None:
    """What went wrong in a client context's last handshake, in words, or None."""
    exc = ctx.__dict__.get("failure")
    return describe(exc) if exc is not None else None


def describe(exc: BaseException) -> str:
    """An operator's reading of a TLS failure (OpenSSL's reason codes, either side of the handshake)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "expired" in reason:
            return "the peer's certificate has expired"
        if "not yet valid" in reason:
            return "the peer's certificate is not valid yet"
        if "Hostname mismatch" in reason or "IP address mismatch" in reason:
            return f"the peer's certificate does not name the host called ({reason})"
        if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
            return "the peer's certificate is not signed by a trusted CA ([tls] ca)"
        return f"the peer's certificate was refused: {reason}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        known = {
            "WRONG_VERSION_NUMBER": "not TLS: a plain DICOM peer on a TLS port, or the other way round",
            "HTTP_REQUEST": "not TLS: an HTTP request on the DICOM TLS port",
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate (mutual TLS is required)",
            "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust our certificate's CA",
            "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused our certificate",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the other side requires a client certificate ([tls] cert/key)",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the other side says our certificate has expired",
            "UNSUPPORTED_PROTOCOL": "no common TLS version ([tls] min_version)",
            "TLSV1_ALERT_PROTOCOL_VERSION": "no common TLS version ([tls] min_version)",
            "NO_SHARED_CIPHER": "no common cipher suite (DICOM's BCP 195 profiles allow only ECDHE/DHE with GCM)",
            "SSLV3_ALERT_HANDSHAKE_FAILURE": "the other side ended the handshake (no common suite or version?)",
            "CERTIFICATE_VERIFY_FAILED": "the peer's certificate is not signed by a trusted CA ([tls] ca)",
        }
        for code, words in known.items():
            if code in reason:
                return words
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no TLS handshake in time"
    if isinstance(exc, (ConnectionError, EOFError)) or "EOF" in str(exc):
        return "the connection closed during the TLS handshake"
    return f"TLS failed: {exc}"


def accept_handshake(sock: ssl.SSLSocket, address: Any, timeout: float) -> bool:
    """Complete a server-side handshake within `timeout`; log why not (one line) and say False."""
    try:
        sock.settimeout(timeout or None)
        sock.do_handshake()
        sock.settimeout(None)
        return True
    except (OSError, ValueError) as exc:
        host = address[0] if isinstance(address, tuple) else address
        log.warning("TLS connection from %s refused: %s", host, describe(exc))
        return False


def peer_names(sock: Any) -> set[str] | None:
    """The names (CN, DNS and IP subjectAltNames) of the certificate a TLS peer presented; None when the
    connection is not TLS, an empty set when it presented none."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address"))
    return names
