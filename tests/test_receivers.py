"""Several receiving processes on one DIMSE port ([network] receivers): connections spread over
them, a kill -9 of one loses only its own associations (nothing acknowledged is lost, the others
go on), and a graceful stop stops them all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from pydicom import dcmread

from tests.support.datagen import write_ct_series
from tests.support.dimse import acknowledged
from tests.support.node import Node
from tests.support.proc import cli, need
from tests.support.wait import wait_for


def _listeners(port: int) -> set[int]:
    """PIDs of the processes listening on the port (each receiving process has its own socket)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_sixteen_associations_over_three_receivers_one_killed(tmp_path: Path) -> None:
    need("storescu")
    need("ss")
    node = Node(tmp_path / "archive", {"DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_RECEIVERS": "3"}).start()
    try:
        assert node.proc is not None
        wait_for(lambda: "2 more receiving process(es)" in node.log(), 30, 0.1, message="the receiving processes")
        main = node.proc.pid
        receivers = _listeners(node.port) - {main}
        assert len(receivers) == 2 and main in _listeners(node.port)
        batches = [write_ct_series(tmp_path / f"s{i}", 40, rows=128, cols=128, patient_id=f"R{i}", seed=i)
                   for i in range(16)]
        clients = [subprocess.Popen(["storescu", "-v", "-aec", node.aet, "127.0.0.1", str(node.port),
                                     *map(str, b)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for b in batches]
        wait_for(lambda: node.log().count("stored ") >= 40, 60, 0.05, message="stores under way")
        victim = sorted(receivers)[0]
        os.kill(victim, signal.SIGKILL)
        logs = [c.communicate(timeout=300)[0] for c in clients]
        codes = [c.returncode for c in clients]
        # the associations of the killed process failed; the others went on to the end
        assert codes.count(0) >= 4, codes
        sent = [f for log, b in zip(logs, batches) for f in acknowledged(log, b)]
        held = {r["SOPInstanceUID"] for r in json.loads(cli("ls", "instances", "--storage", str(node.storage),
                                                             "--json").stdout)}
        lost = [f for f in sent if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) not in held]
        assert not lost and len(sent) >= 4 * 40
        served_by = set(re.findall(r"\[(receiver-\d)\] .*released", node.log()))
        assert served_by, "no receiving process took an association"
        # the node goes on taking associations on its port, and stops whole
        assert subprocess.run(["storescu", "-aec", node.aet, "127.0.0.1", str(node.port), str(batches[0][0])],
                              capture_output=True).returncode == 0
        assert node.stop() == 0
        time.sleep(0.5)
        assert not _listeners(node.port)
        assert all(not Path(f"/proc/{pid}").exists() for pid in receivers)
    finally:
        node.stop()


def _owner(port: int, client_port: int) -> int:
    """PID of the node process holding the connection from our `client_port`."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} and dport = :{client_port} )"],
                         capture_output=True, text=True).stdout
    pids = re.findall(r"pid=(\d+)", out)
    assert pids, out
    return int(pids[0])


def test_association_limits_are_the_nodes_across_its_processes(tmp_path: Path) -> None:
    """max_associations_per_host and max_pending_per_host hold for the node, not per receiving process
    (a peer the kernel spreads over three processes once got three times its allowance); a killed
    process's associations stop counting."""
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    need("ss")
    node = Node(tmp_path / "archive", {"DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_RECEIVERS": "3",
                                       "DICOMNODE_MAX_ASSOCIATIONS_PER_HOST": "8",
                                       "DICOMNODE_MAX_PENDING_PER_HOST": "3"}).start()
    held = []
    idle: list[socket.socket] = []
    try:
        wait_for(lambda: "2 more receiving process(es)" in node.log(), 30, 0.1, message="the receiving processes")
        for i in range(14):
            ae = AE(ae_title=f"PEER{i}")
            ae.add_requested_context(Verification)
            held.append(ae.associate("127.0.0.1", node.port, ae_title=node.aet))
        up = [a for a in held if a.is_established]
        assert len(up) == 8 and all(a.is_rejected for a in held if not a.is_established)
        owners = {a: _owner(node.port, a.dul.socket.socket.getsockname()[1]) for a in up}  # type: ignore[union-attr]
        assert len(set(owners.values())) >= 2, "the kernel gave every association to one process"
        assert "8 associations from 127.0.0.1 already open (max_associations_per_host)" in node.log()

        # connections that send nothing: three may wait, from all processes together
        for _ in range(6):
            idle.append(socket.create_connection(("127.0.0.1", node.port)))
            time.sleep(0.1)
        time.sleep(1)
        closed = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
        assert closed == 3
        for s in idle:
            s.close()

        # a receiving process killed with kill -9: its associations no longer count
        victim = next(pid for pid in owners.values() if pid != node.proc.pid)  # type: ignore[union-attr]
        lost = sum(pid == victim for pid in owners.values())
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{victim}").exists() or "Z" in Path(f"/proc/{victim}/stat").read_text().split()[2],
                 10, 0.05, message="the killed process gone")
        more = []
        for i in range(lost + 3):
            ae = AE(ae_title=f"LATE{i}")
            ae.add_requested_context(Verification)
            more.append(ae.associate("127.0.0.1", node.port, ae_title=node.aet))
        assert sum(a.is_established for a in more) == lost
        held += more
    finally:
        for a in held:
            if a.is_established:
                a.release()
        for s in idle:
            s.close()
        node.stop()


def test_a_connection_keeps_its_row_until_its_association_ends() -> None:
    """The shared table's rows (tally.py): pynetdicom reports a connection before it starts the
    association's thread, so a row of an owner not yet started is not taken back by the next
    connection; one whose owner has run and ended is; a late drop by a former owner leaves the
    row's new holder alone."""
    import threading

    from dicomnode.node.dimse.tally import WAITING, Tally

    view = Tally(2).for_process(1)
    release = threading.Event()
    pending = [threading.Thread(target=release.wait) for _ in range(20)]
    rows = [view.take(t, "10.0.0.9") for t in pending]
    assert None not in rows and len(set(rows)) == 20
    assert view.count(WAITING, "10.0.0.9").host == 20
    for t in pending[:5]:
        t.start()
    release.set()
    for t in pending[:5]:
        t.join()
    later = threading.Thread(target=lambda: None)
    row = view.take(later, "10.0.0.9")  # the five ended ones are taken back first
    assert row in rows[:5] and view.count(WAITING, "10.0.0.9").host == 16
    view.drop(row, pending[rows.index(row)])  # the row's former holder: not its row any more
    assert view.count(WAITING, "10.0.0.9").host == 16
    view.drop(row, later)
    assert view.count(WAITING, "10.0.0.9").host == 15
