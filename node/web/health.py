"""Probes and metrics on the HTTP side: /healthz, /readyz and /metrics (Prometheus).

- /healthz: the HTTP process answers (it stops with `serve`), so the node runs.
- /readyz: the node can take an object now: the index answers and free disk is
  at least `min_free_mb` (the ingest path's own reserve); 503 with the reason.
- /metrics: what the node's processes counted (node/metrics.py, merged from
  their files in the run's folder) and what the archive holds, read from the
  index and the disk at scrape time (storage/health.py), so those figures
  are never stale and no process has to keep them up to date.

Probes are open to anyone who can reach the port (access.py), as load
balancers call them without credentials; /metrics names calling AE titles
and volumes, so it asks what the DICOMweb API asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicomnode.node import metrics
from dicomnode.node.web.context import Web
from dicomnode.storage import health

MB = health.MB


def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok\n")


def readyz(request: Request) -> Response:
    """200 when ready; 503 and every reason when not (a plain function: Starlette runs it in a thread)."""
    web: Web = request.app.state.web
    problems = health.readiness(web.archive, web.settings.min_free_mb * MB).problems
    if problems:
        return PlainTextResponse("not ready: " + "; ".join(problems) + "\n", status_code=503)
    return PlainTextResponse("ready\n")


def scrape(request: Request) -> Response:
    """The Prometheus text format: the processes' counters and the archive's figures."""
    web: Web = request.app.state.web
    registry = CollectorRegistry(auto_describe=False)
    counted = metrics.collector(web.archive.layout.metrics)
    if counted is not None:  # none without `serve` (an app run on its own)
        registry.register(counted)
    registry.register(_Archive(web))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Archive:
    """A collector of the archive's state, read when scraped."""

    def __init__(self, web: Web) -> None:
        self.web = web

    def collect(self) -> Iterator[Metric]:
        snap = health.snapshot(self.web.archive, self.web.settings.min_free_mb * MB)
        yield GaugeMetricFamily("dicomnode_ready", "1 when the node can store (index up, disk above min_free_mb)",
                                value=0 if snap.problems else 1)
        yield GaugeMetricFamily("dicomnode_index_up", "1 when the index database answers",
                                value=0 if snap.index_error else 1)
        yield GaugeMetricFamily("dicomnode_disk_free_bytes", "free bytes on the archive's file system",
                                value=snap.free_bytes)
        yield GaugeMetricFamily("dicomnode_disk_min_free_bytes", "min_free_mb: below it stores are refused",
                                value=snap.min_free_bytes)
        if snap.index_error:
            return
        entities = GaugeMetricFamily("dicomnode_index_entities", "rows in the index by level", labels=["level"])
        for level in ("patients", "studies", "series", "instances"):
            entities.add_metric([level], snap.counts[level])
        yield entities
        yield GaugeMetricFamily("dicomnode_archive_bytes", "bytes of the archived objects, as indexed",
                                value=snap.counts["bytes"])
        queue = GaugeMetricFamily("dicomnode_jobs_queued", "on-arrival jobs in the queue by state", labels=["state"])
        for state, n in snap.jobs.items():
            queue.add_metric([state], n)
        yield queue
        if snap.last_received_at is not None:
            yield GaugeMetricFamily("dicomnode_last_received_timestamp_seconds", "when the newest instance arrived "
                                    "(Unix time)", value=snap.last_received_at.replace(tzinfo=UTC).timestamp())
