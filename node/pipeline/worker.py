"""On-arrival work: a worker process that runs the queued jobs of each instance.

The workers run in a child process of `dicomnode serve`, not in its threads:
analysis is CPU work in Python, and in the receiving process it would hold
the GIL the C-STORE path needs, slowing the sender. The queue is in the
index database, so the child needs nothing from the parent but the settings.
The actions themselves are in node/pipeline/actions.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomnode.errors import PermanentError
from dicomnode.node import metrics, services
from dicomnode.node.activity import Activity
from dicomnode.node.logs import setup_logging
from dicomnode.node.pipeline.actions import ACTIONS, Context
from dicomnode.node.settings import Settings
from dicomnode.storage.archive import Archive, durable
from dicomnode.storage.jobs import ClaimedJob, Outcome

log = logging.getLogger("dicomnode.pipeline")
IDLE_POLL_SECONDS = 0.25
BATCH = 8  # jobs claimed, and their outcomes recorded, per index transaction


class Worker:
    """Runs jobs in batches; one instance per thread."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.settings = settings
        self.archive = archive
        self.queue = archive.jobs
        self.ctx = Context(settings, archive)

    def run_job(self, job: ClaimedJob) -> dict[str, Any] | None:
        """Run one job's action; returns analysis figures for the index, if any."""
        rel = self.archive.index.instance_path(job.sop_instance_uid)
        if rel is None:
            log.info("job %d %s: instance %s is no longer in the archive", job.id, job.action, job.sop_instance_uid)
            return None
        kind, _, target = job.action.partition(":")
        action = ACTIONS.get(kind)
        if action is None:
            raise PermanentError(f"unknown action {job.action!r}")
        return action.run(self.ctx, self.archive.layout.absolute(rel), target, job)

    def step(self) -> bool:
        """Claim a batch, run it, record the outcomes; True when the batch was full (more may wait)."""
        batch = self.queue.claim(BATCH)
        if not batch:
            return False
        self.ctx.pending_files = []
        outcomes = [self._run(job) for job in batch]
        try:  # the batch's derived files are durable before any of its jobs is recorded done
            durable.write_files(self.archive.layout.tmp, self.ctx.pending_files)
        except OSError as exc:
            outcomes = [o if o.error else Outcome(o.job, f"cannot write results: {exc}",
                                                  max_attempts=self.settings.max_attempts,
                                                  base_delay=self.settings.retry_base_seconds) for o in outcomes]
        self.queue.finish(outcomes)
        for o in outcomes:  # counted once recorded: a crash before finish runs the batch again
            metrics.job_finished(o.job.action, "done" if o.error is None else
                                 "retry" if o.state_after_failure == "pending" else "failed")
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


def worker_process_main(settings: Settings, stop_event: multiprocessing.synchronize.Event,
                        ready_event: multiprocessing.synchronize.Event, activity: Activity | None = None) -> None:
    """Entry point of the worker process: `settings.workers` threads until told to stop."""
    setup_logging(settings.log_level)
    _yield_cpu_to_receiver()
    parent = os.getppid()
    arc = services.archive(settings)

    def stop() -> bool:  # also stop when the node died without telling us (kill -9)
        return stop_event.is_set() or os.getppid() != parent

    # one Worker per thread: a Worker keeps the files of the batch it is running
    threads = [threading.Thread(target=Worker(settings, arc).loop, args=(stop, activity), name=f"worker-{i}",
                                daemon=True) for i in range(settings.workers)]
    threads.append(threading.Thread(target=_leases, args=(arc, stop), name="leases", daemon=True))
    for t in threads:
        t.start()
    ready_event.set()
    for t in threads:
        t.join()


def _leases(arc: Archive, stop: Callable[[], bool]) -> None:
    """Keep this node's claims alive (a heartbeat every third of the lease), and take over the running
    jobs of nodes whose leases ran out (a node that died while others share the index)."""
    interval = max(arc.jobs.lease / 3, 0.2)
    while not stop():
        try:
            arc.jobs.heartbeat()
            taken = arc.jobs.requeue()
            if taken:
                log.warning("%d job(s) of a node whose lease ran out: queued again here", taken)
        except Exception:  # the database went away for a moment: the next beat tries again
            log.exception("job leases: index unavailable")
        deadline = time.monotonic() + interval
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.1)


def _yield_cpu_to_receiver() -> None:
    """Run only on CPU time the receiving process leaves idle: a sender must never wait for analysis.

    SCHED_IDLE (Linux) is stronger than any nice level; elsewhere nice 19.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
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
