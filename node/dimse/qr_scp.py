"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET answered from the archive.

The handlers are generators, as pynetdicom wants them: C-FIND yields one
pending response per matching row while the database cursor streams;
C-MOVE and C-GET yield the destination, the number of sub-operations, then
one ArchivedFile per instance (node/retrieve.py sends it from disk).
Who may do what, and whether a retrieve identifier names anything, is
checked before pynetdicom's own loops start: a refused peer gets 0x0124
(Refused: Not Authorized), a bad retrieve identifier 0xA900, each with a
reason and without a data set (pynetdicom's loop would add an empty Failed
SOP Instance UID List and count one failed sub-operation that never was;
DCMTK's getscu then fails to release the association).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.service_class import QueryRetrieveServiceClass
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.errors import QueryError
from dicomnode.node.dimse import patches, retrieve, tls, wire
from dicomnode.node.dimse.ae import nodelay, qr_root
from dicomnode.node.dimse.status import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    status_dataset,
)
from dicomnode.node.dimse.users import described, user_of, who_fields
from dicomnode.node.peers import Peer, TlsClient, remote_peer
from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive
from dicomnode.storage.archive.header import nesting_depth
from dicomnode.storage.query.identifier import (
    MAX_KEY_NESTING,
    HeaderReader,
    Request,
    dataset_of,
    iter_matches,
    parse_identifier,
    response_elements,
)
from dicomnode.storage.query.matching import LIST, SINGLE, Condition
from dicomnode.storage.query.sql import UNIQUE_KEYS, Key, Query, build_query, run

log = logging.getLogger("dicomnode.qr")
PRIMITIVES = {"find": C_FIND, "move": C_MOVE, "get": C_GET}


