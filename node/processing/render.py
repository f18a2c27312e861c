"""Pictures for a screen: one frame (or a whole multi-frame object) as JPEG, PNG, GIF or MP4 bytes,
through the same display pipeline as `dicomnode convert` (node/processing/display.py), so a viewer
and a converted file show the same grey levels for the same window."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from PIL import Image

from dicomnode.errors import DisplayError
from dicomnode.node.processing import display
from dicomnode.node.processing.display import Window

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
THUMBNAIL_PX = 128


def frame_image(path: Path, index: int = 0, window: Window | None = None,
                viewport: tuple[int, int] | None = None) -> Image.Image:
    """Frame `index` (0-based) as an 8-bit picture, scaled to fit `viewport` (width, height) if given."""
    frame = next(display.frames(path, window, [index]))
    img = Image.fromarray(display.to_rgb8(frame) if frame.colour else display.to_grey(frame, 8))
    if viewport:
        w, h = viewport
        scale = min(w / img.width, h / img.height)
        if scale > 0 and abs(scale - 1) > 1e-6:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
    return img


def encode(img: Image.Image, media_type: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    kind = FORMATS[media_type]
    if kind == "JPEG":
        img.save(buf, format="JPEG", quality=max(1, min(quality, 100)))
    else:
        img.save(buf, format=kind, optimize=kind == "PNG" and img.width * img.height < 1 << 20)
    return buf.getvalue()


def rendered(path: Path, index: int, media_type: str, window: Window | None = None,
             viewport: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    return encode(frame_image(path, index, window, viewport), media_type, quality)


def thumbnail(path: Path, media_type: str = "image/jpeg", size: int = THUMBNAIL_PX) -> bytes:
    """The middle frame, its longer side `size` pixels at most."""
    middle = display.frame_count(display.header(path)) // 2
    img = frame_image(path, middle)
    img.thumbnail((size, size))
    return encode(img, media_type, 85)


def animation(path: Path, kind: str, window: Window | None = None, fps: float | None = None) -> Path:
    """A multi-frame object as an MP4 or GIF file in a temp folder (the caller streams and removes it)."""
    from dicomnode.node.processing.convert import write_video

    ds = display.header(path)
    if display.frame_count(ds) < 2:
        raise DisplayError("one frame: ask for image/jpeg or image/png")
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-render-"))
    return write_video(display.frames(path, window), folder / f"render.{kind}", fps or display.frame_rate(ds), kind)
