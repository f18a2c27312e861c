"""On-arrival work: a worker process that runs the queued jobs of each instance.

The workers run in a child process of `dicomnode serve`, not in its threads:
analysis is CPU work in Python, and in the receiving process it would hold
the GIL the C-STORE path needs, slowing the sender. The queue is in the
index database, so the child needs nothing from the parent but the settings.

Actions, each idempotent (running one twice leaves the same result):
    analyze         the pixel-data report beside the file (<file>.analysis.json)
                    and its key figures in the instance row
    forward:NAME    C-STORE the instance to [remotes.NAME]
    anonymize       de-identified copy (PS3.15 E, node/anonymize.py) into the
                    archive (linked to its original), a folder, or both
    anonymize+forward:NAME  the same, and the copy C-STOREd to [remotes.NAME]
    convert         PNG / MP4 / GIF / text / JSON in <storage>/derived/..., and a
                    thumbnail per series, recorded in the index (node/convert.py)
A new action is a function in ACTIONS and a name in node.config.ACTIONS.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.analyze import analyze_file, summary
from node.config import Settings
from node.peers import Peer
from storage import durable
from storage.archive import Layout, open_archive
from storage.index import Index
from storage.jobs import ClaimedJob, JobQueue, Outcome

log = logging.getLogger("dicomnode.pipeline")
REPORT_SUFFIX = ".analysis.json"
IDLE_POLL_SECONDS = 0.25
BATCH = 8  # jobs claimed, and their outcomes recorded, per index transaction



class Activity:
    """What the receiving process is doing, shared with the worker process without locks.

    The receiver stamps every stored object and counts open associations; the
    workers hold back while objects are arriving (up to defer_while_receiving
    seconds), because even at idle CPU priority their reads and fsyncs share
    the disk with the receiver's.
    """

    QUIET_AFTER_STORE = 0.3  # s without a store: the sender has paused
    IDLE_ASSOCIATION = 2.0  # s without a store on an open association: it idles

    def __init__(self, ctx: Any) -> None:
        self.last_store = ctx.Value("d", 0.0, lock=False)
        self.open_associations = ctx.Value("i", 0, lock=False)

    def stored(self) -> None:
        self.last_store.value = time.monotonic()

    def busy(self) -> bool:
        since = time.monotonic() - self.last_store.value
        return since < self.QUIET_AFTER_STORE or (self.open_associations.value > 0 and since < self.IDLE_ASSOCIATION)


class PermanentError(Exception):
    """A job that cannot succeed by retrying (unknown action)."""


def report_path(dcm: Path) -> Path:
    return dcm.with_name(dcm.name + REPORT_SUFFIX)


class Worker:
    """Runs jobs in batches; one instance per thread."""

    def __init__(self, settings: Settings, layout: Layout, index: Index) -> None:
        self.settings = settings
        self.layout = layout
        self.index = index
        self.queue = JobQueue(index)
        self._pending_files: list[tuple[Path, bytes]] = []

    def run_job(self, job: ClaimedJob) -> dict | None:
        """Run one job's action; returns analysis figures for the index, if any."""
        rel = self.index.instance_path(job.sop_instance_uid)
        if rel is None:
            log.info("job %d %s: instance %s is no longer in the archive", job.id, job.action, job.sop_instance_uid)
            return None
        path = self.layout.absolute(rel)
        kind, _, target = job.action.partition(":")
        action = ACTIONS.get(kind)
        if action is None:
            raise PermanentError(f"unknown action {job.action!r}")
        return action(self, path, target, job)

    def analyze(self, path: Path, _target: str, _job: ClaimedJob) -> dict:
        report = analyze_file(path)
        self._pending_files.append((report_path(path), json.dumps(report, indent=1).encode()))
        return summary(report)

    def forward(self, path: Path, target: str, _job: ClaimedJob) -> None:
        from node.scu import AssociationFailed, Timeouts, send

        remote = self.settings.remotes.get(target)
        if remote is None:
            raise PermanentError(f"no [remotes.{target}] configured")
        s = self.settings
        try:
            rep = send(Peer(remote.aet, remote.host, remote.port), [path], s.aet,
                       Timeouts(s.acse_timeout, s.dimse_timeout, s.network_timeout))
        except AssociationFailed as exc:
            raise RuntimeError(str(exc)) from None
        item = rep.items[0]
        if item.state == "failed":
            code = "no response" if item.status is None else f"0x{item.status:04X}"
            raise RuntimeError(f"{remote.aet} answered {code}: {item.comment}")

    def anonymize(self, path: Path, target: str, job: ClaimedJob) -> None:
        """De-identify; the copy goes where [anonymize] says, each step safe to repeat."""
        from node.anonymize import Pseudonyms, Settings as Profile, anonymize_file, load_key
        from storage.ingest import Ingester

        s = self.settings
        profile = Profile(frozenset(o.replace("-", "_") for o in s.anonymize_options), s.patient_prefix)
        pseudo = Pseudonyms(load_key(s.key_path))
        out = self.layout.tmp / f"anonymized-{os.getpid()}-{job.id}.dcm"
        try:
            result = anonymize_file(path, out, profile, pseudo)
            if s.to_folder:
                _copy_durably(out, Path(s.to_folder) / f"{result.sop_instance_uid}.dcm")
            if s.to_archive:
                # the copy gets the analysis, never another anonymize (which would loop)
                ing = Ingester(self.layout, self.index, plan=lambda *_: ["analyze"] if "analyze" in
                               (s.default_actions + [a for r in s.rules for a in r.actions]) else [])
                stored = ing.import_file(out)
                if not stored.ok:
                    raise RuntimeError(f"archiving the de-identified copy failed: {stored.comment}")
                self.index.record_derived(job.sop_instance_uid, "anonymized", result.sop_instance_uid)
            if target:
                if result.burned_in_risk and s.hold_burned_in:
                    raise PermanentError(f"held back from {target}: {result.burned_in_risk} "
                                         "(pixel data is not cleaned; hold_burned_in = false to send anyway)")
                self.forward(out, target, job)
        finally:
            out.unlink(missing_ok=True)
        if s.delete_original:
            for rel in self.index.delete(job.sop_instance_uid):
                durable.remove(self.layout.absolute(rel))
                durable.remove(report_path(self.layout.absolute(rel)))

    def convert(self, path: Path, _target: str, job: ClaimedJob) -> dict[str, str] | None:
        """Outputs beside the archive (derived/, same hashed layout), each recorded for `show`."""
        from node.convert import Options, convert_file, thumbnail
        from node.display import DisplayError

        s = self.settings
        rel = Path(self.layout.relative(path))
        folder = self.layout.root / "derived" / rel.parent
        stem = rel.stem
        opts = Options(frozenset(s.convert_formats), s.png_bits, s.fps or None)
        try:
            made = convert_file(path, folder, stem, opts)
        except DisplayError as exc:
            raise PermanentError(f"cannot convert: {exc}") from None
        if {"png", "mp4", "gif"} & opts.formats and not (folder / "thumbnail.png").exists():
            try:
                made.files.append(thumbnail(path, folder / "thumbnail.png"))
            except DisplayError:
                pass  # not an image: metadata only
        for f in made.files:
            self.index.record_derived(job.sop_instance_uid, f.suffix.lstrip("."), None, self.layout.relative(f))
        if made.notes:  # metadata made, pictures not: done, but `dicomnode jobs` says why
            return {"note": " ".join("; ".join(made.notes).split())}
        return None

    def step(self) -> bool:
        """Claim a batch, run it, record the outcomes; True when the batch was full (more may wait)."""
        batch = self.queue.claim(BATCH)
        if not batch:
            return False
        self._pending_files = []
        outcomes = [self._run(job) for job in batch]
        try:  # the batch's derived files are durable before any of its jobs is recorded done
            durable.write_files(self.layout.tmp, self._pending_files)
        except OSError as exc:
            outcomes = [o if o.error else Outcome(o.job, f"cannot write results: {exc}",
                                                  max_attempts=self.settings.max_attempts,
                                                  base_delay=self.settings.retry_base_seconds) for o in outcomes]
        self.queue.finish(outcomes)
        return len(batch) == BATCH

    def _run(self, job: ClaimedJob) -> Outcome:
        s = self.settings
        t0 = time.perf_counter()
        try:
            figures = self.run_job(job)
        except PermanentError as exc:
            log.warning("job %d %s %s failed for good: %s", job.id, job.action, job.sop_instance_uid, exc)
            return Outcome(job, str(exc), permanent=True)
        except Exception as exc:  # an action's failure is the job's, never the worker's
            out = Outcome(job, f"{type(exc).__name__}: {exc}", max_attempts=s.max_attempts,
                          base_delay=s.retry_base_seconds)
            log.warning("job %d %s %s attempt %d failed (%s): %s", job.id, job.action, job.sop_instance_uid,
                        job.attempts, "giving up" if out.state_after_failure == "failed" else "will retry", exc)
            return out
        note = figures.pop("note", None) if figures else None
        if note:
            log.warning("job %d %s %s done in %.1f ms, with a note: %s", job.id, job.action, job.sop_instance_uid,
                        (time.perf_counter() - t0) * 1000, note)
        else:
            log.info("job %d %s %s done in %.1f ms", job.id, job.action, job.sop_instance_uid,
                     (time.perf_counter() - t0) * 1000)
        return Outcome(job, figures=figures or None, note=note)

    def loop(self, stop: Callable[[], bool], activity: Activity | None = None) -> None:
        deferred_since: float | None = None
        while not stop():
            if activity is not None and self.settings.defer_while_receiving > 0 and activity.busy():
                now = time.monotonic()
                deferred_since = deferred_since or now
                if now - deferred_since < self.settings.defer_while_receiving:
                    time.sleep(0.1)
                    continue
            else:
                deferred_since = None
            try:
                busy = self.step()
            except Exception:  # the database went away for a moment: wait, do not die
                log.exception("job queue unavailable")
                busy = False
            if not busy:
                # Keeping up with arrivals one job at a time would cost two index
                # commits per object, competing with the receiver's own; waiting
                # lets the next batch fill.
                time.sleep(IDLE_POLL_SECONDS)


