"""The viewer's speed in a real browser (Debian's Chromium, headless), measured with the page's
Performance API, against the goals of its issue:

- first image of a 500-image CT series (512x512, 16-bit) on screen after opening the study (< 1 s),
  and the whole series loaded;
- scrolling once loaded (>= 30 images/s): every slice in turn, one per animation frame, as the
  wheel does; also the cost of painting one slice (window applied to 16-bit values);
- window/level dragging: repaints per animation frame while the mouse moves (1.0 = the display's rate);
- the study list with 10,000 studies: a search as the page sees it (request, JSON, table), beside
  the same QIDO-RS request timed from Python (what the page adds).

Medians of `reps` runs; a fresh browser context (cold cache) for every viewer run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from scripts.benchmarks import find
from scripts.benchmarks.servers import start_node
from tests.support.datagen import write_phantom_ct
from tests.support.proc import cli

CHROMIUM = "/usr/bin/chromium"
SEARCHES = [  # (label, fields of the search form)
    ("name contains 'son'", {"name": "son"}),
    ("date range, one month", {"from": "2020-03-01", "to": "2020-03-31"}),
    ("modality MR", {"modality": "MR"}),
    ("accession, exact", {"accession": "ACC0004711"}),
    ("everything, newest first", {}),
]
QIDO = {"name": "PatientName=*son*", "from": "StudyDate=20200301-20200331", "modality": "ModalitiesInStudy=MR",
        "accession": "AccessionNumber=ACC0004711"}


def run(work: Path, studies: int = 10_000, slices: int = 500, reps: int = 3) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    print(f"  writing {slices} CT slices and {studies} studies ...", file=sys.stderr)
    write_phantom_ct(work / "ct", slices, rows=512, cols=512)
    find.generate(work / "list", studies, 1, 1)
    storage = work / "node" / "node"
    find.load_node(work / "list", storage)
    cli("import", "--storage", str(storage), str(work / "ct"))
    srv = start_node(work / "node", actions="", web=True)
    base = f"http://127.0.0.1:{srv.http_port}"
    out: dict[str, dict[str, float]] = {}
    try:
        study = _qido(base, "PatientID=PHANTOM")[0]["0020000D"]["Value"][0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-background-networking"])
            viewer: dict[str, list[float]] = {}
            for rep in range(reps):
                print(f"  viewer run {rep + 1}/{reps}", file=sys.stderr)
                for k, v in _viewer(browser, base, study, slices).items():
                    viewer.setdefault(k, []).append(v)
            out["viewer"] = {k: round(statistics.median(v), 2) for k, v in viewer.items()}
            print(f"  viewer: {out['viewer']}", file=sys.stderr)
            out["page"], out["qido"] = {}, {}
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
            page.goto(base + "/")
            page.wait_for_selector("table.grid tbody tr")
            for label, fields in SEARCHES:
                page_ms, api_ms = [], []
                for _ in range(reps + 2):
                    page_ms.append(_search(page, fields))
                    q = "&".join(QIDO[k] for k in fields if k in QIDO)
                    t0 = time.perf_counter()
                    _qido(base, f"{q}&includefield=SourceApplicationEntityTitle&orderby=-StudyDate&limit=50")
                    api_ms.append((time.perf_counter() - t0) * 1000)
                out["page"][label] = round(statistics.median(page_ms), 1)
                out["qido"][label] = round(statistics.median(api_ms), 1)
            browser.close()
    finally:
        srv.stop()
    return out


def _qido(base: str, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/dicom-web/studies?{query}") as r:
        body = r.read()
    return json.loads(body) if body else []


def _search(page: Any, fields: dict[str, str]) -> float:
    page.evaluate("() => { for (const i of document.querySelectorAll('form.search input, form.search select')) i.value = ''; }")
    for key, value in fields.items():
        if key == "modality":
            page.select_option("#f-modality", value)
        else:
            page.fill(f"#f-{key}", value)
    before = page.evaluate("() => performance.getEntriesByName('dicomnode:list-shown').length")
    page.click("form.search button[type=submit]")
    page.wait_for_function(f"() => performance.getEntriesByName('dicomnode:list-shown').length > {before}")
    return float(page.evaluate("() => performance.getEntriesByName('dicomnode:list-shown').at(-1).detail.ms"))


def _viewer(browser: Any, base: str, study: str, slices: int) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 720}, bypass_csp=True)
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(f"{base}/studies/{study}")
    page.wait_for_function("() => performance.getEntriesByName('dicomnode:first-image').length > 0", timeout=60000)
    first = float(page.evaluate("() => performance.getEntriesByName('dicomnode:first-image')[0].startTime"))
    page.wait_for_function(f"() => window.dicomnodeViewer.loaded() >= {slices}", timeout=300000, polling=100)
    loaded = time.perf_counter() - t0
    scroll = page.evaluate("""async () => {
        const v = window.dicomnodeViewer.viewports[0];
        const frame = () => new Promise((r) => requestAnimationFrame(r));
        v.go(0); await frame(); await frame();
        const t0 = performance.now(); const before = v.drawn;
        for (let i = 1; i < v.slices.length; i++) { v.go(i); await frame(); }
        await frame();
        const seconds = (performance.now() - t0) / 1000;
        let paint = 0;
        for (let i = 0; i < 50; i++) { const t = performance.now(); v.pos = i; v.render(); paint += performance.now() - t; }
        return { rate: (v.drawn - before) / seconds, paint: paint / 50, last: v.pos };
    }""")
    # window/level drag: repaints against animation frames while the mouse moves
    box = page.locator(".vp canvas").first.bounding_box()
    page.evaluate("""() => { window.__frames = 0; window.__moves = 0;
                     const f = () => { window.__frames++; window.__raf = requestAnimationFrame(f); };
                     window.__raf = requestAnimationFrame(f); window.__drawn0 = window.dicomnodeViewer.viewports[0].drawn;
                     document.querySelector('.vp canvas').addEventListener('pointermove', () => window.__moves++); }""")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    t1 = time.perf_counter()
    for i in range(120):
        page.mouse.move(x + (i % 40) * 3, y + (i % 30) * 2)
        page.wait_for_timeout(16)
    page.mouse.up()
    drag_s = time.perf_counter() - t1
    page.wait_for_timeout(50)
    drag = page.evaluate("() => { cancelAnimationFrame(window.__raf); return { frames: window.__frames, moves: window.__moves, "
                         "drawn: window.dicomnodeViewer.viewports[0].drawn - window.__drawn0 }; }")
    context.close()
    return {"first image on screen (ms)": first, "whole series loaded (s)": loaded,
            "scrolling, images/s": scroll["rate"], "painting one slice (ms)": scroll["paint"],
            # every move that arrives is painted by the next animation frame when this is 1.0 (moves
            # between two frames are painted once); the paint costs "painting one slice" of a 16.7 ms frame
            "W/L drag: mouse moves/s": drag["moves"] / drag_s,
            "W/L drag: repaints per mouse move": drag["drawn"] / max(1, drag["moves"]),
            "animation frames/s": drag["frames"] / drag_s}
