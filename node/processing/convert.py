"""Files people can open without a DICOM viewer: PNG, MP4, GIF, and the metadata as text and JSON.

Pixels go through node/display.py frame by frame and straight into the
encoder (Pillow for PNG, PyAV/FFmpeg for H.264 MP4 and GIF), so a 1 GB cine
loop needs the memory of a few frames. Every output is written to a temp
name and renamed into place (storage/archive/durable.py: atomic_file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from dicomnode.node.processing import display
from dicomnode.node.processing.display import DisplayError, Frame, Window
from dicomnode.storage.archive.durable import atomic_file

if TYPE_CHECKING:
    import av

FORMATS = ("png", "mp4", "gif", "txt", "json")
THUMBNAIL_PX = 256
BULK_BYTES = 1024  # longer binary values are summarised in the text dump and left out of the JSON


@dataclass
class Options:
    formats: frozenset[str] = frozenset(FORMATS)
    bits: int = 16  # grey PNG depth: 16 or 8
    fps: float | None = None  # None: from the data set
    frame: int | None = None  # 1-based: that frame alone, as PNG
    window: Window | None = None


@dataclass
class Outputs:
    files: list[Path] = field(default_factory=list)
    frames: int = 0
    notes: list[str] = field(default_factory=list)  # why an output was not made


def convert_file(path: Path, out_dir: Path, stem: str, opts: Options) -> Outputs:
    """Make the requested outputs of one file; DisplayError only when nothing could be made."""
    out = Outputs()
    ds = display.header(path)
    if "txt" in opts.formats:
        out.files.append(write_text(ds, path, out_dir / f"{stem}.txt"))
    if "json" in opts.formats:
        out.files.append(write_json(ds, out_dir / f"{stem}.json"))
    pictures = opts.formats & {"png", "mp4", "gif"}
    if not pictures:
        return out
    if not display.has_pixel_data(path):  # SR, KO, PR, ...: their metadata is the whole of them
        if not out.files:
            raise DisplayError("no Pixel Data (not an image)")
        return out
    n = display.frame_count(ds)
    try:
        if opts.frame is not None:
            if not 1 <= opts.frame <= n:
                raise DisplayError(f"--frame {opts.frame}: the object has {n} frame(s)")
            out.files.append(write_png(next(display.frames(path, opts.window, [opts.frame - 1])),
                                       out_dir / f"{stem}_frame{opts.frame}.png", opts.bits))
        elif n == 1:
            if "png" in pictures:
                out.files.append(write_png(next(display.frames(path, opts.window)), out_dir / f"{stem}.png",
                                           opts.bits))
        else:
            fps = opts.fps or display.frame_rate(ds)
            if "mp4" in pictures:
                out.files.append(write_video(display.frames(path, opts.window), out_dir / f"{stem}.mp4", fps, "mp4"))
            if "gif" in pictures:
                out.files.append(write_video(display.frames(path, opts.window), out_dir / f"{stem}.gif", fps, "gif"))
            out.frames = n
    except DisplayError as exc:
        if not out.files:
            raise
        out.notes.append(str(exc))
    out.frames = out.frames or (1 if any(f.suffix == ".png" for f in out.files) else 0)
    return out


# -- pictures ---------------------------------------------------------------------


def write_png(frame: Frame, dst: Path, bits: int = 16) -> Path:
    arr = display.to_grey(frame, bits)
    img = Image.fromarray(arr, mode="RGB") if frame.colour else Image.fromarray(arr)
    with atomic_file(dst) as tmp:
        img.save(tmp, format="PNG", optimize=bits == 8 or frame.colour)
    return dst


def thumbnail(path: Path, dst: Path, size: int = THUMBNAIL_PX) -> Path:
    """The middle frame, 8-bit, its longer side `size` pixels."""
    ds = display.header(path)
    middle = display.frame_count(ds) // 2
    frame = next(display.frames(path, None, [middle]))
    img = Image.fromarray(display.to_rgb8(frame) if frame.colour else display.to_grey(frame, 8))
    img.thumbnail((size, size))
    with atomic_file(dst) as tmp:
        img.save(tmp, format="PNG", optimize=True)
    return dst


def _even(rgb: np.ndarray) -> np.ndarray:
    """H.264 in 4:2:0 needs even sides: repeat the last row / column."""
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(rgb)


def write_video(frames: Iterator[Frame], dst: Path, fps: float, kind: str) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere) or GIF (a palette per frame), frame by frame."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with atomic_file(dst) as tmp, av.open(str(tmp), "w", format="mp4" if kind == "mp4" else "gif") as container:
        stream = None
        for frame in frames:
            rgb = _even(display.to_rgb8(frame)) if kind == "mp4" else np.ascontiguousarray(display.to_rgb8(frame))
            if stream is None:
                stream = container.add_stream("libx264" if kind == "mp4" else "gif", rate=rate)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "yuv420p" if kind == "mp4" else "pal8"
                if kind == "mp4":
                    stream.options = {"crf": "18", "preset": "veryfast"}  # on-arrival speed over a few % of size
            vf = (av.VideoFrame.from_ndarray(rgb, format="rgb24") if kind == "mp4"
                  else _pal8(rgb, frame.colour))
            for packet in stream.encode(vf):
                container.mux(packet)
        if stream is None:
            raise DisplayError("no frames to encode")
        for packet in stream.encode(None):
            container.mux(packet)
    return dst


def _pal8(rgb: np.ndarray, colour: bool) -> av.VideoFrame:
    """A GIF frame with its own optimised palette (grey frames: the 256 greys)."""
    import av

    if colour:
        img = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT)
        pal = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        index = np.asarray(img, dtype=np.uint8)
    else:
        pal = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        index = np.ascontiguousarray(rgb[..., 0])
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255
    argb[: len(pal), 1:] = pal[:256]
    # PyAV takes the palette as (256, 4) ARGB and swaps the bytes for FFmpeg itself
    return av.VideoFrame.from_ndarray((index, argb), format="pal8")  # type: ignore[arg-type]  # pal8: (index, palette)


# -- metadata ---------------------------------------------------------------------


def write_text(ds: Dataset, source: Path, dst: Path) -> Path:
    """Every element, one per line like dcmdump: tag, VR, name, value; bulk data summarised."""
    lines = [f"# {source.name}", "# File Meta Information"]
    if hasattr(ds, "file_meta"):
        lines += _dump(ds.file_meta, 0)
    lines.append("# Data Set")
    lines += _dump(ds, 0)
    # the Pixel Data element as read, value deferred: its declared length without reading it
    px = dcmread(source, force=True, defer_size=64).get_item(0x7FE00010, keep_deferred=True)
    if px is not None and not isinstance(px, Dataset):
        lines.append(f"(7FE0,0010) {px.VR} Pixel Data  <{_length(px)} bytes of pixel data>")
    with atomic_file(dst) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def _length(el: DataElement | RawDataElement) -> str:
    """The length as read from the file (RawDataElement, deferred values), else unknown."""
    length = getattr(el, "length", None)
    if length is None:
        return "unknown"
    return "undefined-length" if length == 0xFFFFFFFF else str(length)


def _dump(ds: Dataset, depth: int) -> list[str]:
    out = []
    pad = "  " * depth
    for el in ds:
        tag = f"({el.tag.group:04X},{el.tag.element:04X})"
        name = el.name
        if el.VR == "SQ":
            out.append(f"{pad}{tag} SQ {name}  ({len(el.value)} item(s))")
            for i, item in enumerate(el.value, 1):
                out.append(f"{pad}  > item {i}")
                out += _dump(item, depth + 2)
            continue
        out.append(f"{pad}{tag} {el.VR} {name}  {_value_text(el)}")
    return out


def _value_text(el: DataElement) -> str:
    try:
        v = el.value
    except Exception as exc:
        return f"<unreadable: {exc}>"
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>" if len(v) > 32 else v.hex(" ")
    text = str(v) if not isinstance(v, (list, tuple)) and type(v).__name__ != "MultiValue" else "\\".join(
        str(x) for x in v)
    return f"[{text[:256]}{'...' if len(text) > 256 else ''}]"


def write_json(ds: Dataset, dst: Path) -> Path:
    """The DICOM JSON model (PS3.18 F) of the header; bulk data left out."""
    data = _json_dict(ds)
    _drop_bulk(data)
    with atomic_file(dst) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return dst


def _json_dict(ds: Dataset) -> dict[str, Any]:
    """Element by element when the whole fails: a malformed value (IS "1A") loses only itself."""
    def one(d: Dataset) -> dict[str, Any]:
        return d.to_json_dict(bulk_data_threshold=BULK_BYTES, bulk_data_element_handler=lambda _el: "")

    try:
        return one(ds)
    except Exception:
        out: dict[str, Any] = {}
        for el in ds:
            single = Dataset()
            try:
                single[el.tag] = el
                out.update(one(single))
            except Exception:
                continue
        return out


def _drop_bulk(data: dict[str, Any]) -> None:
    for tag in list(data):
        el = data[tag]
        if "BulkDataURI" in el:
            del data[tag]
        elif el.get("vr") == "SQ":
            for item in el.get("Value", []):
                _drop_bulk(item)
