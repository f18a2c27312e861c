"""On-arrival jobs: analysed on arrival, durable across kill -9, retried, forwarded when the peer is back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pydicom import dcmread

from dicomnode.node import config as cfg
from tests.support.datagen import write_ct_series
from tests.support.net import free_port
from tests.support.node import storescu
from tests.support.proc import cli, need
from tests.support.toml import remotes, write_toml
from tests.support.wait import wait_for


def jobs(node, state: str | None = None) -> list[dict]:
    args = ["jobs", "--json"] + (["--state", state] if state else [])
    return json.loads(node.cli(*args).stdout)["jobs"]


def depth(node) -> dict[str, int]:
    return json.loads(node.cli("jobs", "--json").stdout)["depth"]


def test_every_instance_is_analysed_on_arrival(node, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ok", n=5, rows=32, cols=32)
    assert storescu(node, *files).returncode == 0
    bad = dcmread(write_ct_series(tmp_path / "bad", n=1, rows=32, cols=32)[0])
    bad.NumberOfFrames = 4  # one frame of data for four declared
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path)
    node.cli("import", str(bad_path))  # the CLI ingests; the running node's workers pick the job up
    wait_for(lambda: depth(node)["done"] == 6, 60, 0.2, message="6 analyses")
    rows = {r["SOPInstanceUID"]: r for r in json.loads(node.cli("ls", "instances", "--json").stdout)}
    for uid, r in rows.items():
        report = json.loads(Path(r["path"] + ".analysis.json").read_text())
        assert report["dicom_identifiers"]["SOPInstanceUID"] == uid
        assert r["pixel_data_offset"] == report["pixel_data_info"]["pixel_data_offset"]
    problems = json.loads(node.cli("ls", "instances", "--problems", "--json").stdout)
    assert [p["SOPInstanceUID"] for p in problems] == [bad.SOPInstanceUID]
    assert "PIXEL_DATA_SHORT" in problems[0]["finding_codes"]
    show = json.loads(node.cli("show", bad.SOPInstanceUID, "--json").stdout)
    assert Path(show["analysis_report"]).is_file()
    # the node logs the queue's depth when it has changed, every QUEUE_LOG_SECONDS
    wait_for(lambda: "queue:" in node.log(), 30, 0.2, message="the queue's depth in the log")


def test_jobs_survive_kill9(make_node, tmp_path: Path) -> None:
    node = make_node(env={"DICOMNODE_WORKERS": "0"})  # receive only: every job stays pending
    files = write_ct_series(tmp_path / "s", n=20, rows=32, cols=32)
    assert storescu(node, *files).returncode == 0
    assert depth(node)["pending"] == 20
    # and one job claimed by a worker that then died with the node
    import socket

    from dicomnode.storage.archive import open_archive

    queue = open_archive(node.storage).jobs
    queue.owner = f"{socket.gethostname()}/{node.aet}"  # as the node's own worker claims (HOST/AET)
    claimed = queue.claim()
    assert len(claimed) == 1
    node.kill9()

    node.env["DICOMNODE_WORKERS"] = "2"
    node.start()
    wait_for(lambda: depth(node)["done"] == 20, 60, 0.2, message="20 jobs done after restart")
    assert "queued again" in node.log()
    all_jobs = jobs(node)
    assert len(all_jobs) == 20 and {j["action"] for j in all_jobs} == {"analyze"}
    assert sorted(j["attempts"] for j in all_jobs) == [1] * 19 + [2]  # the interrupted one ran again
    assert len(list(node.storage.rglob("*.analysis.json"))) == 20


def test_failing_action_retries_then_fails(make_node, tmp_path: Path) -> None:
    dead = free_port()  # nobody listens there
    conf = write_toml(tmp_path / "node.toml", {
        "pipeline": {"max_attempts": 3, "retry_base_seconds": 0.2,
                     "rules": [{"match": {"calling_aet": "CT1"}, "actions": ["analyze", "forward:DEAD"]}]},
        "remotes": remotes({"DEAD": ("DEAD", dead, ["store", "find", "move", "get"])})})
    node = make_node(extra=["--config", str(conf)])
    files = write_ct_series(tmp_path / "s", n=2, rows=16, cols=16)
    assert storescu(node, files[0], calling="CT1").returncode == 0
    assert storescu(node, files[1], calling="OTHER").returncode == 0  # no rule matches: no jobs
    wait_for(lambda: depth(node)["failed"] == 1, 60, 0.2, message="the forward to fail for good")
    failed = jobs(node, "failed")[0]
    assert failed["action"] == "forward:DEAD" and failed["attempts"] == 3
    assert "cannot connect" in failed["last_error"]
    assert [j["action"] for j in jobs(node, "done")] == ["analyze"]
    assert len(jobs(node)) == 2
    requeued = json.loads(node.cli("jobs", "retry", "--all-failed", "--json").stdout)
    assert requeued["requeued"] == 1
    assert cli("jobs", "retry", "--storage", str(node.storage), check=False).returncode == 2


def test_forward_succeeds_once_the_remote_is_up(make_node, tmp_path: Path) -> None:
    port = free_port()
    conf = write_toml(tmp_path / "node.toml", {
        "pipeline": {"default_actions": ["forward:PACS2"], "retry_base_seconds": 0.5},
        "remotes": remotes({"PACS2": ("PACS2", port, ["store", "find", "move", "get"])})})
    node = make_node(extra=["--config", str(conf)])
    files = write_ct_series(tmp_path / "s", n=3, rows=16, cols=16)
    assert storescu(node, *files).returncode == 0
    wait_for(lambda: all(j["attempts"] >= 1 and j["state"] == "pending" for j in jobs(node)), 60, 0.2,
             message="a first failed attempt")
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen([need("storescp"), "-aet", "PACS2", "-od", str(received), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: depth(node)["done"] == 3, 60, 0.2, message="forwards to succeed")
    finally:
        scp.terminate()
        scp.wait()
    got = sorted(str(dcmread(p).SOPInstanceUID) for p in received.iterdir())
    assert got == sorted(str(dcmread(f).SOPInstanceUID) for f in files)


def test_rules_from_config(tmp_path: Path) -> None:
    conf = write_toml(tmp_path / "n.toml", {
        "pipeline": {"rules": [
            {"match": {"modality": ["XA", "US"]}, "actions": ["analyze", "forward:P"]},
            {"match": {"calling_aet": "CT1", "sop_class": "1.2.840.10008.5.1.4.1.1.2"}, "actions": ["analyze"]}]},
        "remotes": {"P": {"aet": "P", "host": "pacs.example", "port": 104}}})
    s = cfg.load(conf)
    assert s.actions_for("ANY", "XA", "1.2") == ["analyze", "forward:P"]
    assert s.actions_for("CT1", "CT", "1.2.840.10008.5.1.4.1.1.2") == ["analyze"]
    assert s.actions_for("CT2", "CT", "1.2.840.10008.5.1.4.1.1.2") == []
    bad = write_toml(tmp_path / "bad.toml", {"pipeline": {"default_actions": ["forward:NOWHERE"]}})
    try:
        cfg.load(bad)
    except cfg.ConfigError as exc:
        assert "NOWHERE" in str(exc)
    else:
        raise AssertionError("an action naming an unknown remote must be refused")


def test_workers_hold_back_while_images_arrive() -> None:
    """The receiver's stamps make the workers wait; a pause of the sender lets them run."""
    import multiprocessing
    import time as _time

    from dicomnode.node.activity import Activity

    a = Activity(multiprocessing.get_context("spawn"))
    assert not a.busy()
    a.stored()
    assert a.busy()
    a.open_associations.value = 1
    a.last_store.value = _time.monotonic() - 1.0  # an open association that stored a second ago
    assert a.busy()
    a.last_store.value = _time.monotonic() - 5.0  # ... and has idled since
    assert not a.busy()
