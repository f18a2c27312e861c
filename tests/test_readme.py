"""Every command in the README's shell blocks, run as written against a running node.

The README is the first thing a new operator follows: an example that does not
work as written is a defect. Placeholders are filled in (DIR: a folder of real
files; 1.2.3: a study the archive holds; 11112: the node's port; out: a folder),
every command must exit 0, and each one's output is checked for what it promises.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.proc import ROOT, need, run

SKIP = ("scripts/",)  # scripts/run is test_scripts_run_serves below; scripts/test is this suite itself


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line)
    return lines


def test_readme_has_the_two_setup_commands_and_examples() -> None:
    commands = readme_commands()
    assert any(c.startswith("scripts/run") for c in commands) and any(c.startswith("scripts/test") for c in commands)
    assert len([c for c in commands if not c.startswith(SKIP)]) >= 6


def test_every_readme_command_works(tmp_path: Path) -> None:
    for tool in ("dcmsend", "findscu", "getscu"):
        need(tool)
    folder = tmp_path / "DIR"
    written = write_ct_series(folder, n=3, rows=32, cols=32, patient_name="Doe^Jane")
    for name in ("JPEG2000.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"):  # compressed, big endian, plain
        shutil.copy(get_testdata_file(name), folder / name)
    study = str(dcmread(written[0], stop_before_pixels=True).StudyInstanceUID)
    node = Node(tmp_path / "data", {"DICOMNODE_MIN_FREE_MB": "0"})  # ./data of the commands' folder
    node.start()
    try:
        for line in readme_commands():
            if line.startswith(SKIP):
                continue
            for command in line.split(" && "):
                argv = [_fill(a, node.port, folder, study, tmp_path) for a in shlex.split(command, comments=True)]
                p = run(argv, timeout=300, cwd=tmp_path)
                out = p.stdout + p.stderr
                assert p.returncode == 0, f"{line}\n{out[-3000:]}"
                _check(argv, out, study, tmp_path)
    finally:
        node.stop()


def _fill(arg: str, port: int, folder: Path, study: str, tmp: Path) -> str:
    if arg.startswith(".venv/"):
        return str(ROOT / arg)
    if arg == "DIR":
        return str(folder)
    if arg == "out":
        return str(tmp / "out")
    return arg.replace("11112", str(port)).replace("=1.2.3", f"={study}")


def _check(argv: list[str], out: str, study: str, tmp: Path) -> None:
    tool = Path(argv[0]).name
    if tool == "dicomnode" and argv[1] == "send":
        assert "6 sent" in out, out
    elif tool == "dicomnode" and argv[1] == "ls":
        assert study[:12] in out, out  # shown, cut in the middle when the terminal is narrow
    elif tool == "findscu":
        assert "Find Response" in out and study in out, out
    elif tool == "getscu":
        got = {str(dcmread(f).StudyInstanceUID) for f in (tmp / "out").iterdir()}
        assert got == {study}, got
    elif tool == "dicomnode" and argv[1] == "move":
        assert "3 completed, 0 failed" in out, out


def test_scripts_run_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """scripts/run sets up (quick when done) and holds the terminal running the node until SIGTERM."""
    proc = subprocess.Popen([str(ROOT / "scripts" / "run"), "--storage", str(tmp_path / "data"), "--host",
                             "127.0.0.1", "--port", "0", "--http-port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.search(r"dicomnode listening on 127\.0\.0\.1:\d+ as DICOMNODE", line), line
        web = proc.stdout.readline()
        assert re.search(r"dicomnode web on http://127\.0\.0\.1:\d+/dicom-web", web), web
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_systemd_unit_runs_the_documented_command() -> None:
    unit = (ROOT / "config" / "dicomnode.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start and re.search(r"\.venv/bin/dicomnode serve --config \S+/config/node\.toml", start.group(1))
    assert re.search(r"^Restart=on-failure$", unit, re.M) and re.search(r"^KillSignal=SIGTERM$", unit, re.M)
