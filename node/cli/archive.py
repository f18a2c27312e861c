"""`dicomnode` commands about the archive itself: serve, import, ls, show, stats, delete, protect,
unprotect, check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dicomnode.errors import ArchiveError, ConfigError, QueryError
from dicomnode.node import services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import AetOpt, ConfigOpt, DbOpt, JsonOpt, StorageOpt, WideOpt
from dicomnode.storage.archive import Archive
from dicomnode.storage.query.listing import find_any, list_level


def serve(
    config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, aet: AetOpt = None,
    host: Annotated[Optional[str], typer.Option("--host", help="address to listen on")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port (0 = any free port)")] = None,
    tls_port: Annotated[Optional[int], typer.Option("--tls-port", help="DICOM TLS port, with [tls] cert and key "
                                                    "(0 = any free port)")] = None,
    http_port: Annotated[Optional[int], typer.Option("--http-port", help="DICOMweb port (0 = any free port)")] = None,
    http_host: Annotated[Optional[str], typer.Option("--http-host", help="address of the HTTP side")] = None,
    no_web: Annotated[bool, typer.Option("--no-web", help="no HTTP side (DICOMweb, viewer)")] = False,
    web_insecure: Annotated[Optional[bool], typer.Option(
        "--web-insecure", help="serve HTTP beyond loopback without authentication")] = None,
) -> None:
    """Run the node: DIMSE (storage, Q/R) and DICOMweb, until SIGINT/SIGTERM."""
    from dicomnode.node.logs import setup_logging
    from dicomnode.node.serve import serve as run

    s = c.settings(config, storage=storage, db=db, aet=aet, host=host, port=port, tls_port=tls_port,
                   http_port=-1 if no_web else http_port, http_host=http_host, web_insecure=web_insecure)
    setup_logging(s.log_level)
    try:
        code = run(s)
    except ArchiveError as exc:  # before listening: the storage, not the network
        c.error(str(exc))
        raise typer.Exit(c.EXIT_FAIL) from None
    except ConfigError as exc:  # found only when used: [tls] files that are missing or not PEM
        c.error("config error:", str(exc))
        raise typer.Exit(c.EXIT_USAGE) from None
    except OSError as exc:
        c.error(f"cannot listen on {s.host}:", str(exc))
        raise typer.Exit(c.EXIT_FAIL) from None
    raise typer.Exit(code)


def import_(paths: Annotated[list[Path], typer.Argument(help="files or folders (recursive); a DICOMDIR, or a "
                                                      "folder holding one: the files it references")],
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
            force: Annotated[bool, typer.Option("--force", help="accept files without preamble/meta")] = False,
            json_out: JsonOpt = False) -> None:
    """Put local files into the archive through the same ingest path as C-STORE."""
    s = c.settings(config, storage=storage, db=db)
    ing = services.ingester(s, c.archive(s, create=True))
    inputs, rows = _inputs(paths)
    with c.progress() as bar:
        task = bar.add_task("importing", total=len(inputs.files))
        for f in inputs.files:
            o = ing.import_file(f, force=force)
            rows.append({"path": str(f), "SOPInstanceUID": o.sop_instance_uid,
                         "state": "success" if o.ok else "failed", "action": o.action,
                         "status": f"0x{o.status:04X}", "comment": o.comment})
            bar.advance(task)
    c.summary_exit(rows, "import", "imported", json_out)


def _inputs(paths: list[Path]) -> tuple[services.Inputs, list[dict[str, Any]]]:
    """The files to import, and rows for what will not be: media (a DICOMDIR, or a folder with one
    at its top) give the files their records reference; referenced files that are missing or
    outside the file-set fail, files no record names are listed as skipped."""
    from dicomnode.node.media import dicomdir

    inputs = services.Inputs()
    rows: list[dict[str, Any]] = []
    for p in paths:
        found = dicomdir.find_dicomdir(p)
        if found is None:
            got = services.collect_files([p])
            inputs.files += got.files
            inputs.unreadable += got.unreadable
            continue
        try:
            media = dicomdir.read_media(found)
        except dicomdir.MediaError as exc:
            rows.append({"path": str(found), "state": "failed", "status": "", "comment": str(exc)})
            continue
        inputs.files += media.files
        for why, items in (("referenced by the DICOMDIR but missing", media.missing),
                           ("a Referenced File ID outside the file-set or malformed: refused", media.unsafe)):
            rows += [{"path": f"{found.parent / f}", "state": "failed", "status": "", "comment": why} for f in items]
        rows += [{"path": str(found), "state": "failed", "status": "", "comment": problem} for problem in media.problems]
        rows += [{"path": str(f), "state": "skipped", "status": "", "comment": "no DICOMDIR record references it"}
                 for f in media.unreferenced]
        rows += [{"path": str(f), "state": "skipped", "status": "", "comment": "not DICOM"} for f in media.not_dicom]
    return inputs, c.unreadable_rows(inputs) + rows


LEVEL_NAMES = {"patients": "PATIENT", "studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
LS_COLUMNS = {
    "PATIENT": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
    "STUDY": ["PatientID", "PatientName", "StudyDate", "StudyDescription", "AccessionNumber",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyInstanceUID", "protected"],
    "SERIES": ["PatientID", "StudyDate", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"],
    "IMAGE": ["PatientID", "Modality", "InstanceNumber", "SOPClassUID", "TransferSyntaxUID", "Rows", "Columns",
              "NumberOfFrames", "SOPInstanceUID", "finding_codes"],
}


def ls(level: Annotated[str, typer.Argument(help="patients | studies | series | instances")],
       filters: Annotated[Optional[list[str]], typer.Option("-k", help="Key=Value filter, matched as C-FIND "
                                                            "matches (* and ? wildcards, date ranges, UID lists)")] = None,
       limit: Annotated[Optional[int], typer.Option("--limit", help="at most this many rows")] = None,
       problems: Annotated[bool, typer.Option("--problems", help="instances whose analysis has findings")] = False,
       wide: WideOpt = False, config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
       json_out: JsonOpt = False) -> None:
    """List what the archive holds at one level."""
    lv = LEVEL_NAMES.get(level.lower())
    if lv is None:
        c.error(f"unknown level {level!r}: patients, studies, series or instances")
        raise typer.Exit(c.EXIT_USAGE)
    keys = c.dcmtk_keys(filters or [], return_keys=False)
    s = c.settings(config, storage=storage, db=db)
    arc = c.archive(s)
    try:
        rows = list(list_level(arc.db, lv, keys, limit, problems=problems, fold_pn=s.pn_case_insensitive))
    except QueryError as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_USAGE) from None
    if lv == "IMAGE":
        for r in rows:
            r["path"] = str(arc.layout.absolute(r["path"]))
    if json_out:
        c.emit_json(rows)
        return
    c.out.print(c.table(f"{len(rows)} {level}", LS_COLUMNS[lv],
                        ([_cell(r.get(col)) for col in LS_COLUMNS[lv]] for r in rows),
                        wide))


def _cell(value: object) -> str:
    """A value in a table: nothing for None and False (protected: yes or blank)."""
    return "yes" if value is True else "" if value is None or value is False else str(value)


def show(uid: Annotated[str, typer.Argument(help="Study, Series or SOP Instance UID")],
         config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """The index row of a study, series or instance, and a header dump."""
    from dicomnode.storage.archive.header import read_header

    arc = c.archive(c.settings(config, storage=storage, db=db))
    level, row = find_any(arc.db, uid)
    if row is None:
        c.error(f"{uid} is not in the archive")
        raise typer.Exit(c.EXIT_FAIL)
    header_text = ""
    if level == "IMAGE":
        path = arc.layout.absolute(row["path"])
        row["path"] = str(path)
        rp = arc.layout.report_path(path)
        row["analysis_report"] = str(rp) if rp.exists() else None
        links = arc.index.derived(uid)
        row["derived"] = [f"{d['kind']}: {d['uid'] or d['path']}" for d in links["derived"]]
        row["derived_from"] = [f"{d['kind']} from {d['source_uid']}" for d in links["derived_from"]]
        try:
            header = read_header(path)
            header_text = str(header.meta) + "\n" + str(header.ds)
            row["header"] = header.ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "")
        except Exception as exc:
            header_text = f"cannot read header: {exc}"
            row["header_error"] = header_text
    if json_out:
        c.emit_json({"level": level, **row})
        return
    t = Table(title=f"{level} {uid}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in row.items():
        if k != "header":
            t.add_row(k, "" if v is None else str(v))
    c.out.print(t)
    if header_text:
        c.out.print(header_text, markup=False, highlight=False)


def stats(config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Counts per level and bytes stored."""
    st = c.archive(c.settings(config, storage=storage, db=db)).index.stats()
    if json_out:
        c.emit_json(st)
        return
    t = Table(title="archive")
    for k in st:
        t.add_column(k, justify="right")
    t.add_row(*(f"{v:,}" for v in st.values()))
    c.out.print(t)


