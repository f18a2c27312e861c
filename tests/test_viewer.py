"""The viewer and operator console in a real browser: Debian's Chromium driven by Playwright,
against a real node holding a phantom CT series (known HU and pixel spacing) and real files from
pydicom's corpus (an uncompressed CT, JPEG 2000, palette colour).

Screenshots of every page are written to artifacts/viewer/ (look at them). Every request the
pages make must go to the node: nothing from elsewhere.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from tests.support.datagen import pydicom_test_files, write_phantom_ct
from tests.support.node import Node
from tests.support.proc import ROOT, cli
from tests.support.toml import write_toml

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts" / "viewer"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("viewer")
    phantom, hu = write_phantom_ct(root / "phantom", 12)
    real = {p.name: p for p in pydicom_test_files()}
    picked = root / "real"
    picked.mkdir()
    for name in ("CT_small.dcm", "JPEG2000.dcm", "examples_palette.dcm"):
        shutil.copy(real[name], picked / name)
    return {"root": root, "phantom": phantom, "hu": hu, "real": picked}


@pytest.fixture(scope="module")
def node(corpus: dict[str, Any]) -> Iterator[Node]:
    storage = corpus["root"] / "archive"
    cli("import", "--storage", str(storage), str(corpus["root"] / "phantom"), str(corpus["real"]))
    n = Node(storage, {"DICOMNODE_MIN_FREE_MB": "0"}, web=True).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


class Page:
    """A tab on the node, recording console errors and every URL it asks for."""

    def __init__(self, browser: Any, base: str) -> None:
        # bypass_csp: Playwright's wait_for_function evaluates strings, which the pages' CSP forbids
        self.page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
        self.base = base
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def clean(self) -> None:
        assert not self.errors, self.errors
        foreign = [u for u in self.requests if not u.startswith(self.base) and not u.startswith(("blob:", "data:"))]
        assert not foreign, foreign

    def open_study(self, uid: str) -> None:
        self.page.goto(f"{self.base}/studies/{uid}")
        self.page.wait_for_function("() => window.dicomnodeViewer && window.dicomnodeViewer.viewports.length"
                                    " && window.dicomnodeViewer.viewports[0].drawn > 0", timeout=20000)

    def overlay(self, corner: str) -> str:
        return str(self.page.evaluate(f"() => window.dicomnodeViewer.viewports[0].ov.{corner}.textContent"))


def _base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _shown(page: Page) -> np.ndarray:
    """The active viewport's frame as the viewer paints it, before zoom and pan: (rows, cols, 4)."""
    got = page.evaluate("() => window.dicomnodeViewer.shownPixels(0)")
    return np.array(got["data"], dtype=np.uint8).reshape(got["height"], got["width"], 4)


def _converted(path: Path, out: Path, window: str | None = None) -> np.ndarray:
    """What `dicomnode convert` makes of the file: an 8-bit PNG (the same window when given)."""
    out.mkdir(parents=True, exist_ok=True)
    cli("convert", str(path), "--out", str(out), "--format", "png", "--8bit", *(["--window", window] if window else []))
    png = next(out.rglob("*.png"))
    return np.asarray(Image.open(png))


