"""`dicomnode`: the operator's command line, one typer app assembled from topic modules.

    archive.py   serve, import, ls, show, stats, delete, protect, unprotect, check
    jobs.py      jobs, jobs retry
    remote.py    remotes, echo, send, find, move, get
    files.py     analyze, anonymize, convert
    web.py       hash-password
    status.py    status (running, ready, what the node holds and counted)
    media.py     export dicomdir, ls-media
    common.py    what they share: options, exit codes, settings and archive loading, output

Each topic module defines plain functions and registers them here; none of
them imports another (only common.py), so there is no import cycle to keep in
mind when adding a command. Exit codes are documented in common.py.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from dicomnode.node.cli import archive, audit, files, jobs, media, remote, status, web
from dicomnode.node.cli.common import EXIT_FAIL, err, error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dicomnode: a DICOM node that never loses an image.")
for topic in (archive, remote, files, jobs, web, audit, status, media):
    topic.register(app)


@app.callback()
def options(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and library warnings")] = False,
            ) -> None:
    """dicomnode: a DICOM node that never loses an image."""
    if debug:
        os.environ["DICOMNODE_DEBUG"] = "1"
        logging.getLogger("py.warnings").removeHandler(_QUIET)


_QUIET = logging.NullHandler()


def main() -> None:
    """Console entry point: an unexpected error is one line for the operator, not a traceback.

    `--debug` (or DICOMNODE_DEBUG=1) shows the traceback. Library warnings
    (pydicom's about a file's oddities) never reach the terminal as such:
    `serve` writes them to its log, analyze and convert report them with the
    file they concern, and elsewhere only --debug shows them.
    """
    logging.captureWarnings(True)
    if not os.environ.get("DICOMNODE_DEBUG"):
        logging.getLogger("py.warnings").addHandler(_QUIET)
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("DICOMNODE_DEBUG"):
            raise
        error("error:", f"{type(exc).__name__}: {exc}")
        sys.exit(EXIT_FAIL)
