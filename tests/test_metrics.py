"""Metrics and health (issue 18, item 7): the running node scraped over HTTP, probed, and asked with
`dicomnode status`, after DCMTK's storescu and echoscu sent to it."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dicomnode.node.metrics import OTHER, AeLabels
from tests.support.datagen import write_ct_series
from tests.support.net import free_port
from tests.support.node import Node, storescu
from tests.support.proc import DICOMNODE, ROOT, need, run
from tests.support.toml import remotes, write_toml
from tests.support.wait import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _base(node: Node) -> str:
    return f"{node.http_scheme}://127.0.0.1:{node.http_port}"


def scrape(node: Node, headers: dict[str, str] | None = None) -> Samples:
    status, text = _get(_base(node) + "/metrics", headers)
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def status(node: Node, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    p = run([*DICOMNODE, "status", "--storage", str(node.storage), "--json", *extra], cwd=ROOT,
            env={**os.environ, **(env or {})})
    return p.returncode, json.loads(p.stdout)


def test_counts_match_what_was_sent(make_node, tmp_path: Path) -> None:
    dead = free_port()  # nobody listens there: forward:DEAD fails, is retried, then fails for good
    conf = write_toml(tmp_path / "node.toml", {
        "storage": {"duplicate_policy": "reject"},
        "security": {"open_services": ["find"]},  # AE titles not in [remotes] may not store
        "pipeline": {"max_attempts": 2, "retry_base_seconds": 0.1,
                     "rules": [{"match": {"calling_aet": "CT1"}, "actions": ["analyze", "forward:DEAD"]}]},
        "remotes": remotes({"CT1": ("CT1", dead, ["store"]), "DEAD": ("DEAD", dead, ["store"])})})
    node = make_node(extra=["--config", str(conf)], web=True)
    files = write_ct_series(tmp_path / "ct", n=3, rows=16, cols=16)
    assert storescu(node, *files, calling="CT1").returncode == 0
    storescu(node, files[0], calling="CT1")  # a duplicate, refused: 0x0111
    storescu(node, files[1], calling="NOPE")  # not allowed the store service: 0x0124
    need("echoscu")
    assert run(["echoscu", "-aet", "ECHO1", "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0
    stats = json.loads(node.cli("stats", "--json").stdout)
    assert stats["instances"] == 3

    wait_for(lambda: value(scrape(node), "dicomnode_jobs_total", action="forward:DEAD", outcome="failed") == 3,
             60, 0.2, message="the three forwards to fail for good")
    m = scrape(node)
    assert value(m, "dicomnode_associations_total", calling_ae="CT1") == 2
    assert value(m, "dicomnode_associations_total", calling_ae="NOPE") == 1
    assert value(m, "dicomnode_associations_total", calling_ae="ECHO1") == 1
    assert sum(v for (name, _), v in m.items() if name == "dicomnode_associations_open") == 0
    assert value(m, "dicomnode_received_objects_total", calling_ae="CT1", status="0x0000") == 3
    assert value(m, "dicomnode_received_objects_total", calling_ae="CT1", status="0x0111") == 1
    assert value(m, "dicomnode_received_objects_total", calling_ae="NOPE", status="0x0124") == 1
    # the bytes received of what was stored are the archived files' bytes, exactly
    assert value(m, "dicomnode_received_bytes_total", calling_ae="CT1", status="0x0000") == stats["bytes"] > 0
    assert value(m, "dicomnode_received_bytes_total", calling_ae="NOPE", status="0x0124") > 0
    assert value(m, "dicomnode_ingest_seconds_count") == 3  # Success only
    assert value(m, "dicomnode_ingest_seconds_bucket", le="+Inf") == 3
    assert value(m, "dicomnode_jobs_total", action="analyze", outcome="done") == 3
    assert value(m, "dicomnode_jobs_total", action="forward:DEAD", outcome="retry") == 3
    assert value(m, "dicomnode_index_entities", level="instances") == 3
    assert value(m, "dicomnode_archive_bytes") == stats["bytes"]
    assert value(m, "dicomnode_jobs_queued", state="failed") == 3
    assert value(m, "dicomnode_jobs_queued", state="done") == 3
    assert value(m, "dicomnode_listener", kind="dicom", address=f"127.0.0.1:{node.port}") == 1
    assert value(m, "dicomnode_ready") == 1 and value(m, "dicomnode_disk_free_bytes") > 0
    assert value(m, "dicomnode_last_received_timestamp_seconds") > 1.7e9

    assert _get(_base(node) + "/healthz") == (200, "ok\n")
    assert _get(_base(node) + "/readyz") == (200, "ready\n")

    code, st = status(node, "--config", str(conf))
    assert code == 0 and st["ready"] and st["problems"] == []
    assert st["running"] and st["pid"] == node.proc.pid  # type: ignore[union-attr]
    assert {(lst["kind"], lst["address"]) for lst in st["listeners"]} == {
        ("dicom", f"127.0.0.1:{node.port}"), ("http", f"127.0.0.1:{node.http_port}")}
    assert (st["instances"], st["studies"], st["bytes"]) == (3, 1, stats["bytes"])
    assert st["index"] == {"up": True, "error": None} and st["disk"]["free_bytes"] > st["disk"]["min_free_bytes"]
    assert st["jobs"] == {"pending": 0, "running": 0, "failed": 3, "done": 3}
    assert st["last_received_at"].startswith("20")
    assert (st["associations"], st["associations_open"]) == (4, 0)
    assert st["received_objects"] == {"0x0000": 3, "0x0111": 1, "0x0124": 1}
    assert st["job_outcomes"] == {"analyze": {"done": 3}, "forward:DEAD": {"retry": 3, "failed": 3}}
    assert "Traceback" not in node.log()  # no handler failed while counting


def test_restart_starts_counting_afresh(make_node, tmp_path: Path) -> None:
    """The run's folder is emptied at start-up: counters are this run's, the index's figures stay."""
    node = make_node(web=True)
    files = write_ct_series(tmp_path / "ct", n=2, rows=16, cols=16)
    assert storescu(node, *files, calling="CT1").returncode == 0
    assert value(scrape(node), "dicomnode_received_objects_total", calling_ae="CT1", status="0x0000") == 2
    node.stop()
    node.start()
    m = scrape(node)
    assert value(m, "dicomnode_received_objects_total", calling_ae="CT1", status="0x0000") == 0
    assert value(m, "dicomnode_index_entities", level="instances") == 2


