"""What every `dicomnode` command shares: consoles, options, exit codes, settings and archive
loading, peers, output helpers.

Conventions: peers as AET@host:port, --json for scripts (on stdout, nothing
else there), rich tables and progress bars for people (on stderr where they
would mix with data), and exit codes scripts can trust:

    0 success            1 something failed / inconsistent / not found
    2 usage or config    3 remote unreachable     4 remote rejected the association
    5 remote refused the request (status)         6 no answer in time (DIMSE timeout)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from dicomnode.errors import ArchiveError, ConfigError, DicomnodeError
from dicomnode.node import config as cfg
from dicomnode.node import services
from dicomnode.node.dimse.ae import Timeouts
from dicomnode.node.peers import Peer, parse_peer
from dicomnode.node.peers import remote_peer as configured_peer
from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED, EXIT_REFUSED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5, 6

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="node.toml to read")]
StorageOpt = Annotated[Optional[Path], typer.Option("--storage", help="archive folder")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL of the index")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
AetOpt = Annotated[Optional[str], typer.Option("--aet", help="our AE title (calling AE for clients)")]
WideOpt = Annotated[bool, typer.Option("--wide", help="whole UIDs in tables (default: cut in the middle)")]
TargetsArg = Annotated[list[str], typer.Argument(help="files, folders (recursive) or archive UIDs")]


def error(message: str, detail: str = "") -> None:
    """One red line on stderr: `message`, then `detail` (an exception's text) taken literally."""
    line = Text(message, style="red")
    if detail:
        line.append(f" {detail}")
    err.print(line, soft_wrap=True)


def settings(config: Path | None, **flags: Any) -> Settings:
    """The settings, command-line flags last; a configuration error ends the command (exit 2)."""
    try:
        return cfg.load(config, **{k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()})
    except ConfigError as exc:
        error("config error:", str(exc))
        raise typer.Exit(EXIT_USAGE) from None


def archive(s: Settings, create: bool = False) -> Archive:
    """The archive the settings name (made there only with `create`, for the commands that store);
    none there, or one that cannot be opened, ends the command (exit 1)."""
    try:
        return services.archive(s, create)
    except ArchiveError as exc:
        error(str(exc))
        raise typer.Exit(EXIT_FAIL) from None


def timeouts(s: Settings) -> Timeouts:
    return Timeouts.of(s)


def peer(text: str) -> Peer:
    try:
        return parse_peer(text)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None


def remote_peer(s: Settings, text: str, service: str | None = None) -> Peer:
    """A configured remote by name (checked for the service), else AET@host:port."""
    r = s.remotes.get(text)
    if r is not None:
        if service and service not in r.services:
            error(f"remote {text} is not configured for {service}",
                  f"(its services: {', '.join(r.services) or 'none'})")
            raise typer.Exit(EXIT_USAGE)
        if r.url:
            error(f"remote {text} is a DICOMweb endpoint ({r.url}): this command speaks DIMSE")
            raise typer.Exit(EXIT_USAGE)
        return configured_peer(r, s)
    try:
        return parse_peer(text)
    except ValueError:
        known = ", ".join(s.remotes) or "none configured"
        error(f"{text!r} is neither a configured remote ({known}) nor AET@host:port")
        raise typer.Exit(EXIT_USAGE) from None


def web_remote(s: Settings, text: str, service: str) -> str | None:
    """The URL of a configured DICOMweb remote allowed `service`, or None for a DIMSE peer."""
    r = s.remotes.get(text)
    if r is None or not r.url:
        return None
    if service not in r.services:
        error(f"remote {text} is not configured for {service}", f"(its services: {', '.join(r.services) or 'none'})")
        raise typer.Exit(EXIT_USAGE)
    return r.url


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False, disable=not err.is_terminal)


def association_exit(exc: Exception) -> int:
    return {"unreachable": EXIT_UNREACHABLE, "timeout": EXIT_TIMEOUT, "refused": EXIT_REFUSED}.get(
        getattr(exc, "kind", ""), EXIT_REJECTED)


def failed(exc: Exception, what: str, json_out: bool = False) -> typer.Exit:
    """Report a failed association or request and the exit code its kind calls for."""
    if json_out:
        emit_json({"ok": False, "error": str(exc), "kind": getattr(exc, "kind", "")})
    error(f"{what} failed:", str(exc))
    return typer.Exit(association_exit(exc))


def short_uid(value: str, wide: bool = False) -> str:
    """A UID cut in the middle (1.2.840.1136…92374521) so that a table row stays one line."""
    if wide or len(value) <= 24:
        return value
    return f"{value[:12]}…{value[-9:]}"


