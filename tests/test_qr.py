"""Query/Retrieve SCP with real peers: DCMTK findscu/movescu/getscu/storescp, and Orthanc for comparison.

Each C-FIND case is sent to the node and to Orthanc loaded with the same
files. The expected answer comes from the generated records. Where Orthanc
and the standard part ways, the case says how, and only the node is held to
the standard.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support import qrdata
from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.peers import start_orthanc, start_storescp, store_into
from tests.support.proc import cli, need, run
from tests.support.toml import remotes, write_toml

SAME = "same"


@dataclass
class Archive:
    node: Node
    orthanc_port: int
    records: list[qrdata.Record]
    tmp: Path

    def first(self, pred: Callable[[dict[str, str]], bool], key: str) -> str:
        return next(r.attrs[key] for r in self.records if pred(r.attrs))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Iterator[Archive]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("qr")
    records = qrdata.build(tmp / "files")
    node = Node(tmp / "archive", {"DICOMNODE_MIN_FREE_MB": "0"})
    cli("import", str(tmp / "files"), "--storage", str(node.storage))
    node.start()
    orthanc = start_orthanc(tmp / "orthanc")
    try:
        store_into(orthanc, [r.path for r in records])
        yield Archive(node, orthanc.port, records, tmp)
    finally:
        orthanc.stop()
        node.stop()


def findscu(port: int, aet: str, keys: list[str], model: str = "-S", calling: str = "FINDSCU",
            extra: list[str] | None = None) -> tuple[list[Dataset], str]:
    """The responses (as data sets, via findscu -X) and findscu's verbose log."""
    need("findscu")
    out = Path(tempfile.mkdtemp(prefix="rsp"))
    try:
        args = ["findscu", "-v", model, "-aet", calling, "-aec", aet, "-X", "-od", str(out), *(extra or []),
                "127.0.0.1", str(port)]
        for k in keys:
            args += ["-k", k]
        p = run(args, timeout=120)
        return [dcmread(f) for f in sorted(out.glob("rsp*.dcm"))], p.stdout + p.stderr
    finally:
        shutil.rmtree(out, ignore_errors=True)


def uids(responses: list[Dataset], key: str) -> set[str]:
    return {str(r.get(key, "")) for r in responses}


@dataclass
class Case:
    name: str
    keys: Callable[[Archive], list[str]]
    returned: str
    want: Callable[[dict[str, str]], bool]
    orthanc: str = SAME  # or why Orthanc answers differently
    model: str = "-S"


def study(pred: Callable[[dict[str, str]], bool]) -> Callable[[Archive], list[str]]:
    return lambda a: [a.first(pred, "StudyInstanceUID")]


