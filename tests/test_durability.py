"""Nothing acknowledged is lost: kill -9 mid-transfer, restart, check (clean without --repair: the
node recovers by itself at start-up); repeated kills under concurrent load; clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.datagen import write_ct_series
from tests.support.dimse import acknowledged
from tests.support.proc import need, run
from tests.support.wait import wait_for


def test_kill9_mid_transfer_loses_nothingacknowledged(make_node, tmp_path: Path) -> None:
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
    acked = acknowledged("".join(log_lines), files)
    assert 60 <= len(acked) < 200, f"kill did not land mid-transfer ({len(acked)} acknowledged)"

    node.start()  # restart on the same archive
    rows = json.loads(node.cli("ls", "instances", "--json").stdout)
    stored = {r["SOPInstanceUID"]: r for r in rows}
    for f in acked:
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"{f.name} was acknowledged but is not in the archive"
        assert Path(stored[uid]["path"]).is_file()
    # start-up recovery indexed what was renamed into place but not committed: no --repair needed
    chk = node.cli("check", "--json", check=False)
    report = json.loads(chk.stdout)
    assert chk.returncode == 0 and report["consistent"], report
    # the killed process's temp files are gone (the restarted worker may be writing its own now)
    assert not list((node.storage / "tmp").glob(f"{killed}-*.part")), "stale temp files survived the restart"


def test_sigterm_finishes_and_exits_zero(make_node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", n=100, rows=128, cols=128)
    node = make_node()
    proc = subprocess.Popen([need("storescu"), "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # SIGTERM once the association is under way (storescu reads its 100 files first: a fixed
    # sleep lost that race on a loaded machine, and the request then found no listener)
    # (by whichever receiving process took the association: its lines start with [receiver-N])
    wait_for(lambda: re.search(r"INFO (\[receiver-\d+\] )?stored ", node.log()) is not None, 30, 0.01,
             message="the first object stored")
    code = node.stop(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert code == 0
    assert proc.returncode == 0, f"the association in progress was not allowed to finish: {err[-2000:]}"
    node.start()
    assert json.loads(node.cli("stats", "--json").stdout)["instances"] == 100
    # the restarted node serves again
    assert run([need("echoscu"), "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0


@pytest.mark.slow
def test_repeated_kills_under_load_need_no_repair(make_node, tmp_path: Path) -> None:
    """20 kill -9 at random moments while four storescu clients send and the worker runs jobs:
    after every restart `check` is clean, and every acknowledged object is in the archive."""
    import random

    node = make_node()
    rnd = random.Random(7)
    acked: set[Path] = set()
    for cycle in range(20):
        # new objects every cycle, so that each kill can catch new ones between rename and commit
        folders = [write_ct_series(tmp_path / f"c{cycle}-{i}", n=80, rows=96, cols=96, patient_id=f"K{i}",
                                   seed=cycle * 4 + i) for i in range(4)]
        procs = [subprocess.Popen([need("storescu"), "-v", "-aec", node.aet, "127.0.0.1", str(node.port),
                                   *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for files in folders]
        time.sleep(rnd.uniform(0.2, 2.0))
        node.kill9()
        for p in procs:
            out, _ = p.communicate(timeout=60)
            acked.update(acknowledged(out, [f for files in folders for f in files]))
        node.start()
        chk = node.cli("check", "--json", "--quick", check=False)
        report = json.loads(chk.stdout)
        assert chk.returncode == 0 and report["consistent"], (cycle, report)
    stored = {r["SOPInstanceUID"] for r in json.loads(node.cli("ls", "instances", "--json").stdout)}
    lost = [f for f in acked if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) not in stored]
    assert acked and not lost, f"{len(lost)} of {len(acked)} acknowledged objects lost"
    assert node.cli("check", "--json").returncode == 0  # and every file hashes to its index entry
    assert node.log().count("did not stop cleanly") == 20  # every restart knew it followed a crash


def test_a_large_objects_writes_on_their_own_thread_keep_every_byte(tmp_path: Path) -> None:
    """Past PIPELINE_AT a sink's writes and hashing move to a thread of their own: the file and its
    hash are still exactly what was written, in order, whatever kind of buffer it came in (a
    writable buffer the caller reuses at once is copied first), and the thread is gone after."""
    import hashlib
    import os

    from dicomnode.storage.archive import durable

    sink = durable.HashingSink(tmp_path)
    expect = hashlib.sha256()
    reused = bytearray(100_003)
    written = 0
    for i in range(400):  # ~40 MB in pieces of three kinds, some of them odd-sized
        piece = os.urandom(100_003 + i % 7)
        expect.update(piece)
        if i % 3 == 0:
            sink.write(piece)
        elif i % 3 == 1:
            sink.write(memoryview(bytearray(piece)).toreadonly())
        else:
            reused[:] = piece
            sink.write(memoryview(reused))
            reused[:8] = b"\xff" * 8  # changed right after write(): must not reach the file
        written += len(piece)
    assert sink._writer is not None, "a 40 MB object should be written off the receiving thread"
    sink.seal()
    assert sink.size == written == os.path.getsize(sink.path)
    assert sink.sha256 == expect.hexdigest() == hashlib.sha256(sink.path.read_bytes()).hexdigest()
    assert not [t for t in threading.enumerate() if t.name == "sink-writer"]
    sink.discard()
    assert not sink.path.exists()


def test_a_large_object_abandoned_mid_transfer_leaves_no_file_or_thread(tmp_path: Path) -> None:
    import os

    from dicomnode.storage.archive import durable

    sink = durable.HashingSink(tmp_path)
    for _ in range(200):
        sink.write(os.urandom(1 << 16))
    assert sink._writer is not None
    sink.discard()  # what an aborted association's unclaimed sinks get
    assert not sink.path.exists()
    assert not [t for t in threading.enumerate() if t.name == "sink-writer"]
