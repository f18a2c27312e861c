"""`dicomnode`: the operator's command line.

Conventions: peers as AET@host:port, --json for scripts (on stdout, nothing
else there), rich tables and progress bars for people (on stderr where they
would mix with data), and exit codes scripts can trust:

    0 success            1 something failed / inconsistent / not found
    2 usage or config    3 remote unreachable     4 remote rejected the association
    5 remote refused the request (status)         6 no answer in time (DIMSE timeout)

The commands that talk to remote nodes are in node/cli_remote.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from node import config as cfg
from node.peers import Peer, parse_peer

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED, EXIT_REFUSED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5, 6

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dicomnode: a DICOM node that never loses an image.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="node.toml to read")]
StorageOpt = Annotated[Optional[Path], typer.Option("--storage", help="archive folder")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL of the index")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
AetOpt = Annotated[Optional[str], typer.Option("--aet", help="our AE title (calling AE for clients)")]


def _settings(config: Path | None, **flags: Any) -> cfg.Settings:
    try:
        return cfg.load(config, **{k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()})
    except cfg.ConfigError as exc:
        err.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def _archive(settings: cfg.Settings):  # type: ignore[no-untyped-def]
    from storage.archive import open_archive

    try:
        return open_archive(settings.storage_path, settings.db_url)
    except Exception as exc:  # unreachable database, unwritable folder
        err.print(f"[red]cannot open the archive at {settings.storage_path}:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAIL) from None


def _peer(text: str) -> Peer:
    try:
        return parse_peer(text)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False, disable=not err.is_terminal)


def _timeouts(s: cfg.Settings):  # type: ignore[no-untyped-def]
    from node.scu import Timeouts

    return Timeouts(s.acse_timeout, s.dimse_timeout, s.network_timeout)


def _association_exit(exc: Exception) -> int:
    return {"unreachable": EXIT_UNREACHABLE, "timeout": EXIT_TIMEOUT, "refused": EXIT_REFUSED}.get(
        getattr(exc, "kind", ""), EXIT_REJECTED)


@app.command()
def serve(
    config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
    host: Annotated[Optional[str], typer.Option("--host", help="address to listen on")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port (0 = any free port)")] = None,
) -> None:
    """Run the storage SCP until SIGINT/SIGTERM."""
    from node.serve import serve as run, setup_logging

    s = _settings(config, storage=storage, db=db, aet=aet, host=host, port=port)
    setup_logging(s.log_level)
    try:
        code = run(s)
    except OSError as exc:
        err.print(f"[red]cannot listen on {s.host}:{s.port}:[/] {exc}")
        raise typer.Exit(EXIT_FAIL) from None
    raise typer.Exit(code)


@app.command("import")
def import_(paths: Annotated[list[Path], typer.Argument(help="files or folders (recursive)")],
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
            force: Annotated[bool, typer.Option("--force", help="accept files without preamble/meta")] = False,
            json_out: JsonOpt = False) -> None:
    """Put local files into the archive through the same ingest path as C-STORE."""
    from node.scu import iter_files
    from storage.ingest import DuplicatePolicy, Ingester

    s = _settings(config, storage=storage, db=db)
    layout, index = _archive(s)
    ing = Ingester(layout, index, DuplicatePolicy(s.duplicate_policy), s.min_free_mb * 1024 * 1024,
                   plan=s.actions_for)
    files = list(iter_files(paths))
    rows = []
    with _progress() as bar:
        task = bar.add_task("importing", total=len(files))
        for f in files:
            o = ing.import_file(f, force=force)
            rows.append({"path": str(f), "SOPInstanceUID": o.sop_instance_uid,
                         "state": "success" if o.ok else "failed", "action": o.action,
                         "status": f"0x{o.status:04X}", "comment": o.comment})
            bar.advance(task)
    failed = sum(1 for r in rows if r["state"] == "failed")
    if json_out:
        _emit_json({"summary": {"imported": len(rows) - failed, "failed": failed}, "files": rows})
    else:
        _status_table(rows, "import")
        out.print(f"{len(rows) - failed} imported, {failed} failed")
    raise typer.Exit(EXIT_FAIL if failed else EXIT_OK)


def _status_table(rows: list[dict[str, Any]], what: str) -> None:
    shown = [r for r in rows if r["state"] != "success"] if len(rows) > 20 else rows
    if not shown:
        return
    t = Table(title=f"{what}: {'problems' if len(shown) < len(rows) else 'files'}")
    for col in ("path", "state", "status", "comment"):
        t.add_column(col, overflow="fold")
    for r in shown:
        style = {"success": "green", "warning": "yellow"}.get(r["state"], "red")
        t.add_row(r["path"], f"[{style}]{r['state']}[/]", r["status"] or "", r["comment"])
    out.print(t)


LEVEL_NAMES = {"patients": "PATIENT", "studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
LS_COLUMNS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
    "STUDY": ["PatientID", "PatientName", "StudyDate", "StudyDescription", "AccessionNumber",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyInstanceUID"],
    "SERIES": ["PatientID", "StudyDate", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"],
    "IMAGE": ["PatientID", "Modality", "InstanceNumber", "SOPClassUID", "TransferSyntaxUID", "Rows", "Columns",
              "NumberOfFrames", "SOPInstanceUID", "finding_codes"],
}


@app.command()
def ls(level: Annotated[str, typer.Argument(help="patients | studies | series | instances")],
       filters: Annotated[Optional[list[str]], typer.Option("-k", help="Key=Value filter (* and ? wildcards)")] = None,
       limit: Annotated[Optional[int], typer.Option("--limit", help="at most this many rows")] = None,
       problems: Annotated[bool, typer.Option("--problems", help="instances whose analysis has findings")] = False,
       config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """List what the archive holds at one level."""
    lv = LEVEL_NAMES.get(level.lower())
    if lv is None:
        err.print(f"[red]unknown level {level!r}:[/] patients, studies, series or instances")
        raise typer.Exit(EXIT_USAGE)
    keys = _parse_keys(filters or [])
    s = _settings(config, storage=storage, db=db)
    _layout, index = _archive(s)
    try:
        rows = list(index.list_level(lv, keys, limit, problems=problems))
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    if lv == "IMAGE":
        for r in rows:
            r["path"] = str(_layout.absolute(r["path"]))
    if json_out:
        _emit_json(rows)
        return
    t = Table(title=f"{len(rows)} {level}")
    for col in LS_COLUMNS[lv]:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in LS_COLUMNS[lv]))
    out.print(t)


def _parse_keys(items: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]-k {item!r}:[/] expected Key=Value, e.g. -k PatientID=123")
            raise typer.Exit(EXIT_USAGE)
        keys[key.strip()] = value
    return keys


@app.command()
def show(uid: Annotated[str, typer.Argument(help="Study, Series or SOP Instance UID")],
         config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """The index row of a study, series or instance, and a header dump."""
    from storage.header import read_header

    s = _settings(config, storage=storage, db=db)
    layout, index = _archive(s)
    level, row = index.find_any(uid)
    if row is None:
        err.print(f"[red]{uid} is not in the archive[/]")
        raise typer.Exit(EXIT_FAIL)
    header_text = ""
    if level == "IMAGE":
        from node.pipeline import report_path

        row["path"] = str(layout.absolute(row["path"]))
        rp = report_path(Path(row["path"]))
        row["analysis_report"] = str(rp) if rp.exists() else None
        links = index.derived(uid)
        row["derived"] = [f"{d['kind']}: {d['uid'] or d['path']}" for d in links["derived"]]
        row["derived_from"] = [f"{d['kind']} from {d['source_uid']}" for d in links["derived_from"]]
        try:
            header = read_header(Path(row["path"]))
            header_text = str(header.meta) + "\n" + str(header.ds)
            row["header"] = header.ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "")
        except Exception as exc:
            header_text = f"cannot read header: {exc}"
            row["header_error"] = header_text
    if json_out:
        _emit_json({"level": level, **row})
        return
    t = Table(title=f"{level} {uid}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in row.items():
        if k != "header":
            t.add_row(k, "" if v is None else str(v))
    out.print(t)
    if header_text:
        out.print(header_text, markup=False, highlight=False)


@app.command()
def stats(config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Counts per level and bytes stored."""
    s = _settings(config, storage=storage, db=db)
    _layout, index = _archive(s)
    st = index.stats()
    if json_out:
        _emit_json(st)
        return
    t = Table(title="archive")
    for k in st:
        t.add_column(k, justify="right")
    t.add_row(*(f"{v:,}" for v in st.values()))
    out.print(t)