def test_not_ready_below_min_free_mb(make_node) -> None:
    absurd = {"DICOMNODE_MIN_FREE_MB": str(1 << 40)}  # an exbibyte
    node = make_node(env=absurd, web=True)
    assert _get(_base(node) + "/healthz") == (200, "ok\n")
    code, text = _get(_base(node) + "/readyz")
    assert code == 503 and "below min_free_mb" in text, text
    assert value(scrape(node), "dicomnode_ready") == 0
    code, st = status(node, env=absurd)
    assert code == 1 and st["running"] and not st["ready"]
    assert len(st["problems"]) == 1 and "below min_free_mb" in st["problems"][0]


def test_metrics_ask_for_credentials_probes_do_not(make_node, tmp_path: Path) -> None:
    from dicomnode.node.identity import hash_password

    conf = write_toml(tmp_path / "basic.toml", {"web": {"auth": "basic", "users": [f"alice:{hash_password('pw')}"]}})
    node = make_node(extra=["--config", str(conf)], web=True)
    assert _get(_base(node) + "/metrics")[0] == 401
    assert _get(_base(node) + "/healthz") == (200, "ok\n")
    assert _get(_base(node) + "/readyz") == (200, "ready\n")
    basic = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    assert value(scrape(node, basic), "dicomnode_ready") == 1


def test_status_without_the_web_side_and_when_stopped(make_node) -> None:
    node = make_node()  # --no-web: no /metrics, status still reads the archive and the run's values
    need("echoscu")
    assert run(["echoscu", "-aet", "ECHO1", "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0
    code, st = status(node)
    assert code == 0 and st["running"] and st["associations"] == 1 and st["instances"] == 0
    assert st["listeners"] == [{"kind": "dicom", "address": f"127.0.0.1:{node.port}"}]
    assert st["last_received_at"] is None
    node.stop()
    code, st = status(node)
    assert code == 1 and not st["running"] and st["pid"] is None
    assert st["problems"] == ["the node is not running"] and "associations" not in st


def test_ae_labels_are_bounded() -> None:
    labels = AeLabels(["PACS"], cap=2)
    assert labels.of("MOD1") == OTHER  # only an accepted association may take a slot
    assert [labels.of(aet, admit=True) for aet in ("MOD1", "MOD2", "EVIL3", "EVIL4")] == ["MOD1", "MOD2", OTHER, OTHER]
    assert labels.of("PACS", admit=True) == "PACS" and labels.of("MOD1") == "MOD1"  # configured, or already seen