def test_study_list_search_by_name_date_and_modality(node: Node, browser: Any) -> None:
    page = Page(browser, _base(node))
    page.goto(page.base + "/")
    page.wait_for_selector("table.grid tbody tr")
    assert page.locator("table.grid tbody tr").count() == 4
    page.shot("list")

    def search(**fields: str) -> list[str]:
        page.get_by_role("button", name="Clear").click()
        page.wait_for_timeout(200)
        for key, value in fields.items():
            if key == "modality":
                page.select_option("#f-modality", value)
            else:
                page.fill(f"#f-{key}", value)
        page.click("button[type=submit]")
        page.wait_for_function("() => !document.getElementById('result-count').textContent.startsWith('Searching')")
        return page.locator("table.grid tbody tr td:first-child").all_inner_texts()

    assert search(name="phantom") == ["Viewer Phantom"]
    assert search(**{"from": "2024-01-01", "to": "2024-01-31"}) == ["Viewer Phantom"]
    found = search(modality="US")
    assert len(found) == 1 and found[0] != "Viewer Phantom"
    assert search(name="nobody-by-this-name") == []
    assert "No study matches" in page.inner_text("#result-count")
    # sortable: by patient ID, both ways
    search()
    page.click("th >> text=Patient ID")
    page.wait_for_timeout(400)
    ids = page.locator("table.grid tbody tr td:nth-child(2)").all_inner_texts()
    assert ids == sorted(ids, key=lambda s: (s == "", s))
    # keyboard: the first row's link opens the viewer
    page.locator("table.grid tbody tr a").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/studies/*")
    page.clean()


def test_viewer_pixels_match_convert(node: Node, browser: Any, corpus: dict[str, Any], tmp_path: Path) -> None:
    page = Page(browser, _base(node))
    cases = [("CT_small.dcm", None), ("CT_small.dcm", "40,400"), ("JPEG2000.dcm", None), ("examples_palette.dcm", None)]
    for name, window in cases:
        path = corpus["real"] / name
        page.open_study(_study_uid(path))
        if window:
            page.keyboard.press("3")  # CT abdomen: 40/400
            page.wait_for_timeout(200)
            assert "W 400 L 40" in page.overlay("br")
        shown = _shown(page)
        page.shot(f"viewer-{Path(name).stem}{'-' + window.replace(',', '-') if window else ''}")
        assert shown[..., :3].std() > 1, f"{name}: blank canvas"
        expected = _converted(path, tmp_path / f"{name}-{window}", window)
        if expected.ndim == 2:
            diff = np.abs(shown[..., 0].astype(int) - expected.astype(int))
        else:
            diff = np.abs(shown[..., :3].astype(int) - expected[..., :3].astype(int))
        assert diff.max() <= 1, f"{name} window {window}: {int(diff.max())} grey levels apart"
    page.clean()


def _drag(page: Page, a: tuple[float, float], b: tuple[float, float], steps: int = 8) -> None:
    """A drag between two image coordinates of viewport 0 (turned into page coordinates)."""
    box = page.locator(".vp canvas").first.bounding_box()
    pa = page.evaluate(f"() => window.dicomnodeViewer.toScreen(0, {a[0]}, {a[1]})")
    pb = page.evaluate(f"() => window.dicomnodeViewer.toScreen(0, {b[0]}, {b[1]})")
    page.mouse.move(box["x"] + pa["x"], box["y"] + pa["y"])
    page.mouse.down()
    page.mouse.move(box["x"] + pb["x"], box["y"] + pb["y"], steps=steps)
    page.mouse.up()


def test_window_drag_measurements_processing_scroll(node: Node, browser: Any, corpus: dict[str, Any]) -> None:
    page = Page(browser, _base(node))
    page.open_study(_study_uid(corpus["phantom"][0]))
    page.wait_for_function("() => window.dicomnodeViewer.loaded() >= 12", timeout=20000)
    assert "W 400 L 40" in page.overlay("br")
    # window/level by dragging
    _drag(page, (20, 20), (60, 40))
    page.wait_for_timeout(200)
    assert "W 400 L 40" not in page.overlay("br") and "W " in page.overlay("br")
    page.keyboard.press("0")  # back to the file's window
    # a distance across 60 pixels of 0.5 mm: 30 mm
    page.keyboard.press("l")
    _drag(page, (10.5, 20.5), (70.5, 20.5))
    # an ROI inside the soft-tissue square: its pixels' HU mean and SD
    page.keyboard.press("r")
    _drag(page, (40.2, 40.2), (55.8, 55.8))
    measured = page.evaluate("() => window.dicomnodeViewer.measurements()")
    length = next(m for m in measured if m["type"] == "length")
    assert abs(length["value"] - 30.0) < 0.2, length
    assert "mm" in length["text"]
    roi = next(m for m in measured if m["type"] == "rect")
    hu = corpus["hu"][40:56, 40:56]
    assert roi["stats"]["n"] == hu.size
    assert abs(roi["stats"]["mean"] - hu.mean()) < 1e-6 and abs(roi["stats"]["sd"] - hu.std()) < 1e-6
    assert abs(roi["stats"]["area"] - (55.8 - 40.2) ** 2 * 0.25) < 1.0  # mm²
    # an angle: one arm dragged to the vertex, then a click for the other arm
    page.keyboard.press("a")
    _drag(page, (20.5, 100.5), (60.5, 100.5))
    _drag(page, (60.5, 60.5), (60.5, 60.5), steps=1)
    angle = next(m for m in page.evaluate("() => window.dicomnodeViewer.measurements()") if m["type"] == "angle")
    assert abs(angle["value"] - 90.0) < 0.5, angle
    page.shot("viewer-measurements")
    # measurements stay with their image when scrolling away and back
    page.keyboard.press("ArrowDown")
    assert page.evaluate("() => window.dicomnodeViewer.viewports[0].pos") == 1
    page.keyboard.press("ArrowUp")
    assert len(page.evaluate("() => window.dicomnodeViewer.measurements()")) == 3

    # processing: CLAHE, then a threshold (an overlay with its area in mm²)
    def visible_hash() -> int:
        return int(page.evaluate("() => { const c = document.querySelector('.vp canvas'); "
                                 "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; "
                                 "let h = 0; for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) | 0; return h; }"))

    before = visible_hash()
    page.keyboard.press("g")
    page.select_option("#op", "clahe")
    page.get_by_role("button", name="Apply to the shown images").click()
    # the result is in when the viewport has its figures (none for CLAHE) and the panel says so
    page.wait_for_function("() => window.dicomnodeViewer.viewports[0].processing && "
                           "window.dicomnodeViewer.viewports[0].figures !== null")
    page.get_by_role("status").filter(has_text="Applied.").wait_for()
    page.wait_for_timeout(200)
    assert visible_hash() != before
    page.shot("viewer-clahe")
    # a result arriving while the user fills in the next operation leaves the form as they set it:
    # the gamma request goes out and the form is changed in one script turn, so its response can
    # only be handled after the change
    page.evaluate("""() => {
        const op = document.querySelector('#op');
        op.value = 'gamma';
        op.dispatchEvent(new Event('change'));
        document.querySelector('button[title="Apply to the shown images"]').click();
        op.value = 'threshold';
        op.dispatchEvent(new Event('change'));
        document.querySelector('input[name=value]').value = '300';
    }""")
    page.wait_for_function("() => (window.dicomnodeViewer.viewports[0].processing || {}).op === 'gamma' && "
                           "window.dicomnodeViewer.viewports[0].figures !== null")
    page.get_by_role("status").filter(has_text="Applied.").wait_for()
    assert page.input_value("#op") == "threshold" and page.input_value("input[name=value]") == "300"
    page.get_by_role("button", name="Apply to the shown images").click()
    page.wait_for_function("() => (window.dicomnodeViewer.viewports[0].figures || {}).unit === 'mm2'")
    figures = page.evaluate("() => window.dicomnodeViewer.viewports[0].figures")
    bone = int((corpus["hu"] >= 300).sum())
    assert figures["pixels"] == bone and abs(figures["area"] - bone * 0.25) < 0.01
    page.wait_for_timeout(300)
    page.shot("viewer-threshold")
    page.get_by_role("button", name="Back to the original image").click()
    assert page.evaluate("() => window.dicomnodeViewer.viewports[0].processing") is None
    page.keyboard.press("Escape")
    # scrolling reaches the last slice, with the wheel
    page.locator(".vp canvas").first.hover()
    for _ in range(15):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(30)
    page.wait_for_function("() => window.dicomnodeViewer.viewports[0].pos === 11")
    assert "Im 12/12" in page.overlay("bl")
    # 2x2 layout, then the tag browser
    page.click("button[aria-label='Layout 2 by 2']")
    page.keyboard.press("t")
    page.fill("input[type=search]", "PixelSpacing")
    page.wait_for_selector(".tags >> text=PixelSpacing")
    page.shot("viewer-tags")
    page.clean()


def test_console_pages(node: Node, browser: Any) -> None:
    page = Page(browser, _base(node))
    page.goto(page.base + "/status")
    page.wait_for_selector(".card")
    assert "ready" in page.inner_text(".card")
    page.shot("status")
    page.goto(page.base + "/jobs")
    page.wait_for_selector("table.grid tbody tr")
    assert "analyze" in page.inner_text("table.grid tbody")
    page.shot("jobs")
    page.clean()


def test_sign_in_when_auth_is_on(browser: Any, corpus: dict[str, Any], tmp_path: Path) -> None:
    from dicomnode.node.identity import hash_password

    conf = write_toml(tmp_path / "auth.toml", {"web": {"auth": "basic", "users": [f"alice:{hash_password('s3cret')}"]}})
    storage = tmp_path / "archive"
    cli("import", "--storage", str(storage), str(corpus["real"] / "CT_small.dcm"))
    n = Node(storage, {"DICOMNODE_MIN_FREE_MB": "0"}, ["--config", str(conf)], web=True).start()
    try:
        page = Page(browser, _base(n))
        page.goto(page.base + "/")
        page.wait_for_url("**/login?**")
        page.shot("login")
        page.fill("#user", "alice")
        page.fill("#password", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("[role=alert]:has-text('wrong')")
        page.fill("#password", "s3cret")
        page.click("button[type=submit]")
        page.wait_for_selector("table.grid tbody tr")
        assert page.locator("table.grid tbody tr").count() == 1
        # the 401s of the sign-in are the only console errors
        page.errors = [e for e in page.errors if "401" not in e]
        page.clean()
    finally:
        n.stop()


def test_processing_route_errors(node: Node, corpus: dict[str, Any]) -> None:
    """Bad requests to the processing route get a status and a reason, not a traceback."""
    import urllib.error
    import urllib.request

    ds = dcmread(corpus["phantom"][0], stop_before_pixels=True)
    url = (f"{_base(node)}/api/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}/frames/1/processed")
    for query, status in (("?op=nonsense", 400), ("?op=gamma&gamma=abc", 400), ("?op=clahe&window=1", 400)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + query)
        assert info.value.code == status and b"error" in info.value.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("/frames/1/", "/frames/9/") + "?op=equalize")
    assert info.value.code == 400
    with urllib.request.urlopen(url + "?op=equalize") as r:
        assert r.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(r.read())).size == (128, 128)