def delete(uid: Annotated[str, typer.Argument(help="Study, Series or SOP Instance UID")],
           config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a study, series or instance: index rows first, then its files."""
    done = services.delete(c.archive(c.settings(config, storage=storage, db=db)), uid)
    if done is None:
        c.error(f"{uid} is not in the archive")
        raise typer.Exit(c.EXIT_FAIL)
    if json_out:
        c.emit_json({"uid": uid, "instances_deleted": done.instances, "files_removed": done.files_removed})
    else:
        c.out.print(f"deleted {uid}: {done.instances} instance(s), {done.files_removed} file(s) removed")


UidsArg = Annotated[list[str], typer.Argument(help="Study UIDs (a Series or SOP Instance UID names its study)")]


def protect(uids: UidsArg, config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
            json_out: JsonOpt = False) -> None:
    """Keep studies from being recycled when a storage quota is reached (quota_policy = recycle)."""
    _protection(uids, True, c.archive(c.settings(config, storage=storage, db=db)), json_out)


def unprotect(uids: UidsArg, config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
              json_out: JsonOpt = False) -> None:
    """Let studies be recycled again."""
    _protection(uids, False, c.archive(c.settings(config, storage=storage, db=db)), json_out)


def _protection(uids: list[str], protected: bool, arc: Archive, json_out: bool) -> None:
    rows = [{"uid": uid, "StudyInstanceUID": services.protect(arc, uid, protected), "protected": protected}
            for uid in uids]
    missing = [r["uid"] for r in rows if r["StudyInstanceUID"] is None]
    if json_out:
        c.emit_json(rows)
    else:
        for r in rows:
            if r["StudyInstanceUID"] is not None:
                of = "" if r["StudyInstanceUID"] == r["uid"] else f" (the study of {r['uid']})"
                c.out.print(f"{'protected' if protected else 'unprotected'} {r['StudyInstanceUID']}{of}",
                            markup=False, soft_wrap=True)
    for uid in missing:
        c.error(f"{uid} is not in the archive")
    raise typer.Exit(c.EXIT_FAIL if missing else c.EXIT_OK)


def check(repair: Annotated[bool, typer.Option("--repair", help="index orphans, drop rows without files")] = False,
          quick: Annotated[bool, typer.Option("--quick", help="skip content hash verification")] = False,
          config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Compare the index with the files; exit 1 when they disagree."""
    from dicomnode.storage.check import check as run_check
    from dicomnode.storage.check import repair as run_repair
    from dicomnode.storage.recovery import RunMarker

    arc = c.archive(c.settings(config, storage=storage, db=db))
    total = arc.index.stats()["instances"]
    with c.progress() as bar:
        task = bar.add_task("checking", total=total)
        live = bool(RunMarker.running(arc.layout))  # a serve (any node's) storing while we look
        report = run_check(arc.layout, arc.index, verify_hashes=not quick, progress=lambda: bar.advance(task),
                           live=live)
    if repair and not report.consistent:
        run_repair(arc.layout, arc.index, report)
    if json_out:
        c.emit_json(report.as_dict())
    else:
        colour = "green" if report.consistent else "red"
        c.out.print(f"[{colour}]{report.checked} instances checked: {len(report.missing)} missing files, "
                  f"{len(report.orphans)} orphan files, {len(report.mismatched)} hash mismatches[/]")
        if report.size_counter:
            c.out.print("  size counter: {:,} bytes, files as indexed: {:,} bytes".format(*report.size_counter))
        for name, items in (("missing", report.missing), ("orphan", report.orphans),
                            ("mismatch", report.mismatched), ("unrepairable", report.unrepairable)):
            for i in items[:50]:
                c.out.print(f"  {name}: {i}", markup=False)
        if report.repaired:
            c.out.print("repaired: " + ", ".join(f"{k} {v}" for k, v in report.repaired.items()))
    still_bad = report.mismatched or report.unrepairable or (not repair and not report.consistent)
    raise typer.Exit(c.EXIT_FAIL if still_bad else c.EXIT_OK)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command("import")(import_)
    for command in (ls, show, stats, delete, protect, unprotect, check):
        app.command()(command)
