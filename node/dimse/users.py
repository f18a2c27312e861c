"""DICOM User Identity Negotiation (PS3.7 D.3.3.7): who is calling, beside which AE title.

A requestor may send a user name (type 1), a user name and passcode (2), a
Kerberos ticket (3), a SAML assertion (4) or a JSON Web Token (5). Passcodes
are checked against the `[security] users` hashes and tokens against the
keys of `[web]` (node/identity.py, shared with DICOMweb). A wrong passcode or
token is rejected always (A-ASSOCIATE-RJ transient, ACSE: no reason given, as
pynetdicom answers a failed verification); with `require_user_identity` an
association without a verified identity is rejected too (permanent, service
user), and the log says which. A user name alone, Kerberos and SAML prove
nothing here: such an association counts as one without identity.

A verified user's rights come from `user_services` when it is listed there,
else from its calling AE title as before (Settings.may_use). When the
requestor asks for a positive response, it gets one (an empty server
response: PS3.7 D.3.3.7.2 for types 1 and 2; pynetdicom sends none for them,
so the item is added here).
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from dicomnode.node.identity import TokenRefused, Tokens, Users, token_user
from dicomnode.node.settings import Settings

log = logging.getLogger("dicomnode")

USERNAME, PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5
_USER = "_dn_user"
_REFUSED = "_dn_rejected_because"


def user_of(assoc: Association) -> str | None:
    """The verified user of an association, or None."""
    return assoc.__dict__.get(_USER)


def who_fields(assoc: Association) -> dict[str, Any]:
    """Who is calling, for the audit trail: calling AE title, address, verified user."""
    r = assoc.requestor
    return {"aet": r.ae_title or None, "host": r.address, "user": user_of(assoc)}


def described(assoc: Association) -> str:
    """The calling AE title, with the verified user when there is one: `CT1 (user alice)`."""
    user = user_of(assoc)
    return assoc.requestor.ae_title + (f" (user {user})" if user else "")


class UserIdentity:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users = Users(settings.dicom_users)
        self.tokens = Tokens(settings.jwt_secret, settings.jwt_jwks)

    def missing(self, assoc: Association) -> str | None:
        """At EVT_REQUESTED: why a request must be rejected for bringing no identity, or None."""
        if not self.settings.require_user_identity:
            return None
        item = assoc.requestor.user_identity
        if item is None:
            return "no user identity (require_user_identity)"
        if item.user_identity_type not in (PASSCODE, JWT):
            return f"user identity of type {item.user_identity_type} cannot be verified here " \
                   "(user name and passcode, or JWT; require_user_identity)"
        return None

    def on_user_id(self, event: Event) -> tuple[bool, bytes | None]:
        """EVT_USER_ID: (verified, server response)."""
        kind = event.user_id_type  # type: ignore[attr-defined]
        primary = bytes(event.primary_field or b"")  # type: ignore[attr-defined]
        secondary = bytes(event.secondary_field or b"")  # type: ignore[attr-defined]
        assoc = event.assoc
        if kind == PASSCODE:
            name = primary.decode("utf-8", "replace")
            if not self.users.verify(name, secondary.decode("utf-8", "replace")):
                assoc.__dict__[_REFUSED] = f"user {name!r}: unknown user or wrong passcode"
                return False, None
            user = name
        elif kind == JWT:
            try:
                user = token_user(self.tokens.claims(primary.decode("ascii", "replace").strip()))
            except TokenRefused as exc:
                assoc.__dict__[_REFUSED] = f"user identity: {exc}"
                return False, None
            if not user:
                assoc.__dict__[_REFUSED] = "user identity: the token names no user (sub or preferred_username)"
                return False, None
        else:
            return True, None  # proves nothing; missing() has rejected it already where identity is required
        assoc.__dict__[_USER] = user
        request = assoc.requestor.user_identity
        if request is not None and request.positive_response_requested and kind in (USERNAME, PASSCODE):
            response = UserIdentityNegotiation()
            response.server_response = b""
            assoc.acceptor.add_negotiation_item(response)
        return True, b""
