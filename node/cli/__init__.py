"""`dicomnode`: the operator's command line, one typer app assembled from topic modules.

    archive.py   serve, import, ls, show, stats, delete, check
    jobs.py      jobs, jobs retry
    remote.py    remotes, echo, send, find, move, get
    files.py     analyze, anonymize, convert
    common.py    what they share: options, exit codes, settings and archive loading, output

Each topic module defines plain functions and registers them here; none of
them imports another (only common.py), so there is no import cycle to keep in
mind when adding a command. Exit codes are documented in common.py.
"""

from __future__ import annotations

import os
import sys

import typer

from dicomnode.node.cli import archive, files, jobs, remote
from dicomnode.node.cli.common import EXIT_FAIL, err

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dicomnode: a DICOM node that never loses an image.")
for topic in (archive, remote, files, jobs):
    topic.register(app)


def main() -> None:
    """Console entry point: an unexpected error is one line for the operator, not a traceback.

    DICOMNODE_DEBUG=1 shows the traceback.
    """
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
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}", markup=True, highlight=False)
        sys.exit(EXIT_FAIL)
