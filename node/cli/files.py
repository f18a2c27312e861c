"""`dicomnode` commands that read files and make files: analyze, anonymize, convert.

Each takes files, folders (recursive) or archive UIDs, goes on past a bad
file, reports every file's outcome, and exits 1 when any failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dicomnode.errors import AnonymizeError, DisplayError
from dicomnode.node import services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, DbOpt, JsonOpt, StorageOpt, TargetsArg
from dicomnode.storage.archive import durable


def analyze(targets: TargetsArg,
            out_dir: Annotated[Optional[Path], typer.Option("-o", "--output", help="write <name>_analysis.json "
                                                           "per file and series_analysis.json here")] = None,
            force: Annotated[bool, typer.Option("--force", help="read files without preamble or meta")] = False,
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Pixel-data analysis report: offsets, frame sizes, and what does not add up. Exit 1 on error findings."""
    from dicomnode.node.processing.analyze import analyze_file, summary

    inputs = c.resolve_targets(targets, config, storage, db)
    reports: list[dict[str, Any]] = [
        {"file_info": {"filename": p.name, "filepath": str(p)},
         "findings": [{"code": "UNREADABLE_FILE", "severity": "error", "message": f"cannot read: {why}"}]}
        for p, why in inputs.unreadable]
    with c.progress() as bar:
        task = bar.add_task("analysing", total=len(inputs.files))
        for f in inputs.files:
            try:
                r = analyze_file(f, force=force)
            except Exception as exc:  # one bad file is reported in its own JSON; the run goes on
                code = "UNREADABLE_FILE" if isinstance(exc, OSError) else "ANALYSIS_FAILED"
                r = {"file_info": {"filename": f.name, "filepath": str(f)},
                     "findings": [{"code": code, "severity": "error", "message": c.describe(exc)}]}
            reports.append(r)
            bar.advance(task)
    if out_dir is not None:
        _write_reports(out_dir, reports)
    if json_out:
        c.emit_json(reports)
    else:
        t = Table(title=f"{len(reports)} file(s) analysed")
        for col in ("file", "transfer syntax", "frames", "pixel bytes", "expected", "findings"):
            t.add_column(col, overflow="fold")
        for r in reports:
            sm = summary(r)
            t.add_row(r["file_info"]["filename"], str((r.get("dicom_identifiers") or {}).get("TransferSyntaxName")),
                      str(sm["frame_count"]), str(sm["actual_size"]), str(sm["expected_size"]),
                      ", ".join(sm["codes"]) or "[green]none[/]")
        c.out.print(t)
    errors = sum(summary(r)["errors"] for r in reports)
    raise typer.Exit(c.EXIT_FAIL if errors else c.EXIT_OK)


def _write_reports(out_dir: Path, reports: list[dict[str, Any]]) -> None:
    from dicomnode.node.processing.analyze import summary

    out_dir.mkdir(parents=True, exist_ok=True)

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


def anonymize(targets: TargetsArg,
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
    from dicomnode.node.processing.anonymize.apply import Profile, anonymize_file
    from dicomnode.node.processing.anonymize.keys import Pseudonyms, load_key

    s = c.settings(config, storage=storage, db=db)
    opts = [o.replace("-", "_") for o in (option or s.anonymize_options)]
    try:
        profile = Profile(frozenset(opts), s.patient_prefix)
        pseudo = Pseudonyms(load_key(key_file or s.key_path))
    except (AnonymizeError, OSError) as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_USAGE) from None
    inputs = c.resolve_targets(targets, config, storage, db)
    rows = c.unreadable_rows(inputs)
    with c.progress() as bar:
        task = bar.add_task("anonymizing", total=len(inputs.files))
        for i, f in enumerate(inputs.files):
            try:
                tmp = out_dir / f".incoming-{os.getpid()}-{i}.dcm"
                r = anonymize_file(f, tmp, profile, pseudo)
                # nothing of the original in the name, and never an output overwritten: inputs that
                # share a SOP Instance UID (copies, or a vendor's reuse) get -2, -3, ...
                wanted = out_dir / f"{r.sop_instance_uid}.dcm"
                final = durable.place_new(tmp, wanted)
                note = "; ".join(x for x in (r.burned_in_risk, f"{wanted.name} exists (same SOP Instance UID "
                                             f"as an earlier input): written as {final.name}"
                                             if final != wanted else "") if x)
                rows.append({"path": str(f), "state": "success", "status": "", "output": str(final),
                             "SOPInstanceUID": r.sop_instance_uid, "burned_in_risk": r.burned_in_risk,
                             "comment": note})
            except Exception as exc:  # one bad file must not stop the batch
                rows.append({"path": str(f), "state": "failed", "status": "", "output": None,
                             "comment": c.describe(exc)})
            bar.advance(task)
    risky = sum(1 for r in rows if r.get("burned_in_risk"))
    trail = services.audit_log(s)
    if trail is not None:
        trail.record("anonymize", "failure" if any(r["state"] == "failed" for r in rows) else "success", via="cli",
                     instances=sum(r["state"] == "success" for r in rows), out=str(out_dir.resolve()),
                     sops=[r["SOPInstanceUID"] for r in rows if r.get("SOPInstanceUID")][:1000])
    c.summary_exit(rows, "anonymize", "anonymized", json_out, f" into {out_dir}",
                 f"; {risky} may show burned-in text (pixel data is not cleaned)" if risky else "")


DEFAULT_FORMATS = ("png", "mp4", "txt", "json")  # GIF: slow and 4x the MP4's size, on request


