"""Streaming C-STORE data sets straight into the archive while they arrive.

pynetdicom's chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes each
incoming data set, behind a File Meta built from the command and the
accepted transfer syntax, into a NamedTemporaryFile in the system temp
folder. We hand it a HashingSink in the archive's own tmp folder instead
(node/dimse/patches.py: receive_into): the rename into place stays atomic
(same file system), the content hash is computed on the way (no second
read), and a full disk becomes a status instead of an aborted association.
Memory stays at one PDU per association whatever the object's size.

`store` is the one C-STORE -> ingest -> status adapter, for the storage
SCP and for what arrives on a C-GET of our own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicomnode.node.dimse import patches, wire
from dicomnode.node.dimse.status import status_dataset
from dicomnode.storage.archive.durable import HashingSink
from dicomnode.storage.archive.ingest import Ingester, Outcome

# Sinks not yet claimed by a C-STORE handler, by file name, with the
# association that receives them: when that association ends (released,
# aborted, connection lost mid-transfer) its unclaimed sinks are discarded.
_sinks: dict[str, tuple[int, HashingSink]] = {}
_lock = threading.Lock()


def install(make_sink: Callable[[], HashingSink]) -> None:
    """Route pynetdicom's chunked receive into sinks made by `make_sink`."""

    def factory(*_args: Any, **_kwargs: Any) -> HashingSink:
        # pynetdicom decodes PDUs in the association's DUL thread, which knows its association.
        owner = id(getattr(threading.current_thread(), "assoc", None))
        sink = make_sink()
        with _lock:
            _sinks[sink.name] = (owner, sink)
        return sink

    patches.receive_into(factory, wire.file_meta)


def claim(path: Path) -> HashingSink:
    """The sink behind a C-STORE event's dataset_path (removed from the registry)."""
    with _lock:
        entry = _sinks.pop(str(path), None)
    if entry is None:
        raise KeyError(f"no receive sink for {path}")
    return entry[1]


def discard_unclaimed(assoc: object) -> int:
    """Delete the partial files of an association that has ended."""
    with _lock:
        names = [n for n, (owner, _s) in _sinks.items() if owner == id(assoc)]
        entries = [_sinks.pop(n) for n in names]
    for _owner, sink in entries:
        sink.discard()
    return len(entries)


def store(ingester: Ingester, event: Event, calling_aet: str, peer: str) -> tuple[Outcome, int]:
    """Archive what a C-STORE event received; the outcome and the number of bytes received."""
    req = cast(C_STORE, event.request)
    sink = claim(event.dataset_path)
    out = ingester.ingest(sink, sop_class=req.AffectedSOPClassUID, sop_instance=req.AffectedSOPInstanceUID,
                          calling_aet=calling_aet, peer=peer)
    return out, sink.size


def response(out: Outcome) -> int | Dataset:
    """The C-STORE response status for an ingest outcome."""
    return 0x0000 if out.ok else status_dataset(out.status, out.comment)
