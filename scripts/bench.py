"""Ingest benchmark: the node side by side with DCMTK storescp and Orthanc, in one run.

Workload: 500 CT images 512x512 16-bit (5 patients, 10 studies), sent by
DCMTK storescu over one association and over four at once; then one
generated 1 GB, 1000-frame object, for time and the receiver's peak RSS.
Figures are wall-clock seconds on this machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from datagen import write_ct_series, write_multiframe  # noqa: E402
from netutil import free_port, wait_port  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and its children (storescp --fork, Orthanc's single process)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    aet: str
    storage: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_node(work: Path, concurrent: bool = True, actions: str = "analyze") -> Server:
    storage = work / "node"
    env = {**os.environ, "DICOMNODE_MIN_FREE_MB": "0", "DICOMNODE_LOG_LEVEL": "WARNING",
           "DICOMNODE_DEFAULT_ACTIONS": actions}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--storage", str(storage), "--host",
                             "127.0.0.1", "--port", "0", "--aet", "DICOMNODE"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    m = re.search(r":(\d+) as", line)
    if not m:
        raise RuntimeError(f"node did not start: {line!r}")
    return Server("dicomnode" if actions else "dicomnode, no jobs", proc, int(m.group(1)), "DICOMNODE", storage)


def start_storescp(work: Path, concurrent: bool = True) -> Server:
    """+B writes data sets straight to disk (bit-preserving, as the node does); --fork serves
    associations at once, and without it the one process we measure RSS of does the work."""
    out = work / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "+B", *(["--fork"] if concurrent else []), "-aet", "STORESCP", "-od", str(out), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return Server("dcmtk storescp", proc, port, "STORESCP", out)


def start_orthanc(work: Path, concurrent: bool = True) -> Server:
    storage = work / "orthanc"
    storage.mkdir(parents=True)
    port, http = free_port(), free_port()
    conf = {"Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            "StorageCompression": False, "ConcurrentJobs": 2, "DicomThreadsCount": 4,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    (work / "orthanc.json").write_text(json.dumps(conf))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Server("orthanc", proc, port, "ORTHANC", storage)


def storescu(server: Server, paths: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(["storescu", "-aec", server.aet, "+sd", "127.0.0.1", str(server.port),
                             *map(str, paths)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed_send(server: Server, groups: list[list[Path]]) -> float:
    t0 = time.perf_counter()
    procs = [storescu(server, g) for g in groups]
    for p in procs:
        _out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu into {server.name} failed: {err[-500:]}")
    return time.perf_counter() - t0


def make_workload(work: Path) -> list[Path]:
    """500 CT images over 5 patients and 10 studies, in 4 folders for the 4-association run."""
    folders = []
    for s in range(10):
        d = work / "ct" / f"study{s:02d}"
        write_ct_series(d, n=50, patient_id=f"BENCH{s // 2}", seed=s)
        folders.append(d)
    return folders


def queue_drained_after(srv: Server, since: float, timeout: float = 300) -> float | None:
    """Seconds from `since` until the node's job queue is empty (None for other servers)."""
    db = srv.storage / "index.sqlite"
    if srv.name != "dicomnode" or not db.exists():
        return None
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            left = c.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')").fetchone()[0]
        if left == 0:
            return time.perf_counter() - since
        time.sleep(0.1)
    return None


def run_target(name: str, start: Callable[..., Server], work: Path, folders: list[Path],
               big: Path | None) -> dict[str, float]:
    res: dict[str, float] = {}
    slug = re.sub(r"[^a-z0-9]+", "-", name)
    for label, groups in (("500 images, 1 association", [folders]),
                          ("500 images, 4 associations", [folders[0:3], folders[3:5], folders[5:8], folders[8:10]])):
        d = work / f"{slug}-{len(groups)}"
        srv = start(d)
        try:
            t0 = time.perf_counter()
            res[label] = timed_send(srv, groups)
            drained = queue_drained_after(srv, t0)
            if drained is not None and len(groups) == 1:
                res["500 images analysed, s after first byte"] = drained
        finally:
            srv.stop()
    if big is not None:
        d = work / f"{slug}-big"
        srv = start(d, False)
        try:
            res["1 GB object, s"] = timed_send(srv, [[big]])
            res["1 GB object, peak RSS MB"] = peak_rss_mb(srv.proc.pid)
        finally:
            srv.stop()
    shutil.rmtree(work / f"{slug}-1", ignore_errors=True)
    return res


