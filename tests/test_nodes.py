"""Several nodes on one index and one archive: job leases (each job run once, a dead node's jobs
taken over once its lease runs out, a live node's never touched), and two `serve`s with their
own names on one PostgreSQL index and one archive folder, each answering for everything."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from dicomnode.storage.index.db import Database
from dicomnode.storage.index.models import Job, now, table
from dicomnode.storage.jobs import JobQueue, Outcome
from tests.support.datagen import write_ct_series
from tests.support.node import Node, storescu
from tests.support.proc import cli, need, run
from tests.support.wait import wait_for

JOBS = table(Job)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_leases_keep_live_claims_and_hand_over_dead_ones(db_url: str) -> None:
    db = Database(db_url)
    a, b = JobQueue(db, "node-a", lease=1.0), JobQueue(db, "node-b", lease=1.0)
    t = now()
    with db.writing_connection() as conn:
        conn.execute(insert(JOBS), [{"sop_instance_uid": f"1.2.{i}", "action": "analyze", "state": "pending",
                                     "attempts": 0, "not_before": t, "created_at": t, "updated_at": t}
                                    for i in range(4)])
    mine = a.claim(2)
    assert len(mine) == 2
    assert b.requeue() == 0  # a's claims are live
    theirs = b.claim(4)
    assert {j.id for j in theirs}.isdisjoint({j.id for j in mine}) and len(theirs) == 2
    b.finish([Outcome(j) for j in theirs])
    # a heartbeat keeps a's claims past the lease's length
    time.sleep(0.6)
    assert a.heartbeat() == 2
    time.sleep(0.6)
    assert b.requeue() == 0
    # a dies (no heartbeat): after the lease, b takes its jobs over and runs them
    time.sleep(1.2)
    assert b.requeue() == 2
    taken = b.claim(4)
    assert {j.id for j in taken} == {j.id for j in mine} and all(j.attempts == 2 for j in taken)
    a.finish([Outcome(j, "a's late word") for j in mine])  # too late: no longer a's to record
    with db.engine.connect() as conn:
        rows = conn.execute(select(JOBS.c.id, JOBS.c.state, JOBS.c.owner, JOBS.c.last_error)
                            .where(JOBS.c.id.in_([j.id for j in mine]))).all()
    assert all(r.state == "running" and r.owner == "node-b" and r.last_error is None for r in rows)
    b.finish([Outcome(j) for j in taken])
    with db.engine.connect() as conn:
        assert conn.execute(select(JOBS.c.state).distinct()).scalars().all() == ["done"]
    # at start-up a node takes back its own running jobs of a crashed run, even with a live lease
    with db.writing_connection() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id == mine[0].id).values(
            state="running", owner="node-a", lease_until=now() + timedelta(hours=1)))
    assert b.requeue() == 0 and a.requeue(own=True) == 1


def _findscu_count(node: Node) -> int:
    need("findscu")
    p = run(["findscu", "-S", "-aec", node.aet, "127.0.0.1", str(node.port), "-k", "QueryRetrieveLevel=IMAGE",
             "-k", "SOPInstanceUID"])
    return (p.stdout + p.stderr).count("Find Response:")


def test_two_nodes_on_one_postgresql_and_one_archive(pg_url: str, tmp_path: Path) -> None:
    storage = tmp_path / "shared"
    env = {"DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_JOB_LEASE_SECONDS": "2"}
    a = Node(storage, {**env, "DICOMNODE_NAME": "node-a"}, ["--db", pg_url], aet="NODEA").start()
    b = Node(storage, {**env, "DICOMNODE_NAME": "node-b"}, ["--db", pg_url], aet="NODEB").start()
    try:
        sent_a = write_ct_series(tmp_path / "a", 10, rows=16, cols=16, patient_id="PA")
        sent_b = write_ct_series(tmp_path / "b", 10, rows=16, cols=16, patient_id="PB")
        assert storescu(a, *sent_a).returncode == 0 and storescu(b, *sent_b).returncode == 0
        # each answers for what either stored; each receives into temp files of its own
        assert _findscu_count(a) == 20 and _findscu_count(b) == 20
        assert (storage / "tmp" / "node-a").is_dir() and (storage / "tmp" / "node-b").is_dir()

        def queue() -> dict[str, int]:
            return json.loads(cli("jobs", "--storage", str(storage), "--db", pg_url, "--json").stdout)["depth"]

        wait_for(lambda: queue()["done"] == 20, 60, 0.3, message="20 analyses")
        listed = json.loads(cli("jobs", "--storage", str(storage), "--db", pg_url, "--json").stdout)["jobs"]
        assert len(listed) == 20 and all(j["attempts"] == 1 for j in listed)  # each run once
        # a dies in the middle of a job (its claim left behind, as kill -9 leaves it): b takes it over
        a.kill9()
        db = Database(pg_url)
        victim = listed[0]["id"]
        with db.writing_connection() as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == victim).values(
                state="running", owner="node-a", lease_until=now() + timedelta(seconds=2)))
        wait_for(lambda: queue()["done"] == 20, 30, 0.3, message="node-a's job run by node-b")
        with db.engine.connect() as conn:
            row = conn.execute(select(JOBS.c.attempts, JOBS.c.owner).where(JOBS.c.id == victim)).one()
        assert row.attempts == 2
        assert "lease ran out" in b.log()
        # b goes on alone; `status` names both markers' nodes only while both run
        more = write_ct_series(tmp_path / "c", 3, rows=16, cols=16, patient_id="PC")
        assert storescu(b, *more).returncode == 0 and _findscu_count(b) == 23
        a2 = Node(storage, {**env, "DICOMNODE_NAME": "node-a"}, ["--db", pg_url], aet="NODEA").start()
        try:
            assert _findscu_count(a2) == 23
            report = json.loads(cli("status", "--storage", str(storage), "--db", pg_url, "--json", check=False).stdout)
            assert {n["name"] for n in report["nodes"]} == {"node-a", "node-b"}
        finally:
            a2.stop()
        # a second node under a name already running is refused
        clash = Node(storage, {**env, "DICOMNODE_NAME": "node-b"}, ["--db", pg_url], aet="NODEC")
        with pytest.raises(AssertionError):
            clash.start(timeout=15)
        assert "several nodes on one archive need a [node] name each" in clash.log()
        clash.stop()
    finally:
        a.stop()
        b.stop()


def test_haproxy_balances_two_nodes_with_the_example_config(pg_url: str, tmp_path: Path) -> None:
    """config/haproxy.cfg as shipped, in front of two nodes with one AE title: associations go to
    both, every object is stored once, and a query through HAProxy sees them all."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.net import free_port, wait_port
    from tests.support.proc import ROOT

    haproxy = need("haproxy")
    storage = tmp_path / "shared"
    env = {"DICOMNODE_MIN_FREE_MB": "0"}
    a = Node(storage, {**env, "DICOMNODE_NAME": "node-a"}, ["--db", pg_url]).start()
    b = Node(storage, {**env, "DICOMNODE_NAME": "node-b"}, ["--db", pg_url]).start()
    port = free_port()
    proxy = subprocess.Popen([haproxy, "-db", "-f", str(ROOT / "config" / "haproxy.cfg")],
                             env={**os.environ, "DICOM_BIND": f"127.0.0.1:{port}", "NODE_A": f"127.0.0.1:{a.port}",
                                  "NODE_B": f"127.0.0.1:{b.port}"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, 15)
        front = Node(storage, env, port=port)  # where the modalities send: HAProxy
        batches = [write_ct_series(tmp_path / f"s{i}", 3, rows=16, cols=16, patient_id=f"HP{i}") for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(lambda files: storescu(front, *files).returncode, batches))
        assert sent == [0] * 8
        assert _findscu_count(front) == 24
        served = [log.count("released after") for log in (a.log(), b.log())]
        assert sum(served) >= 8 and min(served) >= 1, served  # both nodes took associations
    finally:
        proxy.terminate()
        proxy.wait(10)
        a.stop()
        b.stop()
