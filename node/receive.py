"""Streaming C-STORE data sets straight into the archive while they arrive.

pynetdicom's chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes each
incoming data set, behind a File Meta built from the command and the
accepted transfer syntax, into a NamedTemporaryFile in the system temp
folder. We hand it a HashingSink in the archive's own tmp folder instead:
the rename into place stays atomic (same file system), the content hash is
computed on the way (no second read), and a full disk becomes a status
instead of an aborted association. Memory stays at one PDU per association
whatever the object's size.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any, Callable

from pynetdicom import _config, dimse_messages

from storage.durable import HashingSink

# Weak: pynetdicom's message holds the sink while it is received and handled;
# when an association dies mid-transfer the message goes, the sink is
# collected and its finalizer deletes the partial file.
_sinks: "weakref.WeakValueDictionary[str, HashingSink]" = weakref.WeakValueDictionary()
_lock = threading.Lock()


def install(make_sink: Callable[[], HashingSink]) -> None:
    """Route pynetdicom's chunked receive into sinks made by `make_sink`."""
    if not hasattr(dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("this pynetdicom version receives data sets differently; "
                           "node/receive.py needs updating")

    def factory(*_args: Any, **_kwargs: Any) -> HashingSink:
        sink = make_sink()
        with _lock:
            _sinks[sink.name] = sink
        return sink

    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = factory  # type: ignore[attr-defined]


def claim(path: Path) -> HashingSink:
    """The sink behind a C-STORE event's dataset_path (removed from the registry)."""
    with _lock:
        sink = _sinks.pop(str(path), None)
    if sink is None:
        raise KeyError(f"no receive sink for {path}")
    return sink
