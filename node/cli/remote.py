"""`dicomnode` commands that talk to remote nodes: remotes, echo, send, find, move, get.

A remote is named by its [remotes.NAME] in the configuration or written
out as AET@host:port. A configured remote is only used for the services
listed for it.
"""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dicomnode.errors import AssociationFailed, QRFailed
from dicomnode.node import services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import AetOpt, ConfigOpt, DbOpt, JsonOpt, StorageOpt, WideOpt
from dicomnode.node.settings import Settings

KeysOpt = Annotated[Optional[list[str]], typer.Option("-k", "--key", help="Keyword=Value (empty value: return key)")]
LevelOpt = Annotated[Optional[str], typer.Option("--level", "-L", help="PATIENT | STUDY | SERIES | IMAGE")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="study | patient (root information model)")]


def remotes(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the remote nodes of the configuration."""
    s = c.settings(config)
    if json_out:
        c.emit_json([{"name": r.name, "aet": r.aet, "host": r.host, "port": r.port, "services": list(r.services),
                     **({"url": r.url} if r.url else {})} for r in s.remotes.values()])
        return
    t = Table(title=f"{len(s.remotes)} remote(s)")
    for col in ("name", "aet", "host", "port", "url", "services"):
        t.add_column(col)
    for r in s.remotes.values():
        t.add_row(r.name, r.aet, r.host, str(r.port or ""), r.url, ", ".join(r.services))
    c.out.print(t)


def echo(peer: Annotated[Optional[str], typer.Argument(help="remote name or AET@host:port")] = None,
         all_: Annotated[bool, typer.Option("--all", help="every configured remote")] = False,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-ECHO one remote (or all) and report the round-trip time."""
    from dicomnode.node.dimse.scu import echo as c_echo

    s = c.settings(config, aet=aet)
    if all_ == (peer is not None):
        c.error("give a remote, or --all")
        raise typer.Exit(c.EXIT_USAGE)
    names = list(s.remotes) if peer is None else [peer]
    targets = [(n, c.remote_peer(s, n)) for n in names]
    rows: list[dict[str, Any]] = []
    code = c.EXIT_OK
    for name, p in targets:
        try:
            rtt = c_echo(p, s.aet, c.timeouts(s))
            rows.append({"remote": name, "peer": str(p), "ok": True, "rtt_ms": round(rtt, 3)})
        except AssociationFailed as exc:
            rows.append({"remote": name, "peer": str(p), "ok": False, "error": str(exc), "kind": exc.kind})
            code = code or c.association_exit(exc)
    if json_out:
        c.emit_json(rows if all_ else rows[0])
    else:
        for r in rows:
            if r["ok"]:
                c.out.print(f"{r['peer']}: C-ECHO success in {r['rtt_ms']:.1f} ms")
            else:
                c.error(f"{r['peer']}: echo failed:", r["error"])
    raise typer.Exit(code)


def send(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         targets: Annotated[list[str], typer.Argument(help="files, folders (recursive), or archive UIDs "
                                                           "(study, series, instance)")],
         config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
         commit: Annotated[bool, typer.Option("--commit", help="then ask for storage commitment and wait for "
                                              "the report: exit 1 unless every instance is committed")] = False,
         commit_timeout: Annotated[float, typer.Option("--commit-timeout", help="seconds to wait for the "
                                                       "commitment report")] = 60.0,
         json_out: JsonOpt = False) -> None:
    """C-STORE files, or studies/series/instances of the archive, to a remote node."""
    from dicomnode.node.dimse.scu import send as c_send

    s = c.settings(config, aet=aet, storage=storage, db=db)
    url = c.web_remote(s, peer, "store")
    if commit and url:
        c.error("--commit: storage commitment is a DIMSE service; this remote is a DICOMweb endpoint")
        raise typer.Exit(c.EXIT_USAGE)
    p: Any = url or c.remote_peer(s, peer, "store")
    inputs = c.resolve_targets(targets, config, storage, db)
    with c.progress() as bar:
        task = bar.add_task(f"sending to {peer}", total=len(inputs.files))
        try:
            if url:
                from dicomnode.node.web.client import send as stow

                report = stow(url, inputs.files, progress=lambda _i: bar.advance(task))
            else:
                report = c_send(p, inputs.files, s.aet, c.timeouts(s), progress=lambda _i: bar.advance(task))
        except AssociationFailed as exc:
            raise c.failed(exc, "send") from None
    rows = c.unreadable_rows(inputs) + [
        {"path": str(i.path), "SOPInstanceUID": i.sop_instance, "state": i.state,
         "status": None if i.status is None else f"0x{i.status:04X}", "comment": i.comment} for i in report.items]
    summary = {k: sum(1 for r in rows if r["state"] == k) for k in ("success", "warning", "failed")}
    committed = _commit(s, p, report.items, commit_timeout) if commit else None
    trail = services.audit_log(s)
    if trail is not None:
        trail.record("export", "failure" if summary["failed"] else "success", destination=str(p), via="send",
                     instances=summary["success"] + summary["warning"], failed=summary["failed"],
                     committed=None if committed is None else committed["committed"],
                     sops=[r["SOPInstanceUID"] for r in rows if r.get("SOPInstanceUID")][:1000])
    if json_out:
        c.emit_json({"peer": str(p), "summary": summary, "files": rows,
                     **({"commitment": committed} if committed is not None else {})})
    else:
        c.status_table(rows, "send")
        c.out.print(f"{summary['success']} sent, {summary['warning']} with warnings, {summary['failed']} failed")
        if committed is not None and committed["transaction"]:
            c.out.print(f"storage commitment {committed['transaction']}: {committed['committed']} committed, "
                        f"{len(committed['failed'])} failed" + "".join(
                            f"\n  {uid}: 0x{reason:04X}" for uid, reason in committed["failed"].items()))
        if committed is not None and committed["error"]:
            c.error("storage commitment:", committed["error"])
    uncommitted = committed is not None and (committed["error"] or committed["failed"]
                                             or committed["committed"] < committed["asked"])
    raise typer.Exit(c.EXIT_FAIL if summary["failed"] or uncommitted else c.EXIT_OK)


def _commit(s: Settings, peer: Any, items: list[Any], wait: float) -> dict[str, Any]:
    """Storage commitment of what was sent (success or warning), as --json shows it."""
    from dicomnode.node.dimse.commitment import request

    refs = [(i.sop_class, i.sop_instance) for i in items if i.state in ("success", "warning")]
    if not refs:
        return {"transaction": None, "asked": 0, "committed": 0, "failed": {}, "error": "nothing was sent"}
    try:
        got = request(peer, refs, s.aet, c.timeouts(s), wait)
    except AssociationFailed as exc:
        return {"transaction": None, "asked": len(refs), "committed": 0, "failed": {}, "error": str(exc)}
    return {"transaction": got.transaction, "asked": len(refs), "committed": len(got.committed),
            "failed": got.failed, "error": got.error}


def _query(s: Settings, keys: list[str] | None, level: str | None, defaults: bool) -> tuple[str, Any]:
    from dicomnode.node.dimse.qr_scu import identifier, split_level

    try:
        lv, k = split_level(c.dcmtk_keys(keys or []), level)
        return lv, identifier(lv, k, defaults)
    except ValueError as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_USAGE) from None


