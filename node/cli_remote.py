"""`dicomnode` commands that talk to remote nodes (remotes, echo, send, find, move, get), and the
file-making ones (anonymize, convert).

A remote is named by its [remotes.NAME] in the configuration or written
out as AET@host:port. A configured remote is only used for the services
listed for it.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from node import config as cfg
from node.cli import (EXIT_FAIL, EXIT_OK, EXIT_USAGE, AetOpt, ConfigOpt, DbOpt, JsonOpt, StorageOpt,
                      _archive, _association_exit, _emit_json, _progress, _resolve_targets, _settings,
                      _status_table, _timeouts, app, err, out)
from node.peers import Peer, parse_peer

KeysOpt = Annotated[Optional[list[str]], typer.Option("-k", "--key", help="Keyword=Value (empty value: return key)")]
LevelOpt = Annotated[Optional[str], typer.Option("--level", "-L", help="PATIENT | STUDY | SERIES | IMAGE")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="study | patient (root information model)")]


def resolve(s: cfg.Settings, text: str, service: str | None = None) -> Peer:
    """A configured remote by name (checked for the service), else AET@host:port."""
    remote = s.remotes.get(text)
    if remote is not None:
        if service and service not in remote.services:
            err.print(f"[red]remote {text} is not configured for {service}[/] "
                      f"(its services: {', '.join(remote.services) or 'none'})")
            raise typer.Exit(EXIT_USAGE)
        return Peer(remote.aet, remote.host, remote.port)
    try:
        return parse_peer(text)
    except ValueError:
        known = ", ".join(s.remotes) or "none configured"
        err.print(f"[red]{text!r} is neither a configured remote ({known}) nor AET@host:port[/]")
        raise typer.Exit(EXIT_USAGE) from None


def _fail(exc: Exception, what: str, json_out: bool = False) -> typer.Exit:
    if json_out:
        _emit_json({"ok": False, "error": str(exc), "kind": getattr(exc, "kind", "")})
    err.print(f"[red]{what} failed:[/] {exc}")
    return typer.Exit(_association_exit(exc))


@app.command()
def remotes(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the remote nodes of the configuration."""
    s = _settings(config)
    rows = [{"name": r.name, "aet": r.aet, "host": r.host, "port": r.port, "services": list(r.services)}
            for r in s.remotes.values()]
    if json_out:
        _emit_json(rows)
        return
    t = Table(title=f"{len(rows)} remote(s)")
    for col in ("name", "aet", "host", "port", "services"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["aet"], r["host"], str(r["port"]), ", ".join(r["services"]))
    out.print(t)


