"""Every exception dicomnode raises on purpose, under one base class.

A front end catches `DicomnodeError` and shows its message as one line (the
CLI with a documented exit code, the DIMSE side as an Error Comment, the web
side as an HTTP status); anything else is a bug and is logged with its
traceback. Subclasses keep ValueError where callers treat them as bad input.
"""

from __future__ import annotations


class DicomnodeError(Exception):
    """Base of every error dicomnode raises on purpose; the message is meant for the operator."""


class ConfigError(DicomnodeError, ValueError):
    """The settings cannot be used as given (file, environment or flags)."""


class HeaderError(DicomnodeError, ValueError):
    """The object cannot be parsed as DICOM."""


class ArchiveError(DicomnodeError):
    """The archive cannot be opened (folder, index database), or there is none where one is expected."""


class QueryError(DicomnodeError, ValueError):
    """The identifier cannot be answered as asked; the message goes to the peer as Error Comment."""


class DisplayError(DicomnodeError, ValueError):
    """The pixel data cannot be shown; the message says why."""


class AnonymizeError(DicomnodeError, ValueError):
    """De-identification cannot proceed (bad key, unknown option, not an instance)."""


class PermanentError(DicomnodeError):
    """A job that cannot succeed by retrying (unknown action, held back by policy)."""


class AssociationFailed(DicomnodeError):
    """A remote could not be reached or refused us; `kind` is unreachable | rejected | aborted | refused."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class QRFailed(DicomnodeError):
    """A query or retrieve failed; `kind` is refused (a failure status) | timeout (no answer)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
