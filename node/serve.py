"""Running the node: start listening, say so once, stop cleanly on a signal."""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import threading
import time
from dataclasses import replace
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.errors import ArchiveError
from dicomnode.node import metrics, services
from dicomnode.node.activity import Activity
from dicomnode.node.dimse import patches, tls
from dicomnode.node.dimse.ae import share_contexts
from dicomnode.node.dimse.commitment import CommitmentSCP
from dicomnode.node.dimse.qr_scp import QueryRetrieveSCP
from dicomnode.node.dimse.storage_scp import StorageSCP
from dicomnode.node.dimse.tally import Tally
from dicomnode.node.pipeline.worker import WorkerProcess
from dicomnode.node.settings import Settings
from dicomnode.node.web.server import WebProcess
from dicomnode.storage.archive import Archive
from dicomnode.storage.recovery import begin_run

log = logging.getLogger("dicomnode")
QUEUE_LOG_SECONDS = 5.0


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; exit 0 after in-flight stores have completed."""
    arc = services.archive(settings, create=True)
    try:
        marker, recovered = begin_run(arc.layout, arc.index, settings.actions_for)
    except RuntimeError as exc:
        raise ArchiveError(str(exc)) from None
    if recovered.crashed:
        log.warning("the node did not stop cleanly last time: %s", recovered.summary())
    for what in recovered.unrepairable:
        log.warning("left by the crash and not indexed: %s", what)
    try:
        metrics.begin_run(arc.layout.metrics)  # only now: the marker's lock says no other serve uses it
        return _serve(settings, arc)
    finally:
        marker.release()  # also after a failed start: nothing of this run is left to recover


def _serve(settings: Settings, arc: Archive) -> int:
    queue = arc.jobs
    requeued = queue.requeue(own=True)
    if requeued:
        log.warning("%d job(s) this node (or a node whose lease ran out) was running: queued again", requeued)
    workers = WorkerProcess(settings) if settings.workers > 0 else None
    receivers = ReceiverProcesses(settings, workers.activity if workers else None)
    scp, qr, ae, handlers = _dimse(settings, arc, workers.activity if workers else None, receivers.tally)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    web = WebProcess(settings) if settings.http_port >= 0 else None
    servers: list[ThreadedAssociationServer] = []
    try:  # from here on a failure must stop what has started (a live worker keeps us from exiting)
        if workers:
            workers.start()
        servers = _listen(settings, ae, handlers)
        receivers.start(servers)
        if web is not None:
            try:
                web.start()
            except OSError as exc:
                raise OSError(f"HTTP on {settings.http_host}:{settings.http_port}: {exc}") from None
    except BaseException:
        for server in servers:
            server.shutdown()
        receivers.stop()
        if workers:
            workers.stop()
        raise
    _own_address(qr, servers)
    for server in servers:
        host, port = server.server_address[:2]
        secure = server.ssl_context is not None
        print(f"dicomnode listening {'with TLS ' if secure else ''}on {host}:{port} as {settings.aet}", flush=True)
        metrics.listening("dicom-tls" if secure else "dicom", host, port)
    if web is not None:
        scheme = "https" if settings.web_tls_cert else "http"
        print(f"dicomnode web on {scheme}://{_url_host(settings.http_host)}:{web.port}/dicom-web", flush=True)
        metrics.listening(scheme, settings.http_host, web.port)
    log.info("archive %s, index %s, duplicates: %s", arc.layout.root,
             settings.db_url or "sqlite (in archive)", settings.duplicate_policy)
    last_depth: dict[str, int] = {}
    while not stop.wait(QUEUE_LOG_SECONDS):
        depth = queue.depth()
        if {k: depth[k] for k in ("pending", "running", "failed")} != last_depth:
            last_depth = {k: depth[k] for k in ("pending", "running", "failed")}
            log.info("queue: %d pending, %d running, %d failed, %d done", depth["pending"], depth["running"],
                     depth["failed"], depth["done"])

    receivers.signal_stop()  # they drain side by side with this one
    _drain(settings, ae, servers, scp)
    receivers.stop()
    if web is not None:
        web.stop()
    if workers:
        workers.stop()
    log.info("stopped")
    return 0


def _dimse(settings: Settings, arc: Archive, activity: Activity | None, tally: Tally
           ) -> tuple[StorageSCP, QueryRetrieveSCP, AE, list[Any]]:
    """The DIMSE services of one receiving process: storage, Q/R, storage commitment; `tally`
    counts its connections with the other processes' (guard.Admission)."""
    scp = StorageSCP(settings, services.ingester(settings, arc), activity, tally)
    qr = QueryRetrieveSCP(settings, arc)
    commitment = CommitmentSCP(settings, arc)
    return scp, qr, scp.build_ae(), scp.handlers() + qr.handlers() + commitment.handlers()


