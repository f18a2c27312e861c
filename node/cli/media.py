"""`dicomnode` commands about media and new objects: export dicomdir (a PS3.10 file-set, or a ZIP of
one), ls-media (a DICOMDIR's tree, without importing), create (DICOM from images, arrays, PDFs and
videos); `import` reads DICOMDIRs too (archive.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.tree import Tree

from dicomnode.errors import QueryError
from dicomnode.node import services
from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, DbOpt, JsonOpt, StorageOpt
from dicomnode.node.media import dicomdir
from dicomnode.storage.archive import durable
from dicomnode.storage.query.listing import list_level

export_app = typer.Typer(no_args_is_help=True, help="Write archived objects out: dicomdir (media).")


@export_app.command("dicomdir")
def export_dicomdir(
    out: Annotated[Path, typer.Argument(help="a new or empty folder (with --zip: the new ZIP file)")],
    uids: Annotated[Optional[list[str]], typer.Argument(help="study, series or instance UIDs")] = None,
    keys: Annotated[Optional[list[str]], typer.Option("-k", help="Key=Value: the instances this C-FIND key "
                                                      "matches (wildcards, date ranges, UID lists)")] = None,
    profile: Annotated[str, typer.Option("--profile", help="as-stored (the files as archived) or general "
                                         "(STD-GEN-CD/DVD/USB: Explicit VR Little Endian)")] = "as-stored",
    as_zip: Annotated[bool, typer.Option("--zip", help="a ZIP of the file-set instead of a folder")] = False,
    config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False,
) -> None:
    """A DICOMDIR file-set (PS3.10) of the chosen studies, series or instances, for CD, DVD or USB."""
    if not uids and not keys:
        c.error("name what to export: UIDs, or -k Key=Value (e.g. -k PatientID=123)")
        raise typer.Exit(c.EXIT_USAGE)
    if profile not in dicomdir.PROFILES:
        c.error(f"--profile {profile!r}: one of {', '.join(dicomdir.PROFILES)}")
        raise typer.Exit(c.EXIT_USAGE)
    arc = c.archive(c.settings(config, storage=storage, db=db))
    files: list[Path] = []
    for uid in uids or []:
        found = services.instance_files(arc, uid)
        if found is None:
            c.error(f"{uid}: not a study, series or instance UID in the archive")
            raise typer.Exit(c.EXIT_USAGE)
        files += found
    if keys:
        try:
            files += [arc.layout.absolute(r["path"]) for r in list_level(arc.db, "IMAGE", c.dcmtk_keys(keys, False))]
        except QueryError as exc:
            c.error(str(exc))
            raise typer.Exit(c.EXIT_USAGE) from None
    files = list(dict.fromkeys(files))
    if not files:
        c.error("nothing in the archive matches")
        raise typer.Exit(c.EXIT_FAIL)
    try:
        with c.progress() as bar:
            task = bar.add_task("exporting", total=len(files))
            done = dicomdir.export(files, out, profile, as_zip, lambda: bar.advance(task))
    except dicomdir.MediaError as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_FAIL) from None
    arc.audit.record("export", "failure" if done.failed else "success", destination=str(out),
                     instances=done.instances, media="DICOMDIR")
    report: dict[str, Any] = {"out": str(out), "instances": done.instances, "bytes": done.bytes, "profile": profile,
                              "zip": as_zip, "invented": done.invented,
                              "failed": [{"path": str(p), "comment": why} for p, why in done.failed]}
    if json_out:
        c.emit_json(report)
    else:
        c.out.print(f"{done.instances} instances ({done.bytes / 1e6:,.1f} MB) written to {out}"
                    f"{' as a ZIP' if as_zip else ''}, profile {profile}")
        if done.invented:
            kinds: dict[str, int] = {}
            for item in done.invented:
                kinds[item.rsplit(": ", 1)[1]] = kinds.get(item.rsplit(": ", 1)[1], 0) + 1
            c.out.print("[yellow]record keys the objects lack, made up as dcmmkdir --invent does (--json lists "
                        "them): " + ", ".join(f"{k} ({n})" for k, n in kinds.items()) + "[/]")
        for p, why in done.failed:
            c.error(f"{p}: not exported:", why)
    raise typer.Exit(c.EXIT_FAIL if done.failed else c.EXIT_OK)


def ls_media(path: Annotated[Path, typer.Argument(help="a DICOMDIR, or the folder holding one")],
             json_out: JsonOpt = False) -> None:
    """The tree of a DICOMDIR (patients, studies, series, instances) and its problems, without importing."""
    found = dicomdir.find_dicomdir(path)
    if found is None:
        c.error(f"{path}: no DICOMDIR there")
        raise typer.Exit(c.EXIT_USAGE)
    try:
        media = dicomdir.read_media(found)
    except dicomdir.MediaError as exc:
        c.error(str(exc))
        raise typer.Exit(c.EXIT_FAIL) from None
    bad = bool(media.missing or media.unsafe or media.problems)
    if json_out:
        c.emit_json({"dicomdir": str(found), "records": [_as_json(r) for r in media.records],
                     "files": len(media.files), "missing": media.missing, "unsafe": media.unsafe,
                     "unreferenced": [str(p) for p in media.unreferenced], "not_dicom": [str(p) for p in media.not_dicom],
                     "problems": media.problems})
        raise typer.Exit(c.EXIT_FAIL if bad else c.EXIT_OK)
    tree = Tree(f"[bold]{found}[/]")
    _branches(tree, media.records)
    c.out.print(tree)
    c.out.print(f"{len(media.files)} referenced files present")
    for label, items in (("missing", media.missing), ("refused (outside the file-set or malformed)", media.unsafe),
                         ("not referenced", [str(p) for p in media.unreferenced]),
                         ("not DICOM", [str(p) for p in media.not_dicom]), ("problem", media.problems)):
        for item in items:
            (c.error if label in ("missing", "problem") or label.startswith("refused") else c.out.print)(
                f"{label}: {item}")
    raise typer.Exit(c.EXIT_FAIL if bad else c.EXIT_OK)


def _label(r: dicomdir.Record) -> str:
    k = r.keys
    if r.type == "PATIENT":
        return f"[bold]PATIENT[/] {k.get('PatientName', '')} [dim]{k.get('PatientID', '')}[/]"
    if r.type == "STUDY":
        return f"STUDY {k.get('StudyDate', '')} {k.get('StudyDescription', '')} [dim]{k.get('StudyInstanceUID', '')}[/]"
    if r.type == "SERIES":
        return f"SERIES {k.get('Modality', '')} #{k.get('SeriesNumber', '')} {k.get('SeriesDescription', '')}"
    return f"{r.type} {k.get('InstanceNumber', '')} [dim]{r.file_id or ''}[/]"


def _branches(node: Tree, records: list[dicomdir.Record]) -> None:
    for r in records:
        leaves = [x for x in r.children if not x.children and x.type not in dicomdir.KEYS]
        branch = node.add(_label(r) + (f" ({len(leaves)} instances)" if leaves else ""))
        if r.type == "SERIES" and len(leaves) > 10:  # a long series: its count, not every image
            _branches(branch, [x for x in r.children if x not in leaves])
        else:
            _branches(branch, r.children)


def _as_json(r: dicomdir.Record) -> dict[str, Any]:
    return {"type": r.type, **r.keys, **({"file": r.file_id} if r.file_id else {}),
            **({"children": [_as_json(x) for x in r.children]} if r.children else {})}


def create(
    inputs: Annotated[list[Path], typer.Argument(help="images (PNG, JPEG, TIFF, BMP), .npy arrays, PDFs, MP4/MOV videos")],
    study: Annotated[Optional[str], typer.Option("--study", help="put it into this archived study (patient and "
                                                 "study attributes copied from it); a new series")] = None,
    series: Annotated[Optional[str], typer.Option("--series", help="put it into this archived series")] = None,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id", help="a new study's patient ID")] = None,
    patient_name: Annotated[Optional[str], typer.Option("--patient-name", help="e.g. Doe^Jane")] = None,
    birth_date: Annotated[Optional[str], typer.Option("--patient-birth-date", help="YYYYMMDD")] = None,
    sex: Annotated[Optional[str], typer.Option("--patient-sex", help="M, F or O")] = None,
    study_description: Annotated[Optional[str], typer.Option("--study-description")] = None,
    accession: Annotated[Optional[str], typer.Option("--accession")] = None,
    series_description: Annotated[Optional[str], typer.Option("--series-description")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="default: OT (images, arrays), DOC (PDF), "
                                                    "XC (video)")] = None,
    spacing: Annotated[Optional[str], typer.Option("--spacing", help="mm: ROW,COL, or SLICE,ROW,COL for a "
                                                   "volume")] = None,
    slope: Annotated[float, typer.Option("--slope", help="real value = array value * slope + intercept")] = 1.0,
    intercept: Annotated[float, typer.Option("--intercept")] = 0.0,
    separate: Annotated[bool, typer.Option("--separate", help="one object per image (default: several images "
                                           "make one multi-frame object)")] = False,
    title: Annotated[Optional[str], typer.Option("--title", help="a PDF's Document Title (default: its file name)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="write the objects to this folder instead of "
                                                "storing them")] = None,
    config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False,
) -> None:
    """New DICOM objects from images, NumPy arrays, PDFs and videos, stored in the archive (or --out)."""
    from dicomnode.node.media import create as make

    s = c.settings(config, storage=storage, db=db)
    try:
        dims = tuple(float(x) for x in spacing.split(",")) if spacing else None
        if dims is not None and (len(dims) not in (2, 3) or min(dims) <= 0):
            raise ValueError
    except ValueError:
        c.error(f"--spacing {spacing!r}: ROW,COL or SLICE,ROW,COL in mm, positive")
        raise typer.Exit(c.EXIT_USAGE) from None
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        c.error("no such file:", ", ".join(missing))
        raise typer.Exit(c.EXIT_USAGE)
    arc = c.archive(s, create=out is None) if (out is None or study or series) else None
    try:
        ctx = make.context_for(arc, s.uid_root, modality, study, series, {
            "PatientID": patient_id, "PatientName": patient_name, "PatientBirthDate": birth_date, "PatientSex": sex,
            "StudyDescription": study_description, "AccessionNumber": accession,
            "SeriesDescription": series_description})
    except make.CreateError as exc:
        c.error(str(exc).replace("a PatientID", "--patient-id"))
        raise typer.Exit(c.EXIT_USAGE) from None
    images = [p for p in inputs if make.kind_of(p) == "image"]
    groups: list[tuple[str, list[Path]]] = ([("image", [p]) for p in images] if separate or len(images) < 2
                                            else [("image", images)])
    groups += [(make.kind_of(p) or "unknown", [p]) for p in inputs if make.kind_of(p) != "image"]
    ing = services.ingester(s, arc) if arc is not None and out is None else None
    rows: list[dict[str, Any]] = []
    with c.progress() as bar:
        task = bar.add_task("creating", total=len(groups))
        for kind, paths in groups:
            label = ", ".join(str(p) for p in paths)
            try:
                obj = make.from_files(kind, paths, ctx, dims, slope, intercept, title)
                ctx.instance_number += 1
                if out:
                    target = out / f"{obj.sop_instance_uid}.dcm"
                    with durable.atomic_file(target) as tmp, open(tmp, "wb") as f:
                        make.write(obj, f)
                    rows.append({"path": label, "SOPInstanceUID": obj.sop_instance_uid, "state": "success",
                                 "status": "", "comment": str(target)})
                else:
                    assert ing is not None
                    o = make.store(obj, ing)
                    rows.append({"path": label, "SOPInstanceUID": o.sop_instance_uid or obj.sop_instance_uid,
                                 "state": "success" if o.ok else "failed", "status": f"0x{o.status:04X}",
                                 "comment": o.comment or f"{obj.ds.SOPClassUID.name}, study {obj.ds.StudyInstanceUID}"})
            except make.CreateError as exc:
                rows.append({"path": label, "state": "failed", "status": "", "comment": str(exc)})
            bar.advance(task)
    c.summary_exit(rows, "create", "created", json_out, where=f" in {out}" if out else " and stored")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.command("ls-media")(ls_media)
    app.command()(create)
