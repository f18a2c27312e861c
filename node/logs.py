"""Logging of the node's processes: one line per association, per object, per job."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, process: str = "") -> None:
    """`process` names a process other than the main one in its lines ([receiver-1] ...)."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=f"%(asctime)s %(levelname)s {'[' + process + '] ' if process else ''}%(message)s",
                        stream=sys.stderr)
    # pynetdicom narrates every PDU at INFO; we log one line per association and per object.
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # pydicom logs every decoder plugin it tries, with a traceback, before the
    # next one succeeds or our caller reports the outcome in one line itself.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
