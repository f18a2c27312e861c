"""Who a client says it is, checked the same way on both front ends.

DICOMweb asks for it in HTTP (Basic, Bearer) and DIMSE in the A-ASSOCIATE-RQ
(User Identity Negotiation, PS3.7 D.3.3.7: a user name, a user name and
passcode, or a JSON Web Token). Both check passwords against PBKDF2-SHA256
hashes in the configuration (`dicomnode hash-password`: the passwords
themselves are stored nowhere) and tokens with PyJWT against one shared
secret (HS256/384/512) or the issuer's keys (a JWKS file or URL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

PBKDF2_ROUNDS = 600_000  # OWASP's figure for PBKDF2-SHA256 (2023)


def hash_password(password: str, salt: bytes | None = None, rounds: int = PBKDF2_ROUNDS) -> str:
    """A password hash for the configuration: pbkdf2-sha256$rounds$salt$hash (base64)."""
    import secrets

    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    return f"pbkdf2-sha256${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, rounds, salt, digest = stored.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(rounds))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


class Users:
    """Users from `name:HASH` entries.

    A hash costs ~0.3 s of CPU on purpose; HTTP Basic sends the password with
    every request and a modality may open an association per image, so a
    successful check is remembered (a keyed digest of name and password, in
    this process only) and not paid again.
    """

    def __init__(self, entries: list[str]) -> None:
        import secrets

        self._hashes = dict(u.split(":", 1) for u in entries if ":" in u)
        self._pepper = secrets.token_bytes(32)
        self._verified: set[bytes] = set()

    def verify(self, name: str, password: str) -> bool:
        stored = self._hashes.get(name)
        if stored is None:
            return False
        seen = hmac.new(self._pepper, f"{name}\0{password}\0{stored}".encode(), "sha256").digest()
        if seen in self._verified:
            return True
        if not check_password(password, stored):
            return False
        if len(self._verified) < 10_000:
            self._verified.add(seen)
        return True


class TokenRefused(Exception):
    pass


class Tokens:
    """JWTs signed with `secret` (HMAC) or by a key of the JWKS at `jwks` (a file or an https URL);
    an expiry (exp) is required."""

    def __init__(self, secret: str, jwks: str) -> None:
        self.secret = secret
        self.jwks = jwks
        self._keys: Any = None

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.jwks)

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature and expiry hold; TokenRefused saying why not."""
        import jwt

        try:
            if self.secret:
                return dict(jwt.decode(token, self.secret, algorithms=["HS256", "HS384", "HS512"],
                                       options={"require": ["exp"]}))
            if not self.jwks:
                raise TokenRefused("no key to check tokens with (jwt_secret or jwt_jwks)")
            return dict(jwt.decode(token, self._signing_key(token),
                                   algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"],
                                   options={"require": ["exp"]}))
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"token refused: {exc}") from None

    def _signing_key(self, token: str) -> Any:
        import jwt

        if self.jwks.startswith(("http://", "https://")):
            if self._keys is None:
                self._keys = jwt.PyJWKClient(self.jwks)
            return self._keys.get_signing_key_from_jwt(token).key
        if self._keys is None:
            with open(self.jwks) as f:
                self._keys = jwt.PyJWKSet.from_dict(json.load(f))
        kid = jwt.get_unverified_header(token).get("kid")
        for k in self._keys.keys:
            if kid is None or k.key_id == kid:
                return k.key
        raise jwt.InvalidKeyError(f"no key {kid!r} in {self.jwks}")


def token_user(claims: dict[str, Any]) -> str:
    """The user a token names: preferred_username, else sub."""
    return str(claims.get("preferred_username") or claims.get("sub") or "")
