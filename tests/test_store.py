"""C-STORE into the node with DCMTK's storescu: what arrives is what was sent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import CTImageStorage

from tests.support.datagen import pydicom_test_files, write_ct_series
from tests.support.node import storescu
from tests.support.proc import need, run

# storescu proposes only uncompressed syntaxes unless told; per file we add the one it needs.
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
}
MUST_COVER = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
}
# JPEG-LS near-lossless (.81) is missing: pydicom's files in it have no Study
# Instance UID, and the node rightly refuses them (test_bad_input).


def _candidates() -> list[tuple[Path, str]]:
    out = []
    for f in pydicom_test_files():
        try:
            ds = dcmread(f, stop_before_pixels=True)
            if "SOPClassUID" in ds and ds.file_meta.get("TransferSyntaxUID"):
                out.append((f, str(ds.file_meta.TransferSyntaxUID)))
        except Exception:
            continue
    return out


def _compared(tag: int) -> bool:
    return (tag >> 16) != 2 and (tag & 0xFFFF) != 0 and tag != 0xFFFCFFFC


def assert_same_object(original: Path, stored: Path) -> None:
    """Every element outside group 0002 equal; Pixel Data byte for byte.

    Group lengths (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC) are
    left out: storescu recomputes the one and drops the other while it
    encodes, before the node ever sees the data set.
    """
    a, b = dcmread(original), dcmread(stored)
    assert str(a.file_meta.TransferSyntaxUID) == str(b.file_meta.TransferSyntaxUID), original.name
    tags_a = {e.tag for e in a if _compared(e.tag)}
    tags_b = {e.tag for e in b if _compared(e.tag)}
    assert tags_a == tags_b, f"{original.name}: elements differ: {tags_a ^ tags_b}"
    for tag in tags_a:
        if tag == 0x7FE00010:
            assert a[tag].value == b[tag].value, f"{original.name}: Pixel Data differs"
        else:
            assert a[tag] == b[tag], f"{original.name}: {a[tag]} != {b[tag]}"


def test_echo(node) -> None:
    p = run([need("echoscu"), "-aec", node.aet, "127.0.0.1", str(node.port)])
    assert p.returncode == 0, p.stderr


def test_every_transfer_syntax_is_accepted(node) -> None:
    """Negotiation: CT Image Storage in each of pydicom's transfer syntaxes, one context each."""
    ae = AE(ae_title="PROBE")
    for ts in ALL_TRANSFER_SYNTAXES:
        ae.add_requested_context(CTImageStorage, [ts])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    try:
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == set(ALL_TRANSFER_SYNTAXES)


def test_pydicom_files_are_stored_exactly(make_node) -> None:
    """Every pydicom file storescu can send is archived unchanged.

    pydicom reuses SOP Instance UIDs across variants of one image (MR_small in
    a dozen transfer syntaxes), so the n-th file with a given UID goes to the
    n-th node: each node sees each UID once and keeps exactly what it got.
    """
    rounds: list[list[tuple[Path, str, str]]] = []
    count: dict[str, int] = {}
    for f, ts in _candidates():
        sop = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        k = count.get(sop, 0)
        count[sop] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append((f, ts, sop))

    stored_ts: set[str] = set()
    sent = 0
    for r, files in enumerate(rounds):
        node = make_node(f"round{r}")
        expected: dict[str, tuple[Path, str]] = {}
        for f, ts, sop in files:
            flags = ["-R"] + ([PROPOSE[ts]] if ts in PROPOSE else [])
            if storescu(node, f, extra=flags).returncode == 0:
                expected[sop] = (f, ts)
            # else storescu refused to read or encode the file itself (truncated,
            # or a syntax it cannot propose); checked below that nothing half-stored stays.
        listed = {row["SOPInstanceUID"]: row for row in json.loads(node.cli("ls", "instances", "--json").stdout)}
        assert set(listed) == set(expected), f"round {r}: archive differs from what storescu acknowledged"
        for sop, (f, ts) in expected.items():
            assert_same_object(f, Path(listed[sop]["path"]))
            stored_ts.add(ts)
        sent += len(expected)
        assert node.cli("check", "--json").returncode == 0
        node.stop()
    assert sent >= 100, f"only {sent} pydicom files went through storescu"
    assert MUST_COVER <= stored_ts, f"transfer syntaxes never stored: {MUST_COVER - stored_ts}"


def test_four_concurrent_associations(node, tmp_path: Path) -> None:
    dirs = []
    for i in range(4):
        d = tmp_path / f"batch{i}"
        write_ct_series(d, n=40, patient_id=f"P{i}", rows=64, cols=64)
        dirs.append(d)
    procs = [subprocess.Popen(["storescu", "-aec", node.aet, "+sd", "127.0.0.1", str(node.port), str(d)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in dirs]
    for p in procs:
        _out, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs
    st = json.loads(node.cli("stats", "--json").stdout)
    assert (st["patients"], st["studies"], st["instances"]) == (4, 4, 160)
    chk = node.cli("check", "--json")
    assert json.loads(chk.stdout)["consistent"] is True