def pipeline_cost(work: Path, folders: list[Path], reps: int) -> dict[str, float]:
    """500 images over one association into the node with and without on-arrival jobs.

    Runs alternate and the medians are compared, because single runs on a
    small shared machine vary by more than the difference being measured.
    """
    runs: dict[str, list[float]] = {"analyze": [], "": []}
    for rep in range(reps):
        for actions in ("analyze", ""):
            d = work / f"cost-{rep}-{actions or 'none'}"
            srv = start_node(d, actions=actions)
            try:
                runs[actions].append(timed_send(srv, [folders]))
            finally:
                srv.stop()
            shutil.rmtree(d, ignore_errors=True)
    with_jobs, without = statistics.median(runs["analyze"]), statistics.median(runs[""])
    print(f"  with analysis {sorted(round(x, 2) for x in runs['analyze'])}, "
          f"without {sorted(round(x, 2) for x in runs[''])}: median cost {with_jobs / without - 1:+.1%}",
          file=sys.stderr)
    return {"500 images, 1 association (median)": without,
            "500 images, 1 association, with analysis (median)": with_jobs,
            "on-arrival analysis cost, %": 100 * (with_jobs / without - 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    ap.add_argument("--no-big", action="store_true", help="skip the 1 GB object")
    ap.add_argument("--orthanc-big", action="store_true", help="also send the 1 GB object to Orthanc (slow)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved runs of the with/without-analysis comparison")
    ap.add_argument("--only", choices=["ingest", "find", "convert"], help="run one part (default: all)")
    ap.add_argument("--find-studies", type=int, default=10_000, help="studies (of 10 instances) in the C-FIND index")
    ap.add_argument("--find-reps", type=int, default=5, help="repetitions of each C-FIND, per server")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-", dir=ROOT / "bench-results"
                                 if (ROOT / "bench-results").is_dir() else None))
    try:
        results: dict[str, dict[str, float]] = {}
        if args.only in (None, "find") and shutil.which("Orthanc"):
            import bench_find

            find = bench_find.run(work, args.find_studies, args.find_reps)
            report(find, title=f"C-FIND, {args.find_studies} studies / {args.find_studies * 10} instances "
                               "(median ms of one query over its own association; ratio = dicomnode / orthanc)")
            results.update({f"find: {k}": v for k, v in find.items()})
            shutil.rmtree(work / "find-data", ignore_errors=True)
        if args.only in (None, "convert"):
            import bench_convert

            print("measuring conversion (200-frame 512x512 cine) ...", file=sys.stderr)
            conv = bench_convert.run(work)
            report(conv, title="convert: MP4 (H.264) against GIF, same 200-frame cine loop")
            results.update({f"convert: {k}": v for k, v in conv.items()})
        if args.only in ("find", "convert"):
            _write(args.out, results)
            return 0
        print("generating workload ...", file=sys.stderr)
        folders = make_workload(work)
        big = None if args.no_big else write_multiframe(work / "big.dcm", random=False)
        targets: list[tuple[str, Callable[..., Server], bool]] = [
            ("dicomnode", start_node, True), ("storescp", start_storescp, True)]
        if shutil.which("Orthanc"):
            targets.append(("orthanc", start_orthanc, args.orthanc_big))
        for name, start, with_big in targets:
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = run_target(name, start, work, folders, big if with_big else None)
        print("measuring what on-arrival analysis costs the sender ...", file=sys.stderr)
        results["dicomnode, no jobs"] = pipeline_cost(work, folders, args.reps)
        report({k: v for k, v in results.items() if not k.startswith(("find: ", "convert: "))})
        _write(args.out, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _write(out: Path, results: dict[str, dict[str, float]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}, indent=2))
    print(f"written {out}", file=sys.stderr)


def report(results: dict[str, dict[str, float]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = list(dict.fromkeys(k for r in results.values() for k in r))
    t = Table(title=title or "ingest (seconds unless stated; ratio = dicomnode / other); "
                             "dicomnode analyses every image on arrival, 'no jobs' does not")
    t.add_column("metric")
    for name in results:
        t.add_column(name, justify="right")
    for m in metrics:
        cells = []
        mine = results.get("dicomnode", {}).get(m)
        for name, r in results.items():
            v = r.get(m)
            if v is None:
                cells.append("-")
            elif name == "dicomnode" or mine is None or not v:
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.2f} ({mine / v:.2f}x)")
        t.add_row(m, *cells)
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
