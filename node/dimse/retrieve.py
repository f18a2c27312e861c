"""C-STORE sub-operations of C-MOVE and C-GET, sent from the archived files.

pynetdicom runs the sub-operation loop (counts, pending responses, cancel,
the Failed SOP Instance UID List) and calls ``send_c_store`` with what our
handler yields. We yield an ArchivedFile, a Dataset that only names a file,
and ``install`` teaches ``send_c_store`` (node/dimse/patches.py) to send it without
loading it:
  - the stored transfer syntax was accepted: the file streams as it is;
  - only another native syntax was accepted: pynetdicom re-encodes it;
  - only native syntaxes were accepted for a compressed file: it is
    decompressed (the one case that holds the object in memory).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context

from dicomnode.node.dimse import patches
from dicomnode.node.dimse.ae import MAX_CONTEXTS, NATIVE, UNCOMPRESSED
from dicomnode.node.transcode import little_endian

log = logging.getLogger("dicomnode.retrieve")


class ArchivedFile(Dataset):
    """Stands for an archived instance in pynetdicom's sub-operation loop."""

    def __init__(self, path: Path, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class
        self.SOPInstanceUID = sop_instance
        # read back per sub-operation, where pydicom's attribute lookup would cost more
        self.__dict__["archived"] = (path, sop_class, sop_instance, transfer_syntax)

    @property
    def stored_syntax(self) -> str:
        """The transfer syntax of the archived file."""
        return cast(str, self.__dict__["archived"][3])


def contexts_for(files: list[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts to propose to a move destination for (SOP class, transfer syntax) pairs.

    Each SOP class gets one context of native syntaxes (so anything can be
    sent, decompressed if need be) and one per compressed syntax stored, so
    the destination can take the stored bytes as they are; past the limit of
    128 contexts the compressed ones are dropped first.
    """
    native: dict[str, list[str]] = {}
    compressed: list[tuple[str, str]] = []
    for sop_class, ts in files:
        syntaxes = native.setdefault(sop_class, [])
        if UID(ts) in NATIVE:
            if ts not in syntaxes:
                syntaxes.insert(0, ts)
        elif (sop_class, ts) not in compressed:
            compressed.append((sop_class, ts))
    out = []
    for sop_class, syntaxes in native.items():
        out.append(build_context(sop_class, list(dict.fromkeys([*syntaxes, *UNCOMPRESSED]))))
    for sop_class, ts in compressed:
        if len(out) >= MAX_CONTEXTS:
            log.warning("more than %d presentation contexts needed: %s in %s will be decompressed",
                        MAX_CONTEXTS, UID(sop_class).name, UID(ts).name)
            continue
        out.append(build_context(sop_class, [ts]))
    return out[:MAX_CONTEXTS]


def _usable(assoc: Association, sop_class: str) -> dict[str, int]:
    """The transfer syntaxes the peer accepted for a SOP class, each with its context ID (the first
    context of each), looked up once per association and SOP class."""
    known: dict[str, dict[str, int]] = assoc.__dict__.setdefault("_dn_usable", {})
    if sop_class not in known:
        usable: dict[str, int] = {}
        for cx in assoc.accepted_contexts:
            if cx.abstract_syntax == sop_class:
                usable.setdefault(str(cx.transfer_syntax[0]), cast(int, cx.context_id))
        known[sop_class] = usable
    return known[sop_class]


def _send_archived(assoc: Association, item: ArchivedFile, original: Any, **kwargs: Any) -> Dataset:
    path, sop_class, sop_instance, ts = item.__dict__["archived"]
    syntaxes = _usable(assoc, sop_class)
    if not syntaxes:
        raise ValueError(f"{assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title} "
                         f"accepted no presentation context for {UID(sop_class).name}")
    if ts in syntaxes:
        return _send_as_stored(assoc, syntaxes[ts], sop_class, sop_instance, path, **kwargs)
    ds: Dataset = dcmread(path)
    if UID(ts) not in NATIVE:
        if not syntaxes.keys() & {str(s) for s in NATIVE}:
            raise ValueError(f"the peer takes {UID(sop_class).name} only in "
                             f"{', '.join(UID(s).name for s in syntaxes)}, not as stored ({UID(ts).name})")
        log.info("decompressing %s (%s) for a peer that does not accept it", sop_instance, UID(ts).name)
        ds.decompress(generate_instance_uid=False)  # a change of transfer syntax keeps the instance
    elif UID(ts) == ExplicitVRBigEndian:  # pynetdicom re-encodes little endian syntaxes only
        ds = little_endian(ds)
    return original(assoc, ds, **kwargs)


def _send_as_stored(assoc: Association, context_id: int, sop_class: str, sop_instance: str, path: Path,
                    msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                    originator_id: int | None = None) -> Dataset:
    """One C-STORE sub-operation of a file as it is stored: what pynetdicom's send_c_store does for
    a file, less what cost a C-MOVE of 500 CT images half its time: its file meta read with
    pydicom, its wait for a reactor to pause that does not read this association's messages
    (the C-GET handler runs in the reactor's own thread; a C-MOVE sub-association's stays paused)."""
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req._dataset_path = (path, dataset_offset)  # type: ignore[assignment]  # streamed from the file (patches.quick_send)
    if assoc.is_requestor:
        _hold_reactor(assoc)
    assoc.dimse.send_msg(req, context_id)
    _cx, rsp = assoc.dimse.get_msg(block=True)  # the reactor wakes on the response (patches.wake_reactors)
    if rsp is None:  # no response within the DIMSE timeout: pynetdicom aborts
        assoc._handle_no_response()
        return Dataset()
    if rsp.Status == 0x0000 and rsp.ErrorComment is None and rsp.is_valid_response:
        return _SUCCESS
    return assoc._check_received_status(rsp)


# pynetdicom's loop only reads the Status of what a sub-operation returns: a Success needs no data
# set of its own (making one was a tenth of a C-GET's time in the node)
_SUCCESS = Dataset()
_SUCCESS.Status = 0x0000


def _hold_reactor(assoc: Association) -> None:
    """Keep a C-MOVE sub-association's reactor from taking our responses off the queue: paused
    before the first sub-operation, and left paused (pynetdicom's release and kill resume it).
    pynetdicom pauses and resumes it around every C-STORE, each time waiting out the reactor's
    millisecond nap."""
    if assoc.__dict__.get("_dicomnode_held"):
        return
    assoc._reactor_checkpoint.clear()
    while assoc.is_established and not assoc._is_paused:
        time.sleep(0.0001)
    assoc.__dict__["_dicomnode_held"] = True


def dataset_offset(f: BinaryIO) -> int:
    """Where a stored file's data set starts (f is open at its start): after the preamble and the
    File Meta Information, whose group length the node's own files always carry (PS3.10 7.1);
    pydicom reads it otherwise."""
    head = f.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:140] == b"\x02\x00\x00\x00UL\x04\x00":
        return 144 + int.from_bytes(head[140:144], "little")
    return split_dataset(Path(f.name))[1]


def install() -> None:
    """Route ArchivedFile items of pynetdicom's sub-operation loops to _send_archived."""
    patches.intercept_send_c_store(ArchivedFile, _send_archived)