class QueryRetrieveSCP:
    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.layout = archive.layout
        self.db = archive.db
        self.audit = archive.audit
        # where this node itself listens, as a move destination (set by serve once it listens)
        self.own_address: tuple[str, int, bool] | None = None  # host, port, TLS
        retrieve.install()
        install_authorization(self.check)

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move), (evt.EVT_C_GET, self.on_get)]

    # -- who may do what ----------------------------------------------------------

    def check(self, service: str, assoc: Association, req: Any, identifier: Callable[[], Dataset]) -> Dataset | None:
        """The refusal of a request before any work starts, or None.

        0x0124 when the peer may not use the service, 0xA801 when a move
        names a destination we do not know, 0xA900 when a retrieve
        identifier names nothing retrievable; each with its reason.
        """
        why = self.refusal(assoc, service)
        if why is not None:
            return status_dataset(NOT_AUTHORIZED, why)
        try:
            ident = identifier()
        except QueryError as exc:
            return status_dataset(IDENTIFIER_MISMATCH, str(exc))
        if nesting_depth(ident, MAX_KEY_NESTING) > MAX_KEY_NESTING:
            return status_dataset(IDENTIFIER_MISMATCH, f"sequence keys nested more than {MAX_KEY_NESTING} levels")
        if service == "move":
            dest = str(req.MoveDestination).strip()
            if self.destination(dest) is None:
                return status_dataset(MOVE_DESTINATION_UNKNOWN, f"move destination {dest} unknown "
                                      "(no [remotes] entry)")
        if service != "find":
            return self.retrieve_problem(str(req.AffectedSOPClassUID), ident)
        return None

    def refusal(self, assoc: Association, service: str) -> str | None:
        """Why a peer (its calling AE title, its verified user) may not use a service, or None."""
        if self.settings.may_use(assoc.requestor.ae_title, service, user_of(assoc)):
            return None
        return f"{described(assoc)} is not allowed {service}"

    def destination(self, aet: str) -> Peer | None:
        """Where a C-MOVE to `aet` goes: a [remotes] entry with the store service, or this node itself."""
        remote = self.settings.remote_by_aet(aet)
        if remote is not None and "store" in remote.services:
            return remote_peer(remote, self.settings)
        if aet == self.settings.aet and self.own_address is not None:
            host, port, secure = self.own_address
            return Peer(aet, host, port, TlsClient.of(self.settings) if secure else None)
        return None

    def retrieve_problem(self, sop_class_uid: str, identifier: Dataset) -> Dataset | None:
        """The 0xA900 status of a C-MOVE/C-GET identifier that names nothing retrievable, or None."""
        root = qr_root("move", sop_class_uid) or qr_root("get", sop_class_uid) or "STUDY"
        try:
            self._retrieve_query(root, identifier)
        except QueryError as exc:
            return status_dataset(IDENTIFIER_MISMATCH, str(exc))
        return None

    # -- C-FIND -------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | wire.Encoded | None]]:
        t0 = time.perf_counter()
        model = qr_root("find", str(event.request.AffectedSOPClassUID))
        who = event.assoc.requestor.ae_title
        try:
            req = parse_identifier(identifier_of(event), model or "STUDY", self.settings.pn_case_insensitive)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", who, exc)
            yield status_dataset(IDENTIFIER_MISMATCH, str(exc)), None
            return
        n = 0
        limit = self.settings.max_results
        headers = HeaderReader(self.layout.root)
        syntax = event.context.transfer_syntax
        # responses are encoded here, straight from their elements, when the syntax allows it
        encode, implicit = not syntax.is_deflated and syntax.is_little_endian, syntax.is_implicit_VR
        try:
            with self.db.engine.connect() as conn:
                for row, header in iter_matches(req, run(conn, req.query, self.db.dialect), headers):
                    if event.is_cancelled:
                        log.info("C-FIND from %s cancelled after %d matches", who, n)
                        yield CANCEL, None
                        return
                    if limit and n >= limit:
                        log.warning("C-FIND from %s: more than %d matches, answer cut", who, limit)
                        yield status_dataset(OUT_OF_RESOURCES, f"more than {limit} matches: narrow the query"), None
                        return
                    _let_the_peer_speak(event.assoc)
                    elements = response_elements(req, row, header, self.settings.aet)
                    data = wire.encode_elements(elements, implicit) if encode else None
                    yield PENDING, (wire.Encoded(data, implicit, elements) if data is not None
                                    else dataset_of(elements))
                    n += 1
        except SQLAlchemyError as exc:
            log.error("C-FIND from %s failed: %s", who, exc)
            yield status_dataset(UNABLE_TO_PROCESS, f"index unavailable: {type(exc).__name__}"), None
            return
        log.info("C-FIND %s level from %s: %d matches in %.1f ms", req.query.level, who, n,
                 (time.perf_counter() - t0) * 1000)
        self.audit.record("query", service="C-FIND", level=req.query.level, matches=n, **who_fields(event.assoc))
        yield SUCCESS, None

    # -- C-MOVE and C-GET ----------------------------------------------------------

    def on_move(self, event: Event) -> Iterator[Any]:
        who = event.assoc.requestor.ae_title
        dest_aet = str(event.move_destination).strip()
        peer = self.destination(dest_aet)
        if peer is None:  # checked before (check()); the configuration cannot change in between
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        files, problem = self._selection(event, "move")
        kwargs = {"contexts": retrieve.contexts_for([(f.SOPClassUID, f.stored_syntax)
                                                     for f in files] or [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]),
                  "max_pdu": self.settings.max_pdu,
                  # Nagle off on the sub-association as on every other: with it, each image's
                  # last PDU waited for the destination's delayed ACK (7x Orthanc's time)
                  "evt_handlers": [(evt.EVT_CONN_OPEN, nodelay)]}
        if peer.tls is not None:
            kwargs["tls_args"] = (tls.client_context(peer.tls), peer.host)
        yield peer.host, peer.port, kwargs
        yield from self._suboperations(event, files, problem, f"C-MOVE from {who} to {dest_aet}")

    def on_get(self, event: Event) -> Iterator[Any]:
        files, problem = self._selection(event, "get")
        yield from self._suboperations(event, files, problem, f"C-GET from {event.assoc.requestor.ae_title}")

    def _suboperations(self, event: Event, files: list[retrieve.ArchivedFile], problem: Dataset | None,
                       what: str) -> Iterator[Any]:
        if problem is not None:
            # the count must come first; a failure then ends the operation with its comment
            yield 1
            yield problem, None
            return
        yield len(files)
        log.info("%s: %d instance(s)", what, len(files))
        sent = 0
        try:
            for f in files:
                if event.is_cancelled:
                    log.info("%s cancelled", what)
                    yield CANCEL, None
                    return
                yield PENDING, f
                sent += 1
        finally:
            ident = identifier_of(event)
            self.audit.record("retrieve", "success" if sent == len(files) else "failure", service=what.split()[0],
                              destination=str(getattr(event, "move_destination", "") or "").strip() or None,
                              study=ident.get("StudyInstanceUID") if ident is not None else None,
                              instances=len(files), offered=sent, **who_fields(event.assoc))

    def _selection(self, event: Event, service: str) -> tuple[list[retrieve.ArchivedFile], Dataset | None]:
        """The archived instances a retrieve identifier names (by unique keys, lists allowed)."""
        model = qr_root(service, str(event.request.AffectedSOPClassUID)) or "STUDY"
        try:
            query = self._retrieve_query(model, identifier_of(event))
            with self.db.engine.connect() as conn:
                rows = list(run(conn, query, self.db.dialect))
        except QueryError as exc:
            return [], status_dataset(IDENTIFIER_MISMATCH, str(exc))
        except SQLAlchemyError as exc:
            return [], status_dataset(UNABLE_TO_PROCESS, f"index unavailable: {type(exc).__name__}")
        return [retrieve.ArchivedFile(self.layout.absolute(r["path"]), r["SOPClassUID"], r["SOPInstanceUID"],
                                      r["TransferSyntaxUID"]) for r in rows], None

    def _retrieve_query(self, model: str, identifier: Dataset) -> Query:
        req = parse_identifier(identifier, model, self.settings.pn_case_insensitive, hierarchical=False)
        query = build_query(model, "IMAGE", retrieve_keys(req), hierarchical=False)
        query.keys += [Key(kw, "", None, "index", "IMAGE")
                       for kw in ("SOPInstanceUID", "SOPClassUID", "TransferSyntaxUID", "path")]
        return query


