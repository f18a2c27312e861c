"""C-FIND latency: the node and Orthanc loaded with the same archive, queried side by side.

The archive (default 10,000 studies / 100,000 small instances) is generated
here, loaded into both (the node by `dicomnode import`, Orthanc by storescu),
then each query is sent by DCMTK findscu over one association per query,
alternating between the two servers; the medians are compared.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scripts.benchmarks.servers import start_node, start_orthanc
from tests.support.proc import DICOMNODE, ROOT

SURNAMES = ["SMITH", "MÜLLER", "NGUYEN", "GARCIA", "ROSSI", "DUPONT", "JANSEN", "KOWALSKI", "SATO", "BROWN",
            "OLSEN", "SILVA", "COHEN", "NOVAK", "IVANOV", "KIM", "PATEL", "LEE", "WILSON", "MARTIN"]
MODALITIES = ["CT", "MR", "US", "CR", "XA"]


def generate(folder: Path, studies: int, series: int, per_series: int, seed: int = 3) -> list[dict[str, str]]:
    """Write the archive; return one record per study (for choosing query values)."""
    rnd = random.Random(seed)
    pixels = np.zeros(16, dtype=np.uint16).tobytes()
    out = []
    n = 0
    for s in range(studies):
        pid = f"PID{s // 2:06d}"
        rnd_p = random.Random(pid)
        name = f"{rnd_p.choice(SURNAMES)}^{rnd_p.choice(['ANNA', 'JOHN', 'MARIA', 'PETER', 'LI'])}"
        date = f"{rnd.randint(2015, 2024)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        study_uid = generate_uid()
        rec = {"PatientID": pid, "PatientName": name, "StudyDate": date, "StudyInstanceUID": study_uid,
               "AccessionNumber": f"ACC{s:07d}"}
        sub = folder / f"{s // 100:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for ser in range(series):
            series_uid = generate_uid()
            modality = rnd.choice(MODALITIES)
            for i in range(per_series):
                ds = Dataset()
                sop = generate_uid()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
                ds.SOPInstanceUID = sop
                ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = pid, name, "19700101", "O"
                ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, date, "101500"
                ds.AccessionNumber, ds.StudyID, ds.StudyDescription = rec["AccessionNumber"], "1", "Bench study"
                ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = series_uid, modality, ser + 1
                ds.InstanceNumber = i + 1
                ds.Rows = ds.Columns = 4
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
                ds.PixelData = pixels
                ds.save_as(sub / f"{n:07d}.dcm", enforce_file_format=True)
                n += 1
                if i == 0 and ser == 0:
                    rec["SOPInstanceUID"] = sop
        out.append(rec)
        if s % 1000 == 999:
            print(f"  generated {s + 1} studies", file=sys.stderr)
    return out


def load_node(folder: Path, storage: Path) -> float:
    """Two imports in parallel (one per core), no on-arrival jobs: loading is not what is measured."""
    env = {**os.environ, "DICOMNODE_DEFAULT_ACTIONS": "", "DICOMNODE_MIN_FREE_MB": "0"}
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*DICOMNODE, "import", *map(str, subs[i::2]), "--storage",
                               str(storage), "--json"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(2) if subs[i::2]]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("dicomnode import failed")
    return time.perf_counter() - t0


def load_orthanc(folder: Path, port: int) -> float:
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", "ORTHANC", "+sd", "127.0.0.1", str(port), *map(str, subs[i::2])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2) if subs[i::2]]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def find_ms(port: int, aet: str, keys: dict[str, Any]) -> tuple[float, int]:
    """One C-FIND by DCMTK findscu (Nagle off, one association); milliseconds from start to exit,
    and the number of matches. findscu is the client sites use; a Python client's own cost per
    response (~0.3 ms) had hidden the servers' difference in large answers."""
    args = ["findscu", "-v", "-S", "-aec", aet, "127.0.0.1", str(port)]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, errors="replace", env={**os.environ, "TCP_NODELAY": "1"})
    ms = (time.perf_counter() - t0) * 1000
    log = p.stdout + p.stderr
    if p.returncode != 0 or "Final Find Response" not in log:
        raise RuntimeError(f"findscu against {aet} failed: {log[-500:]}")
    return ms, len(re.findall(r"Find Response: \d+ \(Pending\)", log))


def queries(recs: list[dict[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    r = recs[len(recs) // 2]
    year = r["StudyDate"][:4]
    return [
        ("STUDY by PatientID", {"QueryRetrieveLevel": "STUDY", "PatientID": r["PatientID"], "StudyInstanceUID": "",
                                "StudyDate": "", "PatientName": "", "ModalitiesInStudy": ""}),
        ("STUDY by AccessionNumber", {"QueryRetrieveLevel": "STUDY", "AccessionNumber": r["AccessionNumber"],
                                      "StudyInstanceUID": "", "PatientName": ""}),
        ("STUDY, name wildcard + 1 month",
         {"QueryRetrieveLevel": "STUDY", "PatientName": "SMITH*", "StudyDate": f"{year}0101-{year}0131",
          "StudyInstanceUID": "", "NumberOfStudyRelatedInstances": ""}),
        ("STUDY, one year (~10%)", {"QueryRetrieveLevel": "STUDY", "StudyDate": f"{year}0101-{year}1231",
                                    "StudyInstanceUID": "", "PatientName": "", "PatientID": ""}),
        ("STUDY, one year, with counts", {"QueryRetrieveLevel": "STUDY", "StudyDate": f"{year}0101-{year}1231",
                                          "StudyInstanceUID": "", "PatientName": "", "PatientID": "",
                                          "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
                                          "ModalitiesInStudy": ""}),
        ("IMAGE, instances of a study", {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": r["StudyInstanceUID"],
                                         "SeriesInstanceUID": "", "SOPInstanceUID": "", "InstanceNumber": ""}),
        ("IMAGE by SOPInstanceUID", {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": r["StudyInstanceUID"],
                                     "SOPInstanceUID": r["SOPInstanceUID"], "SOPClassUID": ""}),
    ]


def run(work: Path, studies: int, reps: int) -> dict[str, dict[str, float]]:

    print(f"generating {studies} studies x 10 instances ...", file=sys.stderr)
    recs = generate(work / "find-data", studies, series=2, per_series=5)
    node_store = work / "node"
    print("loading the node ...", file=sys.stderr)
    load_node_s = load_node(work / "find-data", node_store / "node")
    node = start_node(node_store, actions="")
    orthanc = start_orthanc(work / "orth")
    results: dict[str, dict[str, float]] = {"dicomnode": {}, "orthanc": {}}
    try:
        print("loading Orthanc ...", file=sys.stderr)
        results["orthanc"]["load, s"] = load_orthanc(work / "find-data", orthanc.port)
        results["dicomnode"]["load, s"] = load_node_s
        for name, keys in queries(recs):
            times: dict[str, list[float]] = {"dicomnode": [], "orthanc": []}
            counts: dict[str, int] = {}
            for _ in range(reps):
                for srv, label in ((node, "dicomnode"), (orthanc, "orthanc")):
                    ms, n = find_ms(srv.port, srv.aet, keys)
                    times[label].append(ms)
                    counts[label] = n
            for label in times:
                results[label][f"{name}, ms"] = statistics.median(times[label])
                results[label][f"{name}, matches"] = counts[label]
            print(f"  {name}: node {statistics.median(times['dicomnode']):.1f} ms ({counts['dicomnode']}), "
                  f"orthanc {statistics.median(times['orthanc']):.1f} ms ({counts['orthanc']})", file=sys.stderr)
    finally:
        node.stop()
        orthanc.stop()
    return results