def _model(model: str) -> str:
    m = model.lower()
    if m not in ("study", "patient"):
        c.error(f"--model {model!r}: study or patient")
        raise typer.Exit(c.EXIT_USAGE)
    return m


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    return str(value)


def find(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
         csv_out: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False, wide: WideOpt = False,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-FIND on a remote node (QIDO-RS on a DICOMweb remote); the matches as a table, JSON or CSV."""
    from dicomnode.node.dimse.qr_scu import find as c_find
    from dicomnode.node.web.client import find as qido

    s = c.settings(config, aet=aet)
    url = c.web_remote(s, peer, "find")
    p: Any = url or c.remote_peer(s, peer, "find")
    lv, ident = _query(s, keys, level, defaults=True)
    columns = [e.keyword for e in ident if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
    rows: list[dict[str, str]] = []
    try:
        found = qido(url, lv, ident) if url else c_find(p, s.aet, _model(model), ident, c.timeouts(s))
        for ds in found:
            rows.append({col: _text(ds.get(col)) for col in columns})
    except (AssociationFailed, QRFailed) as exc:
        raise c.failed(exc, "C-FIND", json_out) from None
    if json_out:
        c.emit_json(rows)
    elif csv_out:
        w = csv.DictWriter(sys.stdout, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    else:
        c.out.print(c.table(f"{len(rows)} match(es) at {lv} level on {p}", columns,
                            ([r[col] for col in columns] for r in rows), wide))


def _retrieve_summary(what: str, r: Any, json_out: bool, extra: dict[str, Any] | None = None) -> None:
    data = {"status": f"0x{r.status:04X}", "completed": r.completed, "failed": r.failed, "warning": r.warning,
            "failed_sop_instance_uids": r.failed_uids, **(extra or {})}
    if json_out:
        c.emit_json(data)
    else:
        style = "green" if not r.failed and r.status == 0 else "yellow" if r.completed else "red"
        c.out.print(f"[{style}]{what}: {r.completed} completed, {r.failed} failed, {r.warning} warning[/] "
                  f"(final status 0x{r.status:04X})")
        for uid in r.failed_uids[:20]:
            c.out.print(f"  failed: {uid}")


def _bar_updater(bar: Any, task: Any) -> Any:
    def update(r: Any) -> None:
        if r.total is not None:
            bar.update(task, total=r.total, completed=r.completed + r.failed + r.warning)
    return update


def move(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
         dest: Annotated[Optional[str], typer.Option("--dest", help="move destination AE (default: this node)")] = None,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-MOVE from a remote node, by default to this node (received by the running `serve`)."""
    from dicomnode.node.dimse.qr_scu import move as c_move

    s = c.settings(config, aet=aet)
    p = c.remote_peer(s, peer, "move")
    _lv, ident = _query(s, keys, level, defaults=False)
    with c.progress() as bar:
        task = bar.add_task(f"moving from {p.aet} to {dest or s.aet}", total=None)
        try:
            r = c_move(p, s.aet, _model(model), ident, dest or s.aet, c.timeouts(s), _bar_updater(bar, task))
        except (AssociationFailed, QRFailed) as exc:
            raise c.failed(exc, "C-MOVE", json_out) from None
    _retrieve_summary("move", r, json_out)
    raise typer.Exit(c.EXIT_FAIL if r.failed or r.status not in (0x0000, 0xB000) else c.EXIT_OK)


def get(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
        keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
        config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
        json_out: JsonOpt = False) -> None:
    """C-GET from a remote node straight into the archive (no running `serve` needed)."""
    from dicomnode.node.dimse.qr_scu import get as c_get

    s = c.settings(config, aet=aet, storage=storage, db=db)
    p = c.remote_peer(s, peer, "get")
    _lv, ident = _query(s, keys, level, defaults=False)
    ing = services.ingester(s, c.archive(s, create=True))
    with c.progress() as bar:
        task = bar.add_task(f"getting from {p.aet}", total=None)
        try:
            r = c_get(p, s.aet, _model(model), ident, ing, c.timeouts(s), _bar_updater(bar, task))
        except (AssociationFailed, QRFailed) as exc:
            raise c.failed(exc, "C-GET", json_out) from None
    stored = sum(1 for o in r.stored if o.ok)
    problems = [{"SOPInstanceUID": o.sop_instance_uid, "status": f"0x{o.status:04X}", "comment": o.comment}
                for o in r.stored if not o.ok]
    _retrieve_summary("get", r, json_out, {"archived": stored, "archive_failures": problems})
    if not json_out:
        for prob in problems[:20]:
            c.error(f"not archived {prob['SOPInstanceUID']}: {prob['status']} {prob['comment']}")
    raise typer.Exit(c.EXIT_FAIL if r.failed or problems or r.status not in (0x0000, 0xB000) else c.EXIT_OK)


def register(app: typer.Typer) -> None:
    for command in (remotes, echo, send, find, move, get):
        app.command()(command)
