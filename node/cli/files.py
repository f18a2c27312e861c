"""`dicomnode` commands that read files and make files: analyze, anonymize, convert.

Each takes files, folders (recursive) or archive UIDs, goes on past a bad
file, reports every file's outcome, and exits 1 when any failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dicomnode.errors import AnonymizeError, DisplayError
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

    files = c.resolve_targets(targets, config, storage, db)
    reports = []
    with c.progress() as bar:
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
        c.err.print(f"[red]{exc}[/]")
        raise typer.Exit(c.EXIT_USAGE) from None
    files = c.resolve_targets(targets, config, storage, db)
    rows: list[dict[str, Any]] = []
    with c.progress() as bar:
        task = bar.add_task("anonymizing", total=len(files))
        for f in files:
            try:
                tmp = out_dir / f".incoming-{f.name}"
                r = anonymize_file(f, tmp, profile, pseudo)
                final = out_dir / f"{r.sop_instance_uid}.dcm"  # nothing of the original in the name
                durable.place(tmp, final)
                rows.append({"path": str(f), "state": "success", "status": "", "output": str(final),
                             "SOPInstanceUID": r.sop_instance_uid, "burned_in_risk": r.burned_in_risk,
                             "comment": r.burned_in_risk})
            except Exception as exc:  # one bad file must not stop the batch
                rows.append({"path": str(f), "state": "failed", "status": "", "output": None,
                             "comment": f"{type(exc).__name__}: {exc}"})
            bar.advance(task)
    risky = sum(1 for r in rows if r.get("burned_in_risk"))
    c.summary_exit(rows, "anonymize", "anonymized", json_out, f" into {out_dir}",
                 f"; {risky} may show burned-in text (pixel data is not cleaned)" if risky else "")


def convert(targets: TargetsArg,
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
    from dicomnode.node.processing.convert import FORMATS, Options, convert_file, thumbnail
    from dicomnode.node.processing.display import Window
    from dicomnode.storage.archive.layout import uid_hash

    formats = set(FORMATS) if fmt == "all" else {f.strip() for f in fmt.split(",")}
    if not formats <= set(FORMATS):
        c.err.print(f"[red]--format {fmt!r}:[/] png, mp4, gif, txt, json or all (comma-separated)")
        raise typer.Exit(c.EXIT_USAGE)
    formats -= {"gif"} if no_gif else set()
    formats -= {"mp4"} if no_mp4 else set()
    win = None
    if window:
        try:
            centre, width = (float(x) for x in window.split(","))
            win = Window(centre, width)
        except ValueError:
            c.err.print(f"[red]--window {window!r}:[/] expected CENTER,WIDTH, e.g. --window 40,400")
            raise typer.Exit(c.EXIT_USAGE) from None
    opts = Options(frozenset(formats), 8 if eight_bit else 16, fps, frame, win)
    files = c.resolve_targets(targets, config, storage, db)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    thumbs: set[str] = set()
    with c.progress() as bar:
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
    c.summary_exit(rows, "convert", "converted", json_out, f" into {out_dir}")


def _series_of(path: Path) -> Any:
    from pydicom import dcmread

    try:
        return dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
    except Exception:
        return None


def register(app: typer.Typer) -> None:
    for command in (analyze, anonymize, convert):
        app.command()(command)
