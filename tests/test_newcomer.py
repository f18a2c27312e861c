"""What a new operator tripped over (issue 20): each case failed before its fix.

Wrong or lost results, silent failures, and defaults that did not work as
written. The README's own examples are run by tests/test_readme.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.peers import start_storescp
from tests.support.proc import DICOMNODE, ROOT, cli, need, run


def j(p: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(p.stdout)


# -- 1. anonymize never overwrites an output -------------------------------------------------


def test_anonymize_keeps_every_input_that_shares_a_sop_instance_uid(tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "in", n=1, rows=8, cols=8)[0]
    twin = dcmread(src)
    twin.PatientName = "Other^Content"  # same SOP Instance UID, other bytes (a vendor's reuse, a copy edited)
    twin.save_as(tmp_path / "in" / "twin.dcm")
    out = tmp_path / "out"
    res = j(cli("anonymize", str(tmp_path / "in"), "-o", str(out), "--key-file", str(tmp_path / "k"), "--json"))
    assert res["summary"] == {"anonymized": 2, "failed": 0}
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 2 and {r["output"] for r in res["files"]} == {str(p) for p in written}
    assert any("written as" in r["comment"] for r in res["files"])
    again = j(cli("anonymize", str(src), "-o", str(out), "--key-file", str(tmp_path / "k"), "--json"))
    assert len(list(out.glob("*.dcm"))) == 3 and again["summary"]["anonymized"] == 1  # a re-run adds, never replaces


# -- 2. send: big endian files -----------------------------------------------------------------


def test_send_big_endian_as_it_is_or_converted(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    be = Path(get_testdata_file("MR_small_bigendian.dcm"))
    node = make_node()
    res = j(cli("send", node.peer, str(be), "--json"))
    assert res["summary"]["success"] == 1, res
    stored = Path(j(node.cli("ls", "instances", "--json"))[0]["path"])
    assert stored.read_bytes()[-1000:] == be.read_bytes()[-1000:]  # the node takes big endian: stored as sent
    dest = start_storescp(tmp_path / "implicit", aet="IMPLICIT", extra=["+xi"])  # implicit VR little endian only
    try:
        res = j(cli("send", f"IMPLICIT@127.0.0.1:{dest.port}", str(be), "--json"))
    finally:
        dest.stop()
    assert res["summary"]["success"] == 1, res
    got = dcmread(next(dest.folder.iterdir()))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert (got.pixel_array == dcmread(be).pixel_array).all()  # words swapped, not reinterpreted


# -- 3. one clear line per failure, never a traceback ---------------------------------------------


def _nested(depth: int) -> bytes:
    """Explicit VR little endian bytes of a VOI LUT Sequence nested `depth` deep (defined lengths).

    A sequence the de-identification profile keeps, so that it walks every level."""
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH2sHI", 0x0028, 0x3010, b"SQ", 0, len(item)) + item
    return inner


def before_pixel_data(path: Path, element: bytes) -> None:
    """Insert an element (after the last of group 0028 in these files) just before Pixel Data, in tag order."""
    data = path.read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[:at] + element + data[at:])


def test_bad_files_are_one_clear_line(tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0]
    (tmp_path / "in").mkdir()
    ds = dcmread(src)
    del ds.SOPClassUID
    ds.save_as(tmp_path / "in" / "noclass.dcm")
    shutil.copy(src, tmp_path / "in" / "deep.dcm")
    before_pixel_data(tmp_path / "in" / "deep.dcm", _nested(600))
    res = j(cli("anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--key-file",
                str(tmp_path / "k"), "--json", check=False))
    comments = {Path(r["path"]).name: r["comment"] for r in res["files"]}
    assert "no SOPClassUID" in comments["noclass.dcm"], comments
    assert "sequences nested more than 32 levels deep" in comments["deep.dcm"], comments
    assert not any("Error" in c or "Traceback" in c for c in comments.values()), comments


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(tmp_path: Path) -> None:
    # an error nothing handles: the index call under `stats` fails as a bug would
    code = ("import sys\nimport dicomnode.node.services as s\n"
            "def broken(*a, **k):\n    raise ZeroDivisionError('as a bug would')\n"
            "s.archive = broken\nfrom dicomnode.node.cli import main\nsys.argv = ['dicomnode', *sys.argv[1:]]\nmain()\n")
    plain = run([sys.executable, "-c", code, "stats", "--storage", str(tmp_path)], cwd=ROOT)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == "error: ZeroDivisionError: as a bug would", plain.stderr
    debug = run([sys.executable, "-c", code, "--debug", "stats", "--storage", str(tmp_path)], cwd=ROOT)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# -- 4. retired storage classes ---------------------------------------------------------------------


def test_retired_storage_classes_are_accepted_and_refusals_say_so(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = dcmread(write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound (retired)
    ds.save_as(tmp_path / "us.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6"  # nobody's class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".1"
    ds.save_as(tmp_path / "private.dcm")
    node = make_node()
    res = j(cli("send", node.peer, str(tmp_path / "us.dcm"), str(tmp_path / "private.dcm"), "--json", check=False))
    by = {Path(f["path"]).name: f for f in res["files"]}
    assert by["us.dcm"]["state"] == "success", by
    assert by["private.dcm"]["state"] == "failed"
    assert "does not accept" in by["private.dcm"]["comment"] and "transfer syntaxes" not in by["private.dcm"]["comment"]


# -- 5. read-only commands never create an archive ------------------------------------------------


def test_read_only_commands_need_an_archive_and_make_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run([*DICOMNODE, "ls", "studies"], cwd=empty)
    assert p.returncode == 1 and "no archive" in p.stderr and not any(empty.iterdir())
    for args in (["check"], ["stats"], ["jobs"], ["show", "1.2.3"], ["delete", "1.2.3"]):
        p = cli(*args, "--storage", str(tmp_path / "nonexistent"), check=False)
        assert p.returncode == 1 and "no archive" in p.stderr, (args, p.stderr)
    assert not (tmp_path / "nonexistent").exists()


# -- 6. unreadable inputs are failures ----------------------------------------------------------------


def test_unreadable_folders_are_failures(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    write_ct_series(locked / "inner", n=1, rows=8, cols=8)
    os.chmod(locked / "inner", 0o000)
    # root reads any folder: as root the commands run without the capabilities that allow it
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        for cmd in (["analyze", str(locked), "--json"], ["anonymize", str(locked), "-o", "/tmp/none", "--json"],
                    ["convert", str(locked), "-o", "/tmp/none", "--json"]):
            p = run([*prefix, *DICOMNODE, *cmd], cwd=ROOT)
            assert p.returncode == 1, (cmd, p.stdout[-500:], p.stderr[-500:])
            assert "inner" in p.stdout and "ermission denied" in p.stdout, (cmd, p.stdout[-1000:])
    finally:
        os.chmod(locked / "inner", 0o755)


# -- 7. serve: a storage problem is reported as one ----------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root")
def test_serve_on_read_only_storage_says_so(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        p = cli("serve", "--storage", str(ro), "--host", "127.0.0.1", "--port", "0", check=False, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert p.returncode == 1
    assert "cannot open the archive" in p.stderr and "listen" not in p.stderr, p.stderr


# -- 8. analyze: not DICOM at all --------------------------------------------------------------------


def test_analyze_says_not_dicom(tmp_path: Path) -> None:
    for extra in ([], ["--force"]):
        p = cli("analyze", str(ROOT / "README.md"), "--json", *extra, check=False)
        assert p.returncode == 1
        assert "NOT_DICOM" in [f["code"] for f in j(p)[0]["findings"]]
    readme = (ROOT / "README.md").read_text()
    for code in ("NOT_DICOM", "UNREADABLE_FILE", "DECODING_WARNING"):
        assert code in readme, f"{code} is not documented"


# -- 9. rejected associations: the reason in the log -------------------------------------------------


def test_rejections_are_logged_with_their_reason(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(env={"DICOMNODE_ALLOWED_CALLING": "FRIEND"})
    need("echoscu")
    run(["echoscu", "-aet", "FRIEND", "-aec", "WRONG", "127.0.0.1", str(node.port)])
    run(["echoscu", "-aet", "STRANGER", "-aec", node.aet, "127.0.0.1", str(node.port)])
    log = node.log()
    assert "called AE 'WRONG' is not ours (DICOMNODE)" in log, log[-2000:]
    assert "calling AE 'STRANGER' is not in allowed_calling" in log, log[-2000:]


# -- 12. move to this node by default; failure comments printed ----------------------------------------


def test_move_to_the_node_itself_and_failure_comments(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node()
    files = write_ct_series(tmp_path / "s", n=2, rows=8, cols=8)
    cli("send", node.peer, *map(str, files))
    study = str(dcmread(files[0]).StudyInstanceUID)
    ok = cli("move", node.peer, "-k", f"StudyInstanceUID={study}", "--json")
    assert j(ok)["completed"] == 2 and j(ok)["failed"] == 0
    bad = cli("move", node.peer, "--dest", "NOBODY", "-k", f"StudyInstanceUID={study}", check=False)
    assert bad.returncode == 5 and "0xA801" in bad.stderr and "move destination NOBODY unknown" in bad.stderr


# -- 13. library warnings stay off the terminal ---------------------------------------------------------


def test_pydicom_warnings_become_findings_and_comments(tmp_path: Path) -> None:
    ds = dcmread(write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)[0])
    ds.SpecificCharacterSet = "ISO_IR 999"  # no such character set: pydicom warns when decoding names
    ds.save_as(tmp_path / "odd.dcm")
    a = cli("analyze", str(tmp_path / "odd.dcm"), "--json", check=False)
    assert "Warning" not in a.stderr, a.stderr
    assert "DECODING_WARNING" in [f["code"] for f in j(a)[0]["findings"]]
    conv = cli("convert", str(tmp_path / "odd.dcm"), "-o", str(tmp_path / "out"), "--json")
    assert "Warning" not in conv.stderr, conv.stderr
    assert "ISO_IR 999" in j(conv)["files"][0]["comment"]


# -- 14. tables fit a terminal ------------------------------------------------------------------------


def test_uids_are_cut_in_the_middle_unless_wide(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "s", n=1, rows=8, cols=8)
    archive = tmp_path / "a"
    cli("import", str(files[0]), "--storage", str(archive))
    uid = str(dcmread(files[0]).StudyInstanceUID)
    env = {**os.environ, "COLUMNS": "80"}
    narrow = run([*DICOMNODE, "ls", "studies", "--storage", str(archive)], env=env, cwd=ROOT).stdout
    assert uid not in narrow and f"{uid[:12]}…{uid[-9:]}" in narrow, narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    wide = run([*DICOMNODE, "ls", "studies", "--wide", "--storage", str(archive)], env={**env, "COLUMNS": "300"},
               cwd=ROOT).stdout
    assert uid in wide


# -- 16. convert: cheap defaults, parallel ----------------------------------------------------------------


def test_convert_defaults_are_cheap_and_parallel_gives_the_same(tmp_path: Path) -> None:
    from tests.support.datagen import write_multiframe

    src = tmp_path / "in"
    write_ct_series(src, n=3, rows=16, cols=16)
    write_multiframe(src / "cine.dcm", frames=6, rows=32, cols=32, random=False)
    one = j(cli("convert", str(src), "-o", str(tmp_path / "one"), "--jobs", "1", "--json"))
    two = j(cli("convert", str(src), "-o", str(tmp_path / "two"), "--jobs", "2", "--json"))
    assert one["summary"] == two["summary"] == {"converted": 4, "failed": 0}
    names = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.*"))
    assert names == sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*.*"))
    assert any(n.endswith(".mp4") for n in names) and not any(n.endswith(".gif") for n in names)