def _own_address(qr: QueryRetrieveSCP, servers: list[ThreadedAssociationServer]) -> None:
    """Where a C-MOVE to our own AE title comes back: the first listener."""
    for server in servers:
        host, port = server.server_address[:2]
        if qr.own_address is None:
            qr.own_address = ("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, server.ssl_context is not None)


def _drain(settings: Settings, ae: AE, servers: list[ThreadedAssociationServer], scp: StorageSCP) -> None:
    """Stop listening, let open associations finish (up to shutdown_grace), then end the rest."""
    log.info("stopping: no new associations; waiting up to %.0f s for %d open",
             settings.shutdown_grace, sum(1 for a in ae.active_associations if a.is_established))
    for server in servers:
        server.shutdown()
    # only associations hold the stop up: connections that never became one (a load balancer's
    # health check, a port scan) have nothing to finish, and their threads, waiting up to
    # acse_timeout for an A-ASSOCIATE-RQ, end with the process
    deadline = time.monotonic() + settings.shutdown_grace
    while any(a.is_established for a in ae.active_associations) and time.monotonic() < deadline:
        time.sleep(0.05)
    scp.in_flight.wait_idle(timeout=max(settings.dimse_timeout, 5.0))
    for assoc in ae.active_associations:
        assoc.abort()


class ReceiverProcesses:
    """`[network] receivers` - 1 more processes receiving on this node's DIMSE port(s) beside the
    main one (all accept on the main process's listening sockets: the kernel hands each new
    connection to one of them), so that parsing, hashing and writing use every core. Each has its own connections to the index and
    its own group commit; the main process keeps the run marker, the recovery, the web side and
    the worker. A receiving process that dies takes its own associations with it; the others go on.
    The main process killed takes them all with it (_die_with), as a node of one process."""

    def __init__(self, settings: Settings, activity: Activity | None) -> None:
        # quotas are exact within one process only (storage/archive/quota.py): with one set, one
        # receiving process unless the operator asks for more
        quotas = settings.max_size_gb > 0 or settings.max_studies > 0 or settings.max_patients > 0
        wanted = settings.receivers or (1 if quotas else os.cpu_count() or 1)
        self.count = max(wanted - 1, 0)
        self.tally = Tally(self.count + 1)  # the association limits count over all of them
        self.settings = settings
        self.activity = activity
        self._ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []

    def start(self, servers: list[ThreadedAssociationServer]) -> None:
        if not self.count:
            return
        ports = {("tls" if s.ssl_context is not None else "plain"): s.server_address[1] for s in servers}
        listeners = {s.server_address[1]: s.socket for s in servers}
        child = replace(self.settings, port=ports.get("plain", self.settings.port),
                        tls_port=ports.get("tls", self.settings.tls_port))
        readies = []
        for i in range(self.count):
            ready = self._ctx.Event()
            proc = self._ctx.Process(target=receiver_main, args=(child, ready, self.activity,
                                                                 self.tally.for_process(i + 1), listeners),
                                     name=f"dicomnode-receiver-{i + 1}", daemon=False)
            proc.start()
            self.procs.append(proc)
            readies.append((proc, ready))
        for proc, ready in readies:
            if not ready.wait(60):
                raise OSError(f"receiving process {proc.name} did not start (see the log)")
        log.info("%d more receiving process(es) on the DIMSE port(s)", self.count)

    def signal_stop(self) -> None:
        """SIGTERM to each: a signal, not a shared lock (a process killed while holding one would
        leave the others unable to be told)."""
        for proc in self.procs:
            if proc.is_alive() and proc.pid:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self.signal_stop()
        limit = time.monotonic() + self.settings.shutdown_grace + max(self.settings.dimse_timeout, 5.0) + 10
        for proc in self.procs:
            proc.join(max(limit - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def receiver_main(settings: Settings, ready_event: Any, activity: Activity | None, tally: Tally,
                  listeners: dict[int, socket.socket]) -> None:
    """A receiving process: the DIMSE services on the shared port(s) until SIGTERM (from the main
    process) or the main process's death."""
    from dicomnode.node.logs import setup_logging

    setup_logging(settings.log_level, multiprocessing.current_process().name.replace("dicomnode-", ""))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    parent = os.getppid()
    _die_with(parent)
    arc = services.archive(settings)
    for listener in listeners.values():  # at once: its blocking mode is shared with the other processes
        listener.setblocking(False)
    patches.inherit_listeners(listeners)
    scp, qr, ae, handlers = _dimse(settings, arc, activity, tally)
    servers = _listen(settings, ae, handlers)
    _own_address(qr, servers)
    ready_event.set()
    while not stop_event.wait(0.5):
        if os.getppid() != parent:  # the main process died without telling us (kill -9)
            break
    _drain(settings, ae, servers, scp)


def _die_with(parent: int) -> None:
    """A receiving process is killed the moment the main process dies (Linux PR_SET_PDEATHSIG):
    a node killed with kill -9 stops whole, as one process would, and a restarted node's start-up
    recovery never runs beside receivers of the dead one still storing into the archive."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the receiver notices the main process's death within half a second
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def _freeze_heap() -> None:
    """Leave what start-up made (modules, pydicom's dictionaries, the AE's contexts: ~100,000
    objects) out of every later garbage collection. pynetdicom's server runs a full gc.collect()
    every 60 connections, and Python one now and then: each walked that whole heap holding the
    GIL, 50-100 ms in which no association of the process moved (37 % of the CPU of a run of
    associations that each sent one echo, py-spy). Frozen objects are never collected; start-up's
    garbage goes first."""
    gc.collect()
    gc.freeze()


def _listen(settings: Settings, ae: AE, handlers: list[Any]) -> list[ThreadedAssociationServer]:
    """The plain listener (unless [tls] plain = false) and the TLS one (when [tls] cert is set)."""
    _freeze_heap()
    addresses: list[tuple[tuple[str, int], ssl.SSLContext | None]] = []
    if settings.tls_plain:
        addresses.append(((settings.host, settings.port), None))
    if settings.tls_enabled:
        addresses.append(((settings.host, settings.tls_port), tls.server_context(settings)))
    servers: list[ThreadedAssociationServer] = []
    # socketserver listens with a backlog of 5: a burst of connections (modalities at a shift's
    # start, 200 idle sockets in tests/test_hostile.py) had SYNs dropped and retried 1, 3, 7 ...
    # seconds later, so connecting took up to 30 s
    ThreadedAssociationServer.request_queue_size = 128
    try:
        for address, context in addresses:
            try:
                server = ae.start_server(address, block=False, ssl_context=context, evt_handlers=handlers)
            except OSError as exc:
                raise OSError(f"{'TLS ' if context else ''}port {address[1]}: {exc}") from None
            assert server is not None  # block=False returns the running server
            share_contexts(server)
            servers.append(server)
    except BaseException:
        for server in servers:
            server.shutdown()
        raise
    return servers


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
