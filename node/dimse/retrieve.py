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
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian
from pynetdicom.association import Association
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
        self.__dict__["archived_path"] = path
        self.__dict__["archived_syntax"] = transfer_syntax


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


def _send_archived(assoc: Association, item: ArchivedFile, original: Any, **kwargs: Any) -> Dataset:
    path: Path = item.__dict__["archived_path"]
    ts: str = item.__dict__["archived_syntax"]
    sop_class = str(item.SOPClassUID)
    usable = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
    if not usable:
        raise ValueError(f"{assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title} "
                         f"accepted no presentation context for {UID(sop_class).name}")
    syntaxes = {str(cx.transfer_syntax[0]) for cx in usable}
    if ts in syntaxes:
        return original(assoc, path, **kwargs)
    ds: Dataset = dcmread(path)
    if UID(ts) not in NATIVE:
        if not syntaxes & {str(s) for s in NATIVE}:
            raise ValueError(f"the peer takes {UID(sop_class).name} only in "
                             f"{', '.join(UID(s).name for s in syntaxes)}, not as stored ({UID(ts).name})")
        log.info("decompressing %s (%s) for a peer that does not accept it", item.SOPInstanceUID, UID(ts).name)
        ds.decompress(generate_instance_uid=False)  # a change of transfer syntax keeps the instance
    elif UID(ts) == ExplicitVRBigEndian:  # pynetdicom re-encodes little endian syntaxes only
        ds = little_endian(ds)
    return original(assoc, ds, **kwargs)


def install() -> None:
    """Route ArchivedFile items of pynetdicom's sub-operation loops to _send_archived."""
    patches.intercept_send_c_store(ArchivedFile, _send_archived)