ACTIONS: dict[str, Callable[[Worker, Path, str, ClaimedJob], dict | None]] = {
    "analyze": Worker.analyze,
    "forward": Worker.forward,
    "anonymize": Worker.anonymize,
    "anonymize+forward": Worker.anonymize,
    "convert": Worker.convert,
}


def _copy_durably(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(src, "rb") as a, open(tmp, "wb") as b:
        shutil.copyfileobj(a, b, 1 << 20)
        b.flush()
        os.fsync(b.fileno())
    os.replace(tmp, dst)
    durable.fsync_dir(dst.parent)


def worker_process_main(settings: Settings, stop_event: "multiprocessing.synchronize.Event",
                        ready_event: "multiprocessing.synchronize.Event", activity: Activity | None = None) -> None:
    """Entry point of the worker process: `settings.workers` threads until told to stop."""
    from node.serve import setup_logging

    setup_logging(settings.log_level)
    _yield_cpu_to_receiver()
    parent = os.getppid()
    layout, index = open_archive(settings.storage_path, settings.db_url)
    def stop() -> bool:  # also stop when the node died without telling us (kill -9)
        return stop_event.is_set() or os.getppid() != parent

    # one Worker per thread: a Worker keeps the files of the batch it is running
    threads = [threading.Thread(target=Worker(settings, layout, index).loop, args=(stop, activity), name=f"worker-{i}",
                                daemon=True) for i in range(settings.workers)]
    for t in threads:
        t.start()
    ready_event.set()
    for t in threads:
        t.join()


def _yield_cpu_to_receiver() -> None:
    """Run only on CPU time the receiving process leaves idle: a sender must never wait for analysis.

    SCHED_IDLE (Linux) is stronger than any nice level; elsewhere nice 19.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        os.nice(19)


class WorkerProcess:
    """The parent's handle on the worker process."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self.activity = Activity(ctx)
        self._proc = ctx.Process(target=worker_process_main, args=(settings, self._stop, self._ready, self.activity),
                                 name="dicomnode-workers", daemon=False)

    def start(self, timeout: float = 60) -> None:
        """Start and wait until the workers run, so that their start-up is over before the node says it is."""
        self._proc.start()
        if not self._ready.wait(timeout):
            log.warning("the worker process is not ready after %.0f s; going on", timeout)

    def stop(self, timeout: float = 60) -> None:
        """Let running jobs finish (a job cut short would simply run again at the next start)."""
        self._stop.set()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