@pytest.mark.slow
def test_every_image_of_the_corpus_opens(browser: Any, tmp_path: Path) -> None:
    """Each of pydicom's image files in the viewer: drawn when `dicomnode convert` can render it,
    else a message saying why (never a blank viewport or a script error); cine runs through a
    multi-frame object."""
    files = [p for p in pydicom_test_files() if p.suffix in (".dcm", "") and p.parent.name != "dicomdirtests"]
    storage = tmp_path / "archive"
    cli("import", "--storage", str(storage), *map(str, files), check=False)
    n = Node(storage, {"DICOMNODE_MIN_FREE_MB": "0"}, web=True).start()
    try:
        import json
        import urllib.request

        base = _base(n)
        with urllib.request.urlopen(f"{base}/dicom-web/instances?includefield=00280010") as r:
            instances = [i for i in json.load(r) if (i.get("00280010") or {}).get("Value")]
        studies = sorted({i["0020000D"]["Value"][0] for i in instances})
        assert len(studies) >= 20
        page = Page(browser, base)
        drawn = 0
        for uid in studies:
            page.errors.clear()
            page.goto(f"{base}/studies/{uid}")
            page.wait_for_function("() => { const v = window.dicomnodeViewer && window.dicomnodeViewer.viewports[0];"
                                   " return v && (v.drawn > 0 || v.ov.note.textContent.startsWith('Cannot')); }",
                                   timeout=20000)
            note = page.overlay("note")
            if note.startswith("Cannot"):
                # only what the display pipeline cannot read either (a broken codestream, an invalid header)
                sop = page.evaluate("() => window.dicomnodeViewer.viewports[0].slice().sop")
                done = cli("convert", sop, "--storage", str(storage), "--out", str(tmp_path / "c" / sop),
                           "--format", "png", check=False)
                assert done.returncode != 0, f"{uid}: the viewer says {note!r} but convert renders it"
                continue
            drawn += 1
            assert not page.errors, (uid, page.errors)
            if page.evaluate("() => window.dicomnodeViewer.viewports[0].slices.length") > 5:
                page.keyboard.press("Space")
                page.wait_for_function("() => window.dicomnodeViewer.viewports[0].pos >= 3", timeout=10000)
                page.keyboard.press("Space")
        assert drawn >= len(studies) - 3
    finally:
        n.stop()
