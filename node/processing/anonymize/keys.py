"""The node's pseudonym key and the keyed pseudonyms made with it.

Pseudonyms (UIDs, PatientID, PatientName, the per-patient date shift) are
HMAC-SHA256 of the original under the node's secret key: the same original
always maps to the same pseudonym, in every run and association, and nobody
without the key can go back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from dicomnode.errors import AnonymizeError
from dicomnode.storage.archive.durable import atomic_file


class Pseudonyms:
    """Keyed, deterministic replacements: same key and original, same pseudonym, in every run."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AnonymizeError("the pseudonym key must have at least 16 bytes")
        self.key = key

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A 2.25 UID (PS3.5 B.2) from 128 bits of the keyed hash."""
        return "2.25." + str(int.from_bytes(self._mac("uid", original.strip("\0 "))[:16], "big"))

    def patient_id(self, pid: str, prefix: str) -> str:
        return f"{prefix}-{self._mac('patient', pid).hex()[:16].upper()}"

    def patient_name(self, pid: str, prefix: str) -> str:
        return f"{prefix}^{self._mac('patient', pid).hex()[:16].upper()}"

    def date_shift_days(self, pid: str) -> int:
        """Between 1 and 3650 days back, the same for every study of a patient."""
        return 1 + int.from_bytes(self._mac("shift", pid)[:4], "big") % 3650


def load_key(path: Path) -> bytes:
    """The node's secret pseudonym key, made (32 random bytes, mode 0600) on first use."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < 16:
            raise AnonymizeError(f"{path}: a key of at least 16 bytes is needed")
        return key
    key = secrets.token_bytes(32)
    with atomic_file(path, mode=0o600) as tmp:
        tmp.write_bytes(key)
    return key
