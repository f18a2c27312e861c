"""Prometheus metrics of the running node: defined here, counted by the front ends' handlers.

`dicomnode serve` is three processes: the DIMSE listener (this is where
associations and objects are counted), the worker (job outcomes) and the
HTTP side (which serves /metrics). prometheus-client's multiprocess mode
joins them: each process writes its values into mmap files in a folder of
the archive (Layout.metrics), named by PROMETHEUS_MULTIPROC_DIR; `serve`
empties that folder at start-up, before any child exists (a last run's files
would add to this run's counters), and the children inherit the variable.
The HTTP side merges the files at scrape time (node/web/health.py), and
`dicomnode status` reads them the same way while the node runs.

What the index and the disk know (instances, queue depth, free space) is not
counted here: it is read when scraped (storage/health.py).

Outside `serve` (import, get, tests driving the handlers) no folder is named
and every function here does nothing: nothing is counted that no one can read.

Cost on the receive path: a stored object is three counter/histogram updates,
each a lock and a 16-byte write into an already mapped page (no system call;
about 8 µs for the three on the development machine, against milliseconds
for the object's fsyncs and commit). Only a label value seen for the first
time grows the file.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Distinct calling AE titles given a label of their own; any further one is "other". Configured
# remotes always have theirs: a peer cycling through made-up titles cannot grow the series without
# bound, at worst it takes these slots from later unknown callers.
AE_LABELS = 32
OTHER = "other"
# Seconds from the complete data set to the Success status: fsync, rename and commit dominate
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def begin_run(folder: Path) -> None:
    """In `serve`, before any child process starts: an empty folder for this run's values, named
    in the environment that the spawned children inherit."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    _metrics()  # made now, before the listeners' threads start


class AeLabels:
    """Calling AE titles as label values, bounded: the configured ones, then the first `cap` others."""

    def __init__(self, configured: Iterable[str], cap: int = AE_LABELS) -> None:
        self.configured = set(configured)
        self.cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def of(self, aet: str, admit: bool = False) -> str:
        """`aet`'s label; with `admit` (an accepted association) an unknown title may take a free slot."""
        if aet in self.configured or aet in self._seen:
            return aet
        if not admit:
            return OTHER
        with self._lock:
            if len(self._seen) < self.cap:
                self._seen.add(aet)
                return aet
        return OTHER


@dataclass
class _Metrics:
    open: Any
    associations: Any
    rejected: Any
    objects: Any
    bytes: Any
    latency: Any
    jobs: Any
    listener: Any


_made: list[_Metrics] = []
_lock = threading.Lock()


def _metrics() -> _Metrics | None:
    """The metrics of this process, made once (under a lock: handlers of several associations may
    be first at once) when a run's folder is named; else None."""
    if _made:
        return _made[0]
    if not os.environ.get(ENV):
        return None
    with _lock:
        if not _made:
            _made.append(_make())
        return _made[0]


def _make() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram, values

    # The value class is chosen when prometheus_client is first imported; an import before
    # begin_run (another module, a test) would have chosen the in-memory one.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    # registry=None: nothing in these processes serves a registry; the HTTP side reads the files
    return _Metrics(
        # livesum: what a process that is gone had open is not open
        open=Gauge("dicomnode_associations_open", "DIMSE associations open, by calling AE title",
                   ["calling_ae"], multiprocess_mode="livesum", registry=None),
        associations=Counter("dicomnode_associations", "DIMSE associations accepted, by calling AE title",
                             ["calling_ae"], registry=None),
        rejected=Counter("dicomnode_associations_rejected", "DIMSE associations rejected, by calling AE title",
                         ["calling_ae"], registry=None),
        objects=Counter("dicomnode_received_objects", "C-STORE requests answered, by calling AE title and "
                        "status (0x0000 stored or duplicate kept)", ["calling_ae", "status"], registry=None),
        bytes=Counter("dicomnode_received_bytes", "bytes of C-STORE data sets received, by calling AE title and "
                      "status", ["calling_ae", "status"], registry=None),
        latency=Histogram("dicomnode_ingest_seconds", "seconds from a complete C-STORE data set to its Success "
                          "(checks, fsync, rename, index commit)", buckets=LATENCY_BUCKETS, registry=None),
        jobs=Counter("dicomnode_jobs", "on-arrival jobs run, by action and outcome (done, retry, failed)",
                     ["action", "outcome"], registry=None),
        listener=Gauge("dicomnode_listener", "where the node listens (1 per listener)", ["kind", "address"],
                       multiprocess_mode="livemax", registry=None),
    )


def status_label(status: int) -> str:
    return f"0x{status:04X}"


def association_accepted(label: str) -> None:
    m = _metrics()
    if m is not None:
        m.associations.labels(label).inc()
        m.open.labels(label).inc()


def association_closed(label: str) -> None:
    m = _metrics()
    if m is not None:
        m.open.labels(label).dec()


def association_rejected(label: str) -> None:
    m = _metrics()
    if m is not None:
        m.rejected.labels(label).inc()


def object_received(label: str, status: int, size: int, seconds: float | None = None) -> None:
    """One C-STORE answered; `seconds` from the complete data set to Success, for those that succeeded."""
    m = _metrics()
    if m is not None:
        code = status_label(status)
        m.objects.labels(label, code).inc()
        m.bytes.labels(label, code).inc(size)
        if seconds is not None:
            m.latency.observe(seconds)


def job_finished(action: str, outcome: str) -> None:
    m = _metrics()
    if m is not None:
        m.jobs.labels(action, outcome).inc()


def listening(kind: str, host: str, port: int) -> None:
    m = _metrics()
    if m is not None:
        m.listener.labels(kind, f"{host}:{port}").set(1)


def collector(folder: Path) -> Any:
    """A collector of every process's values in a run's folder (None when there is none)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    return MultiProcessCollector(None, path=str(folder)) if folder.is_dir() else None


def read(folder: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A run's values by sample name (e.g. dicomnode_received_objects_total): labels and value."""
    got: dict[str, list[tuple[dict[str, str], float]]] = {}
    c = collector(folder)
    for family in c.collect() if c is not None else ():
        for sample in family.samples:
            got.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return got