@app.command()
def delete(uid: Annotated[str, typer.Argument(help="Study, Series or SOP Instance UID")],
           config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a study, series or instance: index rows first, then its files."""
    from node.pipeline import report_path
    from storage import durable

    s = _settings(config, storage=storage, db=db)
    layout, index = _archive(s)
    paths = index.delete(uid)
    if not paths:
        err.print(f"[red]{uid} is not in the archive[/]")
        raise typer.Exit(EXIT_FAIL)
    removed = sum(durable.remove(layout.absolute(p)) for p in paths)
    for p in paths:  # derived files go with their object
        durable.remove(report_path(layout.absolute(p)))
    if json_out:
        _emit_json({"uid": uid, "instances_deleted": len(paths), "files_removed": removed})
    else:
        out.print(f"deleted {uid}: {len(paths)} instance(s), {removed} file(s) removed")


@app.command()
def check(repair: Annotated[bool, typer.Option("--repair", help="index orphans, drop rows without files")] = False,
          quick: Annotated[bool, typer.Option("--quick", help="skip content hash verification")] = False,
          config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Compare the index with the files; exit 1 when they disagree."""
    from storage.check import check as run_check, repair as run_repair

    s = _settings(config, storage=storage, db=db)
    layout, index = _archive(s)
    total = index.stats()["instances"]
    with _progress() as bar:
        task = bar.add_task("checking", total=total)
        report = run_check(layout, index, verify_hashes=not quick, progress=lambda: bar.advance(task))
    if repair and not report.consistent:
        run_repair(layout, index, report)
    if json_out:
        _emit_json(report.as_dict())
    else:
        colour = "green" if report.consistent else "red"
        out.print(f"[{colour}]{report.checked} instances checked: {len(report.missing)} missing files, "
                  f"{len(report.orphans)} orphan files, {len(report.mismatched)} hash mismatches[/]")
        for name, items in (("missing", report.missing), ("orphan", report.orphans),
                            ("mismatch", report.mismatched), ("unrepairable", report.unrepairable)):
            for i in items[:50]:
                out.print(f"  {name}: {i}", markup=False)
        if report.repaired:
            out.print("repaired: " + ", ".join(f"{k} {v}" for k, v in report.repaired.items()))
    still_bad = report.mismatched or report.unrepairable or (not repair and not report.consistent)
    raise typer.Exit(EXIT_FAIL if still_bad else EXIT_OK)


jobs_app = typer.Typer(help="The on-arrival job queue: list, retry.", no_args_is_help=False)
app.add_typer(jobs_app, name="jobs")


@jobs_app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context,
         state: Annotated[Optional[str], typer.Option("--state", help="pending | running | failed | done")] = None,
         limit: Annotated[int, typer.Option("--limit", help="newest N jobs")] = 1000,
         config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """List jobs, newest first, with the queue depth."""
    if ctx.invoked_subcommand is not None:
        return
    from storage.jobs import JobQueue

    if state is not None and state not in ("pending", "running", "failed", "done"):
        err.print(f"[red]--state {state!r}:[/] pending, running, failed or done")
        raise typer.Exit(EXIT_USAGE)
    _layout, index = _archive(_settings(config, storage=storage, db=db))
    q = JobQueue(index)
    rows, depth = q.list(state, limit), q.depth()
    if json_out:
        _emit_json({"depth": depth, "jobs": rows})
        return
    t = Table(title="jobs: " + ", ".join(f"{v} {k}" for k, v in depth.items()))
    for col in ("id", "action", "state", "attempts", "SOPInstanceUID", "updated", "last error / note"):
        t.add_column(col, overflow="fold")
    for r in rows:
        style = {"failed": "red", "done": "green", "running": "yellow"}.get(r["state"], "")
        t.add_row(str(r["id"]), r["action"], f"[{style}]{r['state']}[/]" if style else r["state"], str(r["attempts"]),
                  r["sop_instance_uid"], r["updated_at"], r["last_error"] or "")
    out.print(t)


@jobs_app.command("retry")
def jobs_retry(job_id: Annotated[Optional[int], typer.Argument(help="job id")] = None,
               all_failed: Annotated[bool, typer.Option("--all-failed", help="every failed job")] = False,
               config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Queue a failed (or done) job again, or every failed job."""
    from storage.jobs import JobQueue

    if (job_id is None) == (not all_failed):
        err.print("[red]give a job id or --all-failed[/]")
        raise typer.Exit(EXIT_USAGE)
    _layout, index = _archive(_settings(config, storage=storage, db=db))
    n = JobQueue(index).retry(job_id, all_failed)
    if json_out:
        _emit_json({"requeued": n})
    else:
        out.print(f"{n} job(s) queued again")
    raise typer.Exit(EXIT_OK if n or all_failed else EXIT_FAIL)


@app.command()
def analyze(targets: Annotated[list[str], typer.Argument(help="files, folders (recursive) or archive UIDs")],
            out_dir: Annotated[Optional[Path], typer.Option("-o", "--output", help="write <name>_analysis.json "
                                                           "per file and series_analysis.json here")] = None,
            force: Annotated[bool, typer.Option("--force", help="read files without preamble or meta")] = False,
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Pixel-data analysis report: offsets, frame sizes, and what does not add up. Exit 1 on error findings."""
    from node.analyze import analyze_file, summary
    from node.scu import iter_files

    files = _resolve_targets(targets, config, storage, db, iter_files)
    reports = []
    with _progress() as bar:
        task = bar.add_task("analysing", total=len(files))
        for f in files:
            try:
                r = analyze_file(f, force=force)
            except Exception as exc:  # one bad file is reported in its own JSON; the run goes on
                code = "UNREADABLE_FILE" if isinstance(exc, OSError) else "ANALYSIS_FAILED"
                r = {"file_info": {"filename": f.name, "filepath": str(f)},
                     "findings": [{"code": code, "severity": "error", "message": f"{type(exc).__name__}: {exc}"}]}
            reports.append(r)
            bar.advance(task)
    if out_dir is not None:
        _write_reports(out_dir, reports)
    if json_out:
        _emit_json(reports)
    else:
        t = Table(title=f"{len(reports)} file(s) analysed")
        for col in ("file", "transfer syntax", "frames", "pixel bytes", "expected", "findings"):
            t.add_column(col, overflow="fold")
        for r in reports:
            sm = summary(r)
            t.add_row(r["file_info"]["filename"], str((r.get("dicom_identifiers") or {}).get("TransferSyntaxName")),
                      str(sm["frame_count"]), str(sm["actual_size"]), str(sm["expected_size"]),
                      ", ".join(sm["codes"]) or "[green]none[/]")
        out.print(t)
    errors = sum(summary(r)["errors"] for r in reports)
    raise typer.Exit(EXIT_FAIL if errors else EXIT_OK)


def _resolve_targets(targets: list[str], config: Path | None, storage: Path | None, db: str | None,
                     iter_files: Any) -> list[Path]:
    """Paths as they are; anything else is looked up as a study, series or instance UID in the archive."""
    paths: list[Path] = []
    index = layout = None
    for t in targets:
        p = Path(t)
        if p.exists():
            paths.extend(iter_files([p]))
            continue
        if index is None:
            layout, index = _archive(_settings(config, storage=storage, db=db))
        level, _row = index.find_any(t)
        if level is None:
            err.print(f"[red]{t}: no such file, and not a UID in the archive[/]")
            raise typer.Exit(EXIT_USAGE)
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
        paths.extend(layout.absolute(r["path"]) for r in index.list_level("IMAGE", {key: t}))
    return paths


def _write_reports(out_dir: Path, reports: list[dict[str, Any]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    from node.analyze import summary

    series: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for r in reports:
        stem = Path(r["file_info"]["filename"]).stem
        name, n = f"{stem}_analysis.json", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}_analysis.json"
        used.add(name)
        (out_dir / name).write_text(json.dumps(r, indent=2, default=str))
        uid = (r.get("dicom_identifiers") or {}).get("SeriesInstanceUID") or "unknown"
        s = series.setdefault(uid, {"instances": [], "frames": 0, "errors": 0, "warnings": 0, "codes": []})
        sm = summary(r)
        s["instances"].append({"report": name, "SOPInstanceUID": (r.get("dicom_identifiers") or {}).get("SOPInstanceUID"),
                               "frames": sm["frame_count"], "codes": sm["codes"]})
        s["frames"] += sm["frame_count"] or 0
        s["errors"] += sm["errors"]
        s["warnings"] += sm["warnings"]
        s["codes"] = sorted(set(s["codes"]) | set(sm["codes"]))
    (out_dir / "series_analysis.json").write_text(json.dumps({"series": series}, indent=2))


from node import cli_remote  # noqa: E402,F401 - registers the remote commands on app


def main() -> None:
    """Console entry point: an unexpected error is one line for the operator, not a traceback.

    DICOMNODE_DEBUG=1 shows the traceback.
    """
    import os

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


if __name__ == "__main__":
    # `python -m node.cli`: run the imported module, on whose app node/cli_remote.py registered its commands
    from node.cli import main as _main

    _main()