def table(title: str, columns: list[str], rows: Iterable[Sequence[str]], wide: bool = False) -> Table:
    """A listing: UID columns (named ...UID) cut in the middle and kept on one line unless `wide`."""
    t = Table(title=title)
    uids = {i for i, col in enumerate(columns) if col.endswith("UID")}
    for i, col in enumerate(columns):
        if i in uids and not wide:
            t.add_column(col, no_wrap=True, min_width=22)
        else:
            t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(short_uid(v, wide) if i in uids else v for i, v in enumerate(row)))
    return t


def describe(exc: BaseException) -> str:
    """One line for the operator about an error: ours as they are, Python's with their type."""
    if isinstance(exc, DicomnodeError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "nested too deeply to process (sequences within sequences beyond the recursion limit)"
    return f"{type(exc).__name__}: {exc}"


def status_table(rows: list[dict[str, Any]], what: str) -> None:
    """Per-file outcomes: all of them for a few files, the problems only for many."""
    shown = [r for r in rows if r["state"] != "success"] if len(rows) > 20 else rows
    if not shown:
        return
    t = Table(title=f"{what}: {'problems' if len(shown) < len(rows) else 'files'}")
    for col in ("path", "state", "status", "comment"):
        t.add_column(col, overflow="fold")
    for r in shown:
        style = {"success": "green", "warning": "yellow", "skipped": "yellow"}.get(r["state"], "red")
        t.add_row(r["path"], f"[{style}]{r['state']}[/]", r["status"] or "", r["comment"])
    out.print(t)


def summary_exit(rows: list[dict[str, Any]], what: str, done: str, json_out: bool, where: str = "",
                 tail: str = "") -> None:
    """Print `N <done><where>, M failed<tail>` (or JSON of the summary and the rows); exit 1 when any failed.
    Rows in state "skipped" (listed, not attempted: e.g. files on media that no record names) are
    counted apart and do not fail the command."""
    failed_n = sum(1 for r in rows if r["state"] == "failed")
    skipped_n = sum(1 for r in rows if r["state"] == "skipped")
    if json_out:
        emit_json({"summary": {done: len(rows) - failed_n - skipped_n, "failed": failed_n,
                               **({"skipped": skipped_n} if skipped_n else {})}, "files": rows})
    else:
        status_table(rows, what)
        out.print(f"{len(rows) - failed_n - skipped_n} {done}{where}, {failed_n} failed"
                  f"{f', {skipped_n} skipped' if skipped_n else ''}{tail}")
    raise typer.Exit(EXIT_FAIL if failed_n else EXIT_OK)


def dcmtk_keys(items: list[str], return_keys: bool = True) -> dict[str, str]:
    """-k as DCMTK takes it: Keyword=Value, Keyword (a return key), or a tag gggg,eeee / (gggg,eeee).

    With return_keys False (filters, as `ls -k` takes them) every key needs a value.
    """
    from pydicom.datadict import keyword_for_tag

    keys: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?", key)
        if m:
            key = keyword_for_tag(int(m[1] + m[2], 16)) or key
        if not key or (not sep and not return_keys):
            example = "Keyword=Value or Keyword" if return_keys else "Key=Value"
            error(f"-k {item!r}: expected {example}, e.g. -k PatientID=123")
            raise typer.Exit(EXIT_USAGE)
        keys[key] = value
    return keys


def resolve_targets(targets: list[str], config: Path | None, storage: Path | None,
                    db: str | None) -> services.Inputs:
    """Paths as they are (folders recursively, unreadable ones reported); anything else is looked
    up as a study, series or instance UID in the archive."""
    found = services.Inputs()
    arc: Archive | None = None
    for t in targets:
        p = Path(t)
        if p.exists():
            got = services.collect_files([p])
            found.files += got.files
            found.unreadable += got.unreadable
            continue
        if arc is None:
            arc = archive(settings(config, storage=storage, db=db))
        files = services.instance_files(arc, t)
        if files is None:
            error(f"{t}: no such file, and not a UID in the archive")
            raise typer.Exit(EXIT_USAGE)
        found.files += files
    return found


def unreadable_rows(inputs: services.Inputs) -> list[dict[str, Any]]:
    """A failed row per folder that could not be read: an input skipped in silence would be lost."""
    return [{"path": str(p), "state": "failed", "status": "", "comment": f"cannot read: {why}"}
            for p, why in inputs.unreadable]