def convert(targets: TargetsArg,
            out_dir: Annotated[Path, typer.Option("-o", "--out", help="output folder")],
            fmt: Annotated[str, typer.Option("--format", "-f", help="png | mp4 | gif | txt | json | all, comma-"
                                             "separated (default: png,mp4,txt,json)")] = ",".join(DEFAULT_FORMATS),
            eight_bit: Annotated[bool, typer.Option("--8bit", help="8-bit grey PNG (default 16-bit)")] = False,
            fps: Annotated[Optional[float], typer.Option("--fps", help="video frame rate (default: from the data "
                                                         "set, else 10)")] = None,
            frame: Annotated[Optional[int], typer.Option("--frame", help="only this frame (1-based), as PNG")] = None,
            window: Annotated[Optional[str], typer.Option("--window", help="C,W: window center and width")] = None,
            no_gif: Annotated[bool, typer.Option("--no-gif", help="no GIF for multi-frame objects")] = False,
            no_mp4: Annotated[bool, typer.Option("--no-mp4", help="no MP4 for multi-frame objects")] = False,
            jobs: Annotated[int, typer.Option("--jobs", "-j", help="files converted at once (default: one per "
                                              "CPU core)")] = 0,
            config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
            json_out: JsonOpt = False) -> None:
    """Convert to PNG (16/8-bit), MP4 and GIF (multi-frame), text and JSON metadata, plus series thumbnails."""
    from dicomnode.node.processing.convert import FORMATS, Options
    from dicomnode.node.processing.display import Window

    formats = set(FORMATS) if fmt == "all" else {f.strip() for f in fmt.split(",")}
    if not formats <= set(FORMATS):
        c.error(f"--format {fmt!r}: png, mp4, gif, txt, json or all (comma-separated)")
        raise typer.Exit(c.EXIT_USAGE)
    formats -= {"gif"} if no_gif else set()
    formats -= {"mp4"} if no_mp4 else set()
    win = None
    if window:
        try:
            centre, width = (float(x) for x in window.split(","))
            win = Window(centre, width)
        except ValueError:
            c.error(f"--window {window!r}: expected CENTER,WIDTH, e.g. --window 40,400")
            raise typer.Exit(c.EXIT_USAGE) from None
    opts = Options(frozenset(formats), 8 if eight_bit else 16, fps, frame, win)
    inputs = c.resolve_targets(targets, config, storage, db)
    tasks = _convert_tasks(inputs.files, out_dir, opts)
    rows = c.unreadable_rows(inputs)
    with c.progress() as bar:
        task = bar.add_task("converting", total=len(tasks))
        for row in _run_tasks(tasks, jobs):
            rows.append(row)
            bar.advance(task)
    c.summary_exit(rows, "convert", "converted", json_out, f" into {out_dir}")


@dataclass
class _ConvertTask:
    path: Path
    out_dir: Path
    stem: str
    opts: Any  # processing.convert.Options
    thumbnail: Path | None  # the series thumbnail this file makes (the first file of each series)


def _convert_tasks(files: list[Path], out_dir: Path, opts: Any) -> list[_ConvertTask]:
    from dicomnode.storage.archive.layout import uid_hash

    pictures = bool({"png", "mp4", "gif"} & opts.formats)
    tasks: list[_ConvertTask] = []
    used: set[str] = set()
    thumbs: set[str] = set()
    for f in files:
        stem = f.stem if f.stem not in used else f"{f.stem}_{len(used)}"
        used.add(stem)
        series = str(getattr(_series_of(f), "SeriesInstanceUID", "") or "") if pictures else ""
        thumb = None
        if series and series not in thumbs:
            thumbs.add(series)
            thumb = out_dir / "thumbnails" / f"{uid_hash(series)}.png"
        tasks.append(_ConvertTask(f, out_dir, stem, opts, thumb))
    return tasks


def _run_tasks(tasks: list[_ConvertTask], jobs: int) -> Iterator[dict[str, Any]]:
    """Rows in the tasks' order; files converted in parallel processes when more than one core is asked for."""
    workers = min(jobs or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from map(_convert_one, tasks)
        return
    # spawn, not fork: the progress bar's thread must not be copied into the children
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_convert_one, tasks)


def _convert_one(task: _ConvertTask) -> dict[str, Any]:
    """One file's conversion as a result row; what pydicom warns about goes into its comment."""
    from dicomnode.node.processing.convert import convert_file, thumbnail

    f = task.path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            made = convert_file(f, task.out_dir, task.stem, task.opts)
            if task.thumbnail is not None:
                try:
                    made.files.append(thumbnail(f, task.thumbnail))
                except DisplayError:
                    pass  # not an image: no thumbnail
            row = {"path": str(f), "state": "success", "status": "", "frames": made.frames,
                   "outputs": [str(p) for p in made.files], "comment": "; ".join(made.notes)}
        except Exception as exc:  # one bad file never stops the batch
            row = {"path": str(f), "state": "failed", "status": "", "outputs": [], "comment": c.describe(exc)}
    remarks = list(dict.fromkeys(str(w.message) for w in caught))
    if remarks:
        row["comment"] = "; ".join(x for x in (str(row["comment"]), *remarks) if x)
    return row


def _series_of(path: Path) -> Any:
    from pydicom import dcmread

    try:
        return dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
    except Exception:
        return None


def register(app: typer.Typer) -> None:
    for command in (analyze, anonymize, convert):
        app.command()(command)