def _let_the_peer_speak(assoc: Association, backlog: int = 64, patience: float = 5.0) -> None:
    """Wait until the association has sent (almost) all we queued.

    pynetdicom's DUL thread either sends a queued PDU or reads one from the
    socket, sending first: were we to queue a huge answer at once, a C-CANCEL
    would only be read after the last response. Keeping the queue short also
    keeps memory flat.
    """
    q = getattr(getattr(assoc, "dul", None), "to_provider_queue", None)
    if q is None:
        return
    deadline = time.monotonic() + patience
    while q.qsize() > backlog and time.monotonic() < deadline and assoc.is_established:
        time.sleep(0.0005)


def retrieve_keys(req: Request) -> list[tuple[str, str, Condition | None]]:
    """A retrieve names what it wants by unique keys (PS3.4 C.4.2.2.1), its own level's first of all.

    Other keys with a value are refused rather than ignored: ignoring
    Modality=CT next to a StudyInstanceUID would send the whole study.
    """
    level = req.query.level
    given: list[tuple[str, str, Condition | None]] = []
    for kw, vr, cond in req.keys:
        if cond is None:
            continue
        if kw not in UNIQUE_KEYS.values():
            raise QueryError(f"{kw}: a retrieve identifier holds unique keys only")
        if cond.kind not in (SINGLE, LIST):  # "PAT*" would retrieve whoever matches
            raise QueryError(f"{kw}: a retrieve names values (one or a list), not a pattern or range")
        given.append((kw, vr, cond))
    if UNIQUE_KEYS[level] not in {kw for kw, _vr, _c in given}:
        raise QueryError(f"a {level}-level retrieve needs a value of {UNIQUE_KEYS[level]}")
    return given


# -- authorization ahead of pynetdicom's service loops -----------------------------

Check = Callable[[str, Association, Any, Callable[[], Dataset]], "Dataset | None"]
_checks: list[Check] = []


def install_authorization(check: Check) -> None:
    """Answer C-FIND/C-MOVE/C-GET requests that `check(service, calling AE, request, identifier)`
    refuses with its status, before pynetdicom's service loop starts (so no sub-operation is
    counted, and no empty data set is sent)."""
    _checks[:] = [check]
    patches.wrap_qr_services(_guarded)


def _guarded(original: Callable[..., None], service: str) -> Callable[..., None]:
    primitive = PRIMITIVES[service]

    def scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
        refusal = _checks[0](service, self.assoc, req, lambda: _identifier(req, context)) if _checks else None
        if refusal is not None:
            log.warning("C-%s from %s refused: 0x%04X %s", service.upper(), described(self.assoc), refusal.Status,
                        refusal.ErrorComment)
            return _answer(self, req, context, primitive, refusal)
        return original(self, req, context)

    return scp


def identifier_of(event: Event) -> Dataset:
    """A C-FIND/C-MOVE/C-GET request's identifier: as the authorization check decoded it
    (_identifier), else as pynetdicom decodes it for the handler."""
    ds = getattr(event.request, "_dn_identifier", None)
    return cast(Dataset, ds) if ds is not None else event.identifier


def _identifier(req: Any, context: Any) -> Dataset:
    """Decoded as pynetdicom decodes it for the handler, every element parsed now: what cannot be
    decoded is a QueryError (0xA900 with its reason), not pynetdicom's 0xC311 with a traceback in
    the log. Kept on the request for the handler (identifier_of), which needs it decoded too."""
    syntax = context.transfer_syntax[0]
    try:
        req.Identifier.seek(0)
        ds = decode(req.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        for _elem in ds.iterall():  # parse now, inside the try
            pass
        req._dn_identifier = ds
        return ds
    except RecursionError:
        raise QueryError("cannot decode the identifier: nested too deeply") from None
    except Exception as exc:
        raise QueryError(f"cannot decode the identifier: {type(exc).__name__}") from None
    finally:
        req.Identifier.seek(0)


def _answer(scp: QueryRetrieveServiceClass, req: Any, context: Any, primitive: type, st: Dataset) -> None:
    """A final response of our own, with no data set: nothing was attempted, nothing failed."""
    rsp = primitive()
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp.Status = st.Status
    rsp.ErrorComment = st.ErrorComment  # status_dataset has fitted it to its LO
    if primitive is not C_FIND:
        rsp.NumberOfCompletedSuboperations = rsp.NumberOfFailedSuboperations = 0
        rsp.NumberOfWarningSuboperations = 0
    scp.dimse.send_msg(rsp, context.context_id)
