"""Nothing acknowledged is lost: kill -9 mid-transfer, restart, check; clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from pydicom import dcmread

from tests.support.datagen import write_ct_series
from tests.support.proc import need, run
from tests.support.wait import wait_for


def _acknowledged(storescu_log: str, files: list[Path]) -> list[Path]:
    """Files storescu saw acknowledged with Success (it sends them in the order given)."""
    acks: list[Path] = []
    sending: Path | None = None
    for line in storescu_log.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            sending = Path(m.group(1))
        elif "Received Store Response (Success)" in line and sending is not None:
            acks.append(sending)
            sending = None
    return acks


def test_kill9_mid_transfer_loses_nothing_acknowledged(make_node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", n=200, rows=256, cols=256)
    node = make_node()
    proc = subprocess.Popen([need("storescu"), "-v", "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_lines: list[str] = []
    reader = threading.Thread(target=lambda: log_lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    wait_for(lambda: sum("Received Store Response" in ln for ln in list(log_lines)) >= 60, 60, 0.005,
             message="60 acknowledged stores")
    killed = node.proc.pid if node.proc else 0
    node.kill9()
    proc.wait(timeout=30)
    reader.join(timeout=10)
    acked = _acknowledged("".join(log_lines), files)
    assert 60 <= len(acked) < 200, f"kill did not land mid-transfer ({len(acked)} acknowledged)"

    node.start()  # restart on the same archive
    rows = json.loads(node.cli("ls", "instances", "--json").stdout)
    stored = {r["SOPInstanceUID"]: r for r in rows}
    for f in acked:
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"{f.name} was acknowledged but is not in the archive"
        assert Path(stored[uid]["path"]).is_file()
    chk = node.cli("check", "--json", check=False)
    report = json.loads(chk.stdout)
    assert not report["missing_files"] and not report["hash_mismatches"], report
    # An object may have been renamed into place just before the kill, before its
    # commit (never acknowledged): that is the only thing a crash may leave.
    assert len(report["orphan_files"]) <= 1, report
    if report["orphan_files"]:
        assert node.cli("check", "--repair", "--json").returncode == 0
    assert node.cli("check", "--json").returncode == 0
    # the killed process's temp files are gone (the restarted worker may be writing its own now)
    assert not list((node.storage / "tmp").glob(f"{killed}-*.part")), "stale temp files survived the restart"


def test_sigterm_finishes_and_exits_zero(make_node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", n=100, rows=128, cols=128)
    node = make_node()
    proc = subprocess.Popen([need("storescu"), "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    code = node.stop(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert code == 0
    assert proc.returncode == 0, f"the association in progress was not allowed to finish: {err[-2000:]}"
    node.start()
    assert json.loads(node.cli("stats", "--json").stdout)["instances"] == 100
    # the restarted node serves again
    assert run([need("echoscu"), "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0