CASES = [
    Case("single value", lambda a: ["QueryRetrieveLevel=STUDY", "PatientID=QR001"], "StudyInstanceUID",
         lambda r: r["PatientID"] == "QR001"),
    Case("universal", lambda a: ["QueryRetrieveLevel=STUDY", "PatientID"], "StudyInstanceUID", lambda r: True),
    Case("wildcard *, name in another case", lambda a: ["QueryRetrieveLevel=STUDY", "PatientName=doe*"],
         "StudyInstanceUID", lambda r: r["PatientID"] in ("QR002", "QR003")),
    Case("wildcard ?", lambda a: ["QueryRetrieveLevel=STUDY", "PatientName=DOE^JOH?"], "StudyInstanceUID",
         lambda r: r["PatientID"] == "QR003"),
    Case("accented name, UTF-8", lambda a: ["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                                            "PatientName=MÜLLER*"], "StudyInstanceUID",
         lambda r: r["PatientID"] == "QR001"),
    Case("accents are not folded away", lambda a: ["QueryRetrieveLevel=STUDY", "PatientName=MULLER*"],
         "StudyInstanceUID", lambda r: False),
    Case("SQL wildcards are literals", lambda a: ["QueryRetrieveLevel=STUDY", "StudyDescription=C_ T%"],
         "StudyInstanceUID", lambda r: False),
    Case("wildcard on a description", lambda a: ["QueryRetrieveLevel=STUDY", "StudyDescription=CT*"],
         "StudyInstanceUID", lambda r: r["StudyDescription"].startswith("CT")),
    Case("date range", lambda a: ["QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240228"], "StudyInstanceUID",
         lambda r: "20240101" <= r["StudyDate"] <= "20240228"),
    Case("open date range", lambda a: ["QueryRetrieveLevel=STUDY", "StudyDate=-20231231"], "StudyInstanceUID",
         lambda r: r["StudyDate"] <= "20231231"),
    Case("combined date and time range",
         lambda a: ["QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240102", "StudyTime=2300-0100"],
         "StudyInstanceUID", lambda r: r["PatientID"] == "QR002",
         orthanc="Orthanc matches date and time separately (no time lies within 23:00-01:00); PS3.4 C.2.2.2.5.1 "
                 "reads them as one range, 1 Jan 23:00 to 2 Jan 01:00"),
    Case("list of UIDs", lambda a: ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(
        sorted({r.attrs["StudyInstanceUID"] for r in a.records if r.attrs["PatientID"] in ("QR003", "QR005")}))],
        "StudyInstanceUID", lambda r: r["PatientID"] in ("QR003", "QR005")),
    Case("modalities in study", lambda a: ["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR"], "StudyInstanceUID",
         lambda r: r["StudyInstanceUID"] in _studies_with("MR")),
    Case("series of one modality in a study", lambda a: ["QueryRetrieveLevel=SERIES", "Modality=CT",
                                                         *("StudyInstanceUID=" + u for u in study(
                                                             lambda r: r["PatientID"] == "QR001")(a))],
         "SeriesInstanceUID", lambda r: r["PatientID"] == "QR001" and r["Modality"] == "CT"
         and r["StudyDate"] == "20230105"),
    Case("images of a series", lambda a: ["QueryRetrieveLevel=IMAGE",
                                          "SeriesInstanceUID=" + a.first(lambda r: r["SeriesDescription"] == "t1 sag",
                                                                         "SeriesInstanceUID")],
         "SOPInstanceUID", lambda r: r["SeriesDescription"] == "t1 sag"),
    Case("patient root, patient level", lambda a: ["QueryRetrieveLevel=PATIENT", "PatientSex=F"], "PatientID",
         lambda r: r["PatientSex"] == "F", model="-P"),
    Case("patient root, studies of a patient", lambda a: ["QueryRetrieveLevel=STUDY", "PatientID=QR005"],
         "StudyInstanceUID", lambda r: r["PatientID"] == "QR005", model="-P"),
    Case("a key the index does not hold", lambda a: ["QueryRetrieveLevel=IMAGE", "SliceThickness=5",
                                                     "StudyInstanceUID=" + a.first(lambda r: r["PatientID"] == "QR004",
                                                                                   "StudyInstanceUID")],
         "SOPInstanceUID", lambda r: r["PatientID"] == "QR004" and r["Modality"] == "CT"),
]

_MODALITY_STUDIES: dict[str, set[str]] = {}


def _studies_with(modality: str) -> set[str]:
    return _MODALITY_STUDIES[modality]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_find_matches_like_the_standard(archive: Archive, case: Case) -> None:
    for r in archive.records:
        _MODALITY_STUDIES.setdefault(r.attrs["Modality"], set()).add(r.attrs["StudyInstanceUID"])
    keys = case.keys(archive)
    if not any(k.startswith(case.returned) for k in keys):
        keys.append(case.returned)
    want = {r.attrs[case.returned] for r in archive.records if case.want(r.attrs)}
    got, log = findscu(archive.node.port, archive.node.aet, keys, case.model)
    assert "Final Find Response (Success)" in log, log[-2000:]
    assert uids(got, case.returned) == want, log[-3000:]
    assert len(got) == len(want)  # one response per matching entity
    theirs, olog = findscu(archive.orthanc_port, "ORTHANC", keys, case.model)
    if case.orthanc == SAME:
        assert uids(theirs, case.returned) == want, f"Orthanc disagrees:\n{olog[-2000:]}"
    else:
        print(f"{case.name}: Orthanc answers {len(theirs)} match(es), the standard {len(want)}: {case.orthanc}")


