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
