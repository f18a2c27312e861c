"""The on-arrival actions: the one registry, read by the worker (to run them) and by the
configuration (to refuse an unknown one at start-up).

    analyze         the pixel-data report beside the file (<file>.analysis.json)
                    and its key figures in the instance row
    forward:NAME    C-STORE the instance to [remotes.NAME]
    anonymize       de-identified copy (PS3.15 E, node/processing/anonymize/) into
                    the archive (linked to its original), a folder, or both
    anonymize+forward:NAME  the same, and the copy C-STOREd to [remotes.NAME]
    convert         PNG / MP4 / GIF / text / JSON in <storage>/derived/..., and a
                    thumbnail per series, recorded in the index

Each action is idempotent: a job cut short by a crash runs again at the next
start and leaves the same result. An action returns the analysis figures for
the index (or a note for the operator) or None; it raises PermanentError when
retrying cannot help, anything else to be retried. A new action is a function
here and an entry in ACTIONS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.errors import AssociationFailed, DisplayError, PermanentError
from dicomnode.node import services
from dicomnode.node.peers import remote_peer
from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive
from dicomnode.storage.jobs import ClaimedJob


@dataclass
class Context:
    """What an action may use: the settings, the archive, and the batch's files to write."""

    settings: Settings
    archive: Archive
    # derived files of the current batch, written durably together before the batch is recorded done
    pending_files: list[tuple[Path, bytes]] = field(default_factory=list)


Run = Callable[[Context, Path, str, ClaimedJob], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Action:
    run: Run
    needs_remote: bool = False  # written NAME:remote, the remote a [remotes.NAME] with the store service


def analyze(ctx: Context, path: Path, _target: str, _job: ClaimedJob) -> dict[str, Any]:
    from dicomnode.node.processing.analyze import analyze_file, summary

    report = analyze_file(path)
    ctx.pending_files.append((ctx.archive.layout.report_path(path), json.dumps(report, indent=1).encode()))
    return summary(report)


def forward(ctx: Context, path: Path, target: str, job: ClaimedJob) -> None:
    from dicomnode.node.dimse.ae import Timeouts
    from dicomnode.node.dimse.scu import send

    s = ctx.settings
    remote = s.remotes.get(target)
    if remote is None:
        raise PermanentError(f"no [remotes.{target}] configured")
    try:
        if remote.url:  # a DICOMweb endpoint: STOW-RS
            from dicomnode.node.web.client import send as stow

            rep = stow(remote.url, [path])
        else:
            rep = send(remote_peer(remote, s), [path], s.aet, Timeouts.of(s))
    except AssociationFailed as exc:
        ctx.archive.audit.record("export", "failure", destination=target, sop=job.sop_instance_uid, reason=str(exc))
        raise RuntimeError(str(exc)) from None
    item = rep.items[0]
    ctx.archive.audit.record("export", "failure" if item.state == "failed" else "success", destination=target,
                             via="forward", sop=item.sop_instance or job.sop_instance_uid,
                             reason=item.comment or None)
    if item.state == "failed":
        code = "no response" if item.status is None else f"0x{item.status:04X}"
        raise RuntimeError(f"{remote.aet} answered {code}: {item.comment}")


def anonymize(ctx: Context, path: Path, target: str, job: ClaimedJob) -> None:
    """De-identify; the copy goes where [anonymize] says, each step safe to repeat."""
    from dicomnode.node.processing.anonymize.apply import Profile, anonymize_file
    from dicomnode.node.processing.anonymize.keys import Pseudonyms, load_key
    from dicomnode.storage.archive import durable

    s, arc = ctx.settings, ctx.archive
    profile = Profile(frozenset(o.replace("-", "_") for o in s.anonymize_options), s.patient_prefix)
    pseudo = Pseudonyms(load_key(s.key_path))
    out = arc.layout.tmp / f"anonymized-{os.getpid()}-{job.id}.dcm"
    try:
        result = anonymize_file(path, out, profile, pseudo)
        if s.to_folder:
            durable.copy_file(out, Path(s.to_folder) / f"{result.sop_instance_uid}.dcm")
        if s.to_archive:
            # the copy gets the analysis, never another anonymize (which would loop)
            wants_analysis = "analyze" in s.default_actions + [a for r in s.rules for a in r.actions]
            stored = services.ingester(s, arc, plan=lambda *_: ["analyze"] if wants_analysis else []).import_file(out)
            if not stored.ok:
                raise RuntimeError(f"archiving the de-identified copy failed: {stored.comment}")
            arc.index.record_derived(job.sop_instance_uid, "anonymized", result.sop_instance_uid)
        arc.audit.record("anonymize", sop=job.sop_instance_uid, copy=result.sop_instance_uid, via="on arrival",
                         archived=s.to_archive or None, folder=s.to_folder or None)
        if target:
            if result.burned_in_risk and s.hold_burned_in:
                raise PermanentError(f"held back from {target}: {result.burned_in_risk} "
                                     "(pixel data is not cleaned; hold_burned_in = false to send anyway)")
            forward(ctx, out, target, job)
    finally:
        out.unlink(missing_ok=True)
    if s.delete_original:
        services.delete(arc, job.sop_instance_uid, by="anonymize (delete_original)")


def convert(ctx: Context, path: Path, _target: str, job: ClaimedJob) -> dict[str, Any] | None:
    """Outputs beside the archive (derived/, same hashed layout), each recorded for `show`."""
    from dicomnode.node.processing.convert import Options, convert_file, thumbnail

    s, layout = ctx.settings, ctx.archive.layout
    folder = layout.derived_folder(path)
    opts = Options(frozenset(s.convert_formats), s.png_bits, s.fps or None)
    try:
        made = convert_file(path, folder, path.stem, opts)
    except DisplayError as exc:
        raise PermanentError(f"cannot convert: {exc}") from None
    if {"png", "mp4", "gif"} & opts.formats and not (folder / "thumbnail.png").exists():
        try:
            made.files.append(thumbnail(path, folder / "thumbnail.png"))
        except DisplayError:
            pass  # not an image: metadata only
    for f in made.files:
        ctx.archive.index.record_derived(job.sop_instance_uid, f.suffix.lstrip("."), None, layout.relative(f))
    if made.notes:  # metadata made, pictures not: done, but `dicomnode jobs` says why
        return {"note": " ".join("; ".join(made.notes).split())}
    return None


ACTIONS: dict[str, Action] = {
    "analyze": Action(analyze),
    "forward": Action(forward, needs_remote=True),
    "anonymize": Action(anonymize),
    "anonymize+forward": Action(anonymize, needs_remote=True),
    "convert": Action(convert),
}


def describe() -> str:
    """The actions as an operator writes them, for error messages."""
    plain = [name for name, a in ACTIONS.items() if not a.needs_remote]
    remote = [f"{name}:NAME" for name, a in ACTIONS.items() if a.needs_remote]
    return f"{', '.join(plain)}, {' or '.join(remote)}"