def test_find_fills_every_requested_key(archive: Archive) -> None:
    """Index, computed, header-sourced and sequence keys, in the requester's character set."""
    uid = archive.first(lambda r: r["PatientID"] == "QR001" and r["Modality"] == "MR", "StudyInstanceUID")
    got, log = findscu(archive.node.port, archive.node.aet, [
        "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}", "SpecificCharacterSet=ISO_IR 100", "PatientName",
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "NumberOfPatientRelatedStudies",
        "ReferencedStudySequence[0].ReferencedSOPInstanceUID", "SliceThickness", "InstanceAvailability",
        "RetrieveAETitle", "SeriesInstanceUID"])
    assert len(got) == 1, log
    r = got[0]
    mine = [x.attrs for x in archive.records if x.attrs["StudyInstanceUID"] == uid]
    assert r.SpecificCharacterSet == "ISO_IR 100"
    assert str(r.PatientName) == "Müller^Jürgen"  # decoded from Latin-1 by pydicom
    assert r.StudyDate == mine[0]["StudyDate"] and r.StudyTime == mine[0]["StudyTime"]
    assert list(r.ModalitiesInStudy) == ["MR"] if isinstance(r.ModalitiesInStudy, list) else r.ModalitiesInStudy == "MR"
    assert r.SOPClassesInStudy == qrdata.CLASSES["MR"]
    assert int(r.NumberOfStudyRelatedSeries) == 2 and int(r.NumberOfStudyRelatedInstances) == 4
    assert int(r.NumberOfPatientRelatedStudies) == 2
    item = r.ReferencedStudySequence[0]
    assert item.ReferencedSOPInstanceUID.startswith("1.2.3.") and "ReferencedSOPClassUID" not in item
    assert float(r.SliceThickness) == 1.5
    assert r.InstanceAvailability == "ONLINE" and r.RetrieveAETitle == archive.node.aet
    assert "SeriesInstanceUID" in r and not r.SeriesInstanceUID  # a key below the level: present, empty


def test_find_answers_alike_in_every_transfer_syntax(archive: Archive) -> None:
    """Implicit and Explicit VR Little Endian answers are encoded by node/dimse/wire.py, Big Endian
    ones by pydicom: the same values either way, non-ASCII names and sequences included."""
    keys = ["QueryRetrieveLevel=STUDY", "PatientID=QR001", "SpecificCharacterSet=ISO_IR 100", "PatientName",
            "StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
            "ReferencedStudySequence[0].ReferencedSOPInstanceUID", "SliceThickness"]
    answers = {}
    for syntax in ("-xi", "-xe", "-xb"):
        got, log = findscu(archive.node.port, archive.node.aet, keys, extra=[syntax])
        assert "Final Find Response (Success)" in log, log[-2000:]
        answers[syntax] = sorted((sorted((e.keyword, str(e.value)) for e in r if e.keyword) for r in got))
    assert answers["-xi"] and answers["-xi"] == answers["-xe"] == answers["-xb"]
    assert any(("PatientName", "Müller^Jürgen") in r for r in answers["-xi"])


def test_find_refuses_what_the_model_forbids(archive: Archive) -> None:
    _got, log = findscu(archive.node.port, archive.node.aet,
                        ["QueryRetrieveLevel=STUDY", "PatientName=doe*"], model="-P")
    assert "DataSetDoesNotMatchSOPClass" in log or "A900" in log
    _got, log = findscu(archive.node.port, archive.node.aet, ["QueryRetrieveLevel=PATIENT"], model="-S")
    assert "DataSetDoesNotMatchSOPClass" in log or "A900" in log
    assert "Traceback" not in archive.node.log()