@app.command()
def echo(peer: Annotated[Optional[str], typer.Argument(help="remote name or AET@host:port")] = None,
         all_: Annotated[bool, typer.Option("--all", help="every configured remote")] = False,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-ECHO one remote (or all) and report the round-trip time."""
    from node.scu import AssociationFailed, echo as c_echo

    s = _settings(config, aet=aet)
    if all_ == (peer is not None):
        err.print("[red]give a remote, or --all[/]")
        raise typer.Exit(EXIT_USAGE)
    targets = [(n, resolve(s, n)) for n in s.remotes] if all_ else [(peer, resolve(s, peer))]  # type: ignore[list-item]
    rows, code = [], EXIT_OK
    for name, p in targets:
        try:
            rtt = c_echo(p, s.aet, _timeouts(s))
            rows.append({"remote": name, "peer": str(p), "ok": True, "rtt_ms": round(rtt, 3)})
        except AssociationFailed as exc:
            rows.append({"remote": name, "peer": str(p), "ok": False, "error": str(exc), "kind": exc.kind})
            code = code or _association_exit(exc)
    if json_out:
        _emit_json(rows if all_ else rows[0])
    else:
        for r in rows:
            if r["ok"]:
                out.print(f"{r['peer']}: C-ECHO success in {r['rtt_ms']:.1f} ms")
            else:
                err.print(f"[red]{r['peer']}: echo failed:[/] {r['error']}")
    raise typer.Exit(code)


@app.command()
def send(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         targets: Annotated[list[str], typer.Argument(help="files, folders (recursive), or archive UIDs "
                                                           "(study, series, instance)")],
         config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
         json_out: JsonOpt = False) -> None:
    """C-STORE files, or studies/series/instances of the archive, to a remote node."""
    from node.scu import AssociationFailed, iter_files, send as c_send

    s = _settings(config, aet=aet, storage=storage, db=db)
    p = resolve(s, peer, "store")
    files = _resolve_targets(targets, config, storage, db, iter_files)
    with _progress() as bar:
        task = bar.add_task(f"sending to {p.aet}", total=len(files))
        try:
            report = c_send(p, files, s.aet, _timeouts(s), progress=lambda _i: bar.advance(task))
        except AssociationFailed as exc:
            raise _fail(exc, "send") from None
    rows = [{"path": str(i.path), "SOPInstanceUID": i.sop_instance, "state": i.state,
             "status": None if i.status is None else f"0x{i.status:04X}", "comment": i.comment}
            for i in report.items]
    summary = {k: report.count(k) for k in ("success", "warning", "failed")}
    if json_out:
        _emit_json({"peer": str(p), "summary": summary, "files": rows})
    else:
        _status_table(rows, "send")
        out.print(f"{summary['success']} sent, {summary['warning']} with warnings, {summary['failed']} failed")
    raise typer.Exit(EXIT_FAIL if summary["failed"] else EXIT_OK)


def _query(s: cfg.Settings, keys: list[str] | None, level: str | None, defaults: bool) -> tuple[str, Any]:
    from node.qrscu import identifier, split_level

    try:
        lv, k = split_level(dcmtk_keys(keys or []), level)
        return lv, identifier(lv, k, defaults)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None


def dcmtk_keys(items: list[str]) -> dict[str, str]:
    """-k as DCMTK takes it: Keyword=Value, Keyword (a return key), or a tag gggg,eeee / (gggg,eeee)."""
    from pydicom.datadict import keyword_for_tag

    keys: dict[str, str] = {}
    for item in items:
        key, _sep, value = item.partition("=")
        key = key.strip()
        m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?", key)
        if m:
            key = keyword_for_tag(int(m[1] + m[2], 16)) or key
        if not key:
            err.print(f"[red]-k {item!r}:[/] expected Keyword=Value or Keyword, e.g. -k PatientID=123")
            raise typer.Exit(EXIT_USAGE)
        keys[key] = value
    return keys


def _model(model: str) -> str:
    m = model.lower()
    if m not in ("study", "patient"):
        err.print(f"[red]--model {model!r}: study or patient[/]")
        raise typer.Exit(EXIT_USAGE)
    return m


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)
    return str(value)


@app.command()
def find(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
         csv_out: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-FIND on a remote node; the matches as a table, JSON or CSV."""
    from node.qrscu import QRFailed, find as c_find
    from node.scu import AssociationFailed

    s = _settings(config, aet=aet)
    p = resolve(s, peer, "find")
    lv, ident = _query(s, keys, level, defaults=True)
    columns = [e.keyword for e in ident if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
    rows: list[dict[str, str]] = []
    try:
        for ds in c_find(p, s.aet, _model(model), ident, _timeouts(s)):
            rows.append({c: _text(ds.get(c)) for c in columns})
    except (AssociationFailed, QRFailed) as exc:
        raise _fail(exc, "C-FIND", json_out) from None
    if json_out:
        _emit_json(rows)
    elif csv_out:
        w = csv.DictWriter(sys.stdout, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    else:
        t = Table(title=f"{len(rows)} match(es) at {lv} level on {p}")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(r[c] for c in columns))
        out.print(t)


def _retrieve_summary(what: str, r: Any, json_out: bool, extra: dict[str, Any] | None = None) -> None:
    data = {"status": f"0x{r.status:04X}", "completed": r.completed, "failed": r.failed, "warning": r.warning,
            "failed_sop_instance_uids": r.failed_uids, **(extra or {})}
    if json_out:
        _emit_json(data)
    else:
        style = "green" if not r.failed and r.status == 0 else "yellow" if r.completed else "red"
        out.print(f"[{style}]{what}: {r.completed} completed, {r.failed} failed, {r.warning} warning[/] "
                  f"(final status 0x{r.status:04X})")
        for uid in r.failed_uids[:20]:
            out.print(f"  failed: {uid}")


def _bar_updater(bar: Any, task: Any) -> Any:
    def update(r: Any) -> None:
        if r.total is not None:
            bar.update(task, total=r.total, completed=r.completed + r.failed + r.warning)
    return update


@app.command()
def move(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
         keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
         dest: Annotated[Optional[str], typer.Option("--dest", help="move destination AE (default: this node)")] = None,
         config: ConfigOpt = None, aet: AetOpt = None, json_out: JsonOpt = False) -> None:
    """C-MOVE from a remote node, by default to this node (received by the running `serve`)."""
    from node.qrscu import QRFailed, move as c_move
    from node.scu import AssociationFailed

    s = _settings(config, aet=aet)
    p = resolve(s, peer, "move")
    _lv, ident = _query(s, keys, level, defaults=False)
    with _progress() as bar:
        task = bar.add_task(f"moving from {p.aet} to {dest or s.aet}", total=None)
        try:
            r = c_move(p, s.aet, _model(model), ident, dest or s.aet, _timeouts(s), _bar_updater(bar, task))
        except (AssociationFailed, QRFailed) as exc:
            raise _fail(exc, "C-MOVE", json_out) from None
    _retrieve_summary("move", r, json_out)
    raise typer.Exit(EXIT_FAIL if r.failed or r.status not in (0x0000, 0xB000) else EXIT_OK)


@app.command()
def get(peer: Annotated[str, typer.Argument(help="remote name or AET@host:port")],
        keys: KeysOpt = None, level: LevelOpt = None, model: ModelOpt = "study",
        config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
        json_out: JsonOpt = False) -> None:
    """C-GET from a remote node straight into the archive (no running `serve` needed)."""
    from node.qrscu import QRFailed, get as c_get
    from node.scu import AssociationFailed
    from storage.ingest import DuplicatePolicy, Ingester

    s = _settings(config, aet=aet, storage=storage, db=db)
    p = resolve(s, peer, "get")
    _lv, ident = _query(s, keys, level, defaults=False)
    layout, index = _archive(s)
    ing = Ingester(layout, index, DuplicatePolicy(s.duplicate_policy), s.min_free_mb * 1024 * 1024,
                   plan=s.actions_for)
    with _progress() as bar:
        task = bar.add_task(f"getting from {p.aet}", total=None)
        try:
            r = c_get(p, s.aet, _model(model), ident, ing, _timeouts(s), _bar_updater(bar, task))
        except (AssociationFailed, QRFailed) as exc:
            raise _fail(exc, "C-GET", json_out) from None
    stored = sum(1 for o in r.stored if o.ok)
    problems = [{"SOPInstanceUID": o.sop_instance_uid, "status": f"0x{o.status:04X}", "comment": o.comment}
                for o in r.stored if not o.ok]
    _retrieve_summary("get", r, json_out, {"archived": stored, "archive_failures": problems})
    if not json_out:
        for prob in problems[:20]:
            err.print(f"[red]not archived[/] {prob['SOPInstanceUID']}: {prob['status']} {prob['comment']}")
    raise typer.Exit(EXIT_FAIL if r.failed or problems or r.status not in (0x0000, 0xB000) else EXIT_OK)



@app.command()
def anonymize(targets: Annotated[list[str], typer.Argument(help="files, folders (recursive) or archive UIDs")],
              out_dir: Annotated[Path, typer.Option("-o", "--out", help="folder for the de-identified files")],
              option: Annotated[Optional[list[str]], typer.Option(
                  "--option", help="PS3.15 E option, repeatable: retain-safe-private, retain-uids, "
                  "retain-device-identity, retain-institution-identity, retain-patient-characteristics, "
                  "retain-long-full-dates, retain-long-modified-dates, clean-descriptors, "
                  "clean-structured-content, clean-graphics")] = None,
              key_file: Annotated[Optional[Path], typer.Option("--key-file", help="secret pseudonym key "
                                                               "(default: the node's, made on first use)")] = None,
              config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
              json_out: JsonOpt = False) -> None:
    """De-identify files or archived instances (PS3.15 Annex E basic profile and options) into a folder."""
    from node.anonymize import AnonymizeError, Pseudonyms, Settings as Profile, anonymize_file, load_key
    from node.scu import iter_files

    s = _settings(config, storage=storage, db=db)
    opts = [o.replace("-", "_") for o in (option or s.anonymize_options)]
    try:
        profile = Profile(frozenset(opts), s.patient_prefix)
        pseudo = Pseudonyms(load_key(key_file or s.key_path))
    except (AnonymizeError, OSError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    files = _resolve_targets(targets, config, storage, db, iter_files)
    rows = []
    with _progress() as bar:
        task = bar.add_task("anonymizing", total=len(files))
        for f in files:
            try:
                tmp = out_dir / f".incoming-{f.name}"
                r = anonymize_file(f, tmp, profile, pseudo)
                final = out_dir / f"{r.sop_instance_uid}.dcm"  # nothing of the original in the name
                tmp.replace(final)
                rows.append({"path": str(f), "state": "success", "status": "", "output": str(final),
                             "SOPInstanceUID": r.sop_instance_uid, "burned_in_risk": r.burned_in_risk,
                             "comment": r.burned_in_risk})
            except Exception as exc:  # one bad file must not stop the batch
                rows.append({"path": str(f), "state": "failed", "status": "", "output": None,
                             "comment": f"{type(exc).__name__}: {exc}"})
            bar.advance(task)
    failed = sum(1 for r in rows if r["state"] == "failed")
    if json_out:
        _emit_json({"summary": {"anonymized": len(rows) - failed, "failed": failed}, "files": rows})
    else:
        _status_table(rows, "anonymize")
        risky = sum(1 for r in rows if r.get("burned_in_risk"))
        out.print(f"{len(rows) - failed} anonymized into {out_dir}, {failed} failed"
                  + (f"; {risky} may show burned-in text (pixel data is not cleaned)" if risky else ""))
    raise typer.Exit(EXIT_FAIL if failed else EXIT_OK)


@app.command()
def convert(targets: Annotated[list[str], typer.Argument(help="files, folders (recursive) or archive UIDs")],
            out_dir: Annotated[Path, typer.Option("-o", "--out", help="output folder")],
            fmt: Annotated[str, typer.Option("--format", "-f", help="png | mp4 | gif | txt | json | all")] = "all",
            eight_bit: Annotated[bool, typer.Option("--8bit", help="8-bit grey PNG (default 16-bit)")] = False,
            fps: Annotated[Optional[float], typer.Option("--fps", help="video frame rate (default: from the data set, else 10)")] = None,
            frame: Annotated[Optional[int], typer.Option("--frame", help="only this frame (1-based), as PNG")] = None,
            window: Annotated[Optional[str], typer.Option("--window", help="C,W: window center and width")] = None,
            no_gif: Annotated[bool, typer.Option("--no-gif", help="no GIF for multi-frame objects")] = False,
            no_mp4: Annotated[bool, typer.Option("--no-mp4", help="no MP4 for multi-frame objects")] = False,
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
            json_out: JsonOpt = False) -> None:
    """Convert to PNG (16/8-bit), MP4 and GIF (multi-frame), text and JSON metadata, plus series thumbnails."""
    from node.convert import FORMATS, Options, convert_file, thumbnail
    from node.display import DisplayError, Window
    from node.scu import iter_files
    from storage.archive import uid_hash

    formats = set(FORMATS) if fmt == "all" else {f.strip() for f in fmt.split(",")}
    if not formats <= set(FORMATS):
        err.print(f"[red]--format {fmt!r}:[/] png, mp4, gif, txt, json or all (comma-separated)")
        raise typer.Exit(EXIT_USAGE)
    formats -= {"gif"} if no_gif else set()
    formats -= {"mp4"} if no_mp4 else set()
    win = None
    if window:
        try:
            c, w = (float(x) for x in window.split(","))
            win = Window(c, w)
        except ValueError:
            err.print(f"[red]--window {window!r}:[/] expected CENTER,WIDTH, e.g. --window 40,400")
            raise typer.Exit(EXIT_USAGE) from None
    opts = Options(frozenset(formats), 8 if eight_bit else 16, fps, frame, win)
    files = _resolve_targets(targets, config, storage, db, iter_files)
    rows = []
    used: set[str] = set()
    thumbs: set[str] = set()
    with _progress() as bar:
        task = bar.add_task("converting", total=len(files))
        for f in files:
            stem = f.stem if f.stem not in used else f"{f.stem}_{len(used)}"
            used.add(stem)
            try:
                made = convert_file(f, out_dir, stem, opts)
                series = str(getattr(_series_of(f), "SeriesInstanceUID", "") or "")
                if series and series not in thumbs and {"png", "mp4", "gif"} & formats:
                    thumbs.add(series)
                    try:
                        made.files.append(thumbnail(f, out_dir / "thumbnails" / f"{uid_hash(series)}.png"))
                    except DisplayError:
                        pass
                rows.append({"path": str(f), "state": "success", "status": "", "frames": made.frames,
                             "outputs": [str(p) for p in made.files], "comment": "; ".join(made.notes)})
            except DisplayError as exc:
                rows.append({"path": str(f), "state": "failed", "status": "", "outputs": [], "comment": str(exc)})
            except Exception as exc:  # one bad file never stops the batch
                rows.append({"path": str(f), "state": "failed", "status": "", "outputs": [],
                             "comment": f"{type(exc).__name__}: {exc}"})
            bar.advance(task)
    failed = sum(1 for r in rows if r["state"] == "failed")
    if json_out:
        _emit_json({"summary": {"converted": len(rows) - failed, "failed": failed}, "files": rows})
    else:
        _status_table(rows, "convert")
        out.print(f"{len(rows) - failed} converted into {out_dir}, {failed} failed")
    raise typer.Exit(EXIT_FAIL if failed else EXIT_OK)


def _series_of(path: Path) -> Any:
    from pydicom import dcmread

    try:
        return dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
    except Exception:
        return None
