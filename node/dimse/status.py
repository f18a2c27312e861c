"""DICOM status codes by service (PS3.7 Annex C, PS3.4) and the one way to build a status data set.

The storage outcomes are those of the archive's ingest path
(storage/archive/ingest.py), which the DICOMweb side reports too; the
Query/Retrieve codes are those the Q/R SCP answers and the clients read.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomnode.storage.archive.ingest import (
    BAD_IDENTIFIER,
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    DUPLICATE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
)

__all__ = ["SUCCESS", "DUPLICATE", "PROCESSING_FAILURE", "OUT_OF_RESOURCES", "DOES_NOT_MATCH", "CANNOT_UNDERSTAND",
           "BAD_IDENTIFIER", "NOT_AUTHORIZED", "PENDING", "PENDING_WARNING", "CANCEL", "UNABLE_TO_PROCESS",
           "IDENTIFIER_MISMATCH", "MOVE_DESTINATION_UNKNOWN", "SUBOPS_WITH_FAILURES", "ALL_SUBOPS_FAILED",
           "ERROR_COMMENT_MAX", "status_dataset", "is_warning"]

# Any service (PS3.7 C.5)
NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized
# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
CANCEL = 0xFE00
UNABLE_TO_PROCESS = 0xC001  # C-FIND failure: unable to process (storage uses the same code for a bad UID)
IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPS_WITH_FAILURES = 0xB000  # Warning: sub-operations complete, one or more failures
ALL_SUBOPS_FAILED = 0xA702  # C-GET/C-MOVE: unable to perform sub-operations

ERROR_COMMENT_MAX = 64  # (0000,0902) Error Comment is LO


def status_dataset(code: int, comment: str = "") -> Dataset:
    """A status for a DIMSE response: the code and, when given, an Error Comment that fits its LO."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode()[:ERROR_COMMENT_MAX]
    return ds


def is_warning(code: int) -> bool:
    """Warning statuses of the storage service (PS3.4 B.2.3): the object was stored, with a remark."""
    return code == 0x0001 or (code & 0xF000) == 0xB000