def test_retrieve_identifiers_that_name_nothing_are_refused_cleanly(archive: Archive, tmp_path: Path) -> None:
    """A wildcard, a missing unique key, a non-unique key: 0xA900 with the reason, no sub-operation
    counted as failed, no data set (DCMTK's getscu cannot release after an unread one)."""
    need("getscu")
    pid = archive.first(lambda a: True, "PatientID")
    for keys in (["QueryRetrieveLevel=PATIENT", f"PatientID={pid[:2]}*"],
                 ["QueryRetrieveLevel=STUDY"],
                 ["QueryRetrieveLevel=PATIENT", f"PatientID={pid}", "PatientSex=F"]):
        p = run(["getscu", "-v", "-P", "-aec", archive.node.aet, "-od", str(tmp_path), "127.0.0.1",
                 str(archive.node.port), *[a for k in keys for a in ("-k", k)]], timeout=60, check=False)
        log = p.stdout + p.stderr
        assert "DataSetDoesNotMatchSOPClass" in log and "Failed Suboperations    : 0" in log, log
        assert "Release Failed" not in log and p.returncode == 0, log
    assert not list(tmp_path.iterdir())
    assert "a retrieve names values" in archive.node.log() and "Traceback" not in archive.node.log()


def test_find_cancel_stops_the_answer(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """600 matches: findscu cancels after 2; the node stops streaming (a race only a big answer makes fair)."""
    write_ct_series(tmp_path / "series", n=600, rows=4, cols=4)
    n = make_node("many", env={"DICOMNODE_WORKERS": "0"}, start=False)
    cli("import", str(tmp_path / "series"), "--storage", str(n.storage))
    n.start()
    got, log = findscu(n.port, n.aet, ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"], extra=["--cancel", "2"])
    print(f"{len(got)} responses before the cancel took effect")
    assert len(got) < 300
    assert "Cancel" in log
    assert "cancelled" in n.log()


def test_max_results_ends_a_huge_answer_cleanly(archive: Archive, make_node) -> None:  # type: ignore[no-untyped-def]
    n = make_node("limited", env={"DICOMNODE_MAX_RESULTS": "3"}, start=False)
    cli("import", str(archive.tmp / "files"), "--storage", str(n.storage))
    n.start()
    got, log = findscu(n.port, n.aet, ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"])
    assert len(got) == 3
    assert "OutOfResources" in log or "A700" in log


# -- retrieve ------------------------------------------------------------------------


def _config(path: Path, entries: dict[str, tuple[str, int, list[str]]], extra: dict | None = None) -> Path:
    return write_toml(path, {**(extra or {}), "remotes": remotes(entries)})


def _dataset_equal(a: Path, b: Path) -> bool:
    x, y = dcmread(a), dcmread(b)
    return x == y and x.PixelData == y.PixelData


def test_movescu_into_storescp(archive: Archive, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = start_storescp(tmp_path / "dest", aet="DEST")
    try:
        conf = _config(tmp_path / "node.toml", {"DEST": ("DEST", dest.port, ["store"])})
        n = make_node("mover", start=False, extra=["--config", str(conf)])
        cli("import", str(archive.tmp / "files"), "--storage", str(n.storage))
        n.start()
        uid = archive.first(lambda r: r["PatientID"] == "QR002", "StudyInstanceUID")
        p = run(["movescu", "-v", "-S", "-aec", n.aet, "-aem", "DEST", "127.0.0.1", str(n.port),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"], timeout=120)
        assert "Final Move Response (Success)" in p.stdout + p.stderr, p.stdout + p.stderr
        want = {r.attrs["SOPInstanceUID"]: r.path for r in archive.records if r.attrs["StudyInstanceUID"] == uid}
        got = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in dest.folder.iterdir()}
        assert set(got) == set(want)
        assert all(_dataset_equal(got[k], want[k]) for k in want)
        # by UID list at SERIES level, and an unknown destination
        series = sorted({r.attrs["SeriesInstanceUID"] for r in archive.records if r.attrs["PatientID"] == "QR005"})
        p = run(["movescu", "-v", "-S", "-aec", n.aet, "-aem", "DEST", "127.0.0.1", str(n.port), "-k",
                 "QueryRetrieveLevel=SERIES", "-k", "SeriesInstanceUID=" + "\\".join(series)], timeout=120)
        assert "Final Move Response (Success)" in p.stdout + p.stderr
        assert len(list(dest.folder.iterdir())) == len(want) + sum(
            1 for r in archive.records if r.attrs["PatientID"] == "QR005")
        p = run(["movescu", "-v", "-S", "-aec", n.aet, "-aem", "NOWHERE", "127.0.0.1", str(n.port),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"], timeout=120)
        assert "MoveDestinationUnknown" in p.stdout + p.stderr
        # a retrieve must name what it wants by unique keys
        p = run(["movescu", "-v", "-S", "-aec", n.aet, "-aem", "DEST", "127.0.0.1", str(n.port),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=doe*"], timeout=120)
        assert "Success" not in p.stdout.split("Final Move Response")[-1]
    finally:
        dest.stop()


def test_getscu_retrieves_and_decompresses_when_asked(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    need("getscu")
    import pydicom

    files = write_ct_series(tmp_path / "ct", n=3, rows=16, cols=16)
    jpeg = Path(pydicom.data.get_testdata_file("JPEG2000.dcm"))  # packaged locally with pydicom
    n = make_node("getter", start=False)
    cli("import", str(tmp_path / "ct"), str(jpeg), "--storage", str(n.storage))
    n.start()
    out = tmp_path / "got"
    out.mkdir()
    study = str(dcmread(files[0]).StudyInstanceUID)
    p = run(["getscu", "-v", "-S", "-aec", n.aet, "-od", str(out), "127.0.0.1", str(n.port),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"], timeout=120)
    assert "Received C-GET Response (Success)" in p.stdout + p.stderr, p.stdout + p.stderr
    got = sorted(out.iterdir())
    assert len(got) == 3
    by_uid = {str(dcmread(f).SOPInstanceUID): f for f in files}
    assert all(_dataset_equal(g, by_uid[str(dcmread(g).SOPInstanceUID)]) for g in got)
    # getscu accepts uncompressed syntaxes only: the JPEG 2000 object arrives decoded, same pixels
    j = dcmread(jpeg)
    p = run(["getscu", "-v", "-S", "-aec", n.aet, "-od", str(out), "127.0.0.1", str(n.port),
             "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={j.StudyInstanceUID}",
             "-k", f"SeriesInstanceUID={j.SeriesInstanceUID}", "-k", f"SOPInstanceUID={j.SOPInstanceUID}"],
            timeout=120)
    assert "Received C-GET Response (Success)" in p.stdout + p.stderr, p.stdout + p.stderr
    received = [f for f in out.iterdir() if str(dcmread(f).SOPInstanceUID) == str(j.SOPInstanceUID)]
    assert len(received) == 1
    r = dcmread(received[0])
    assert not r.file_meta.TransferSyntaxUID.is_compressed
    assert (r.pixel_array == j.pixel_array).all()


def test_peers_without_the_right_are_refused(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conf = _config(tmp_path / "node.toml", {"VIEWER": ("VIEWER", 104, ["find"])},
                   extra={"security": {"open_services": ["store"]}})
    n = make_node("strict", extra=["--config", str(conf)])
    files = write_ct_series(tmp_path / "ct", n=1, rows=8, cols=8)
    _got, log = findscu(n.port, n.aet, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], calling="STRANGER")
    # 0x0124 Refused: Not Authorized (PS3.7 C.5); DCMTK 3.6.7 prints it as "Unknown Status: 0x124"
    assert "Refused" in log or "0x124" in log, log
    got, log = findscu(n.port, n.aet, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], calling="VIEWER")
    assert "Final Find Response (Success)" in log
    p = run(["getscu", "-v", "-S", "-aet", "VIEWER", "-aec", n.aet, "-od", str(tmp_path), "127.0.0.1", str(n.port),
             "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3"], timeout=60)
    assert "Refused" in p.stdout + p.stderr or "0x124" in p.stdout + p.stderr, p.stdout + p.stderr
    from tests.support.node import storescu

    p = storescu(n, *files, calling="VIEWER")  # a listed peer without "store"
    assert p.returncode != 0 and "not allowed the store service" in n.log()
    assert json.loads(n.cli("stats", "--json").stdout)["instances"] == 0
    assert "Traceback" not in n.log()


@pytest.mark.slow
def test_move_500_with_failures_at_the_destination(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The destination (another dicomnode, duplicates rejected) already holds 50: 450 completed, 50 failed."""
    files = write_ct_series(tmp_path / "ct", n=500, rows=16, cols=16)
    dest = make_node("dest", env={"DICOMNODE_DUPLICATE_POLICY": "reject", "DICOMNODE_WORKERS": "0"}, start=False)
    dest.aet = "DEST"
    cli("import", *map(str, files[:50]), "--storage", str(dest.storage))
    dest.start()
    conf = _config(tmp_path / "node.toml", {"DEST": ("DEST", dest.port, ["store"])})
    src = make_node("src", start=False, extra=["--config", str(conf)], env={"DICOMNODE_WORKERS": "0"})
    cli("import", str(tmp_path / "ct"), "--storage", str(src.storage))
    src.start()
    study = str(dcmread(files[0]).StudyInstanceUID)
    # the counts and the failed list, read by pynetdicom as the requester (movescu does not print them)
    final, identifier = _move_with_pynetdicom(src, "DEST", study)
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (450, 50)
    assert final.Status == 0xB000
    assert set(identifier.FailedSOPInstanceUIDList) == {str(dcmread(f).SOPInstanceUID) for f in files[:50]}
    # again with movescu: now every sub-operation fails (all duplicates): 0xA702, unable to perform sub-operations
    p = run(["movescu", "-v", "-S", "-aec", src.aet, "-aem", "DEST", "127.0.0.1", str(src.port),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"], timeout=300)
    text = p.stdout + p.stderr
    assert "Final Move Response (Refused: OutOfResourcesSubOperations)" in text, text[-3000:]  # 0xA702
    stats = json.loads(dest.cli("stats", "--json").stdout)
    assert stats["instances"] == 500
    # movescu --cancel: the move stops early, and says so
    dest2 = make_node("dest2", env={"DICOMNODE_WORKERS": "0"}, start=False)
    dest2.aet = "DEST"
    dest2.start()
    conf.write_text(conf.read_text().replace(str(dest.port), str(dest2.port)))
    src.stop()
    src.start()
    p = run(["movescu", "-v", "-S", "--cancel", "5", "-aec", src.aet, "-aem", "DEST", "127.0.0.1", str(src.port),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"], timeout=300)
    assert "Cancel" in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]
    held = json.loads(dest2.cli("stats", "--json").stdout)["instances"]
    assert 5 <= held < 500



def _move_with_pynetdicom(node: Node, dest: str, study: str) -> tuple[Dataset, Dataset]:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    last = None
    for status, identifier in assoc.send_c_move(ident, dest, StudyRootQueryRetrieveInformationModelMove):
        last = (status, identifier)
    assoc.release()
    assert last is not None
    return last  # type: ignore[return-value]
