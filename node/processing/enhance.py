"""Image processing for the viewer: one frame, as shown, made easier to read (scikit-image).

The viewer asks for these through
`/api/studies/{study}/series/{series}/instances/{instance}/frames/{n}/processed`
(node/web/console.py). They run here, on the server, rather than in the
browser because scikit-image's CLAHE, non-local means, bilateral filter, Canny
and Otsu are maintained, tested implementations that a page would otherwise
have to re-implement; a 512² frame takes 5 to 60 ms here (non-local means:
about 0.5 s), fast enough for a button.

All operations but the threshold work on the frame as displayed (the same
modality LUT, window and photometric handling as `dicomnode convert`,
node/processing/display.py), so an equalized image is the shown image
equalized. The threshold works on modality values (HU for CT), because a
threshold that means "bone above 300 HU" must not move with the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.errors import DisplayError
from dicomnode.node.processing import display
from dicomnode.node.processing.display import Window

OPERATIONS = ("equalize", "clahe", "gamma", "denoise", "sharpen", "edges", "threshold")
DENOISERS = ("median", "gaussian", "nlmeans", "bilateral")
OVERLAY_RGBA = (255, 64, 64, 110)  # the threshold's region: translucent red over the image


class BadRequest(ValueError):
    """Parameters the operation cannot take, in words."""


@dataclass
class Result:
    """An 8-bit picture (grey (rows, cols) or RGB/RGBA (rows, cols, 3|4)) and figures about it."""

    image: np.ndarray
    figures: dict[str, Any] = field(default_factory=dict)


def process(path: Path, index: int, op: str, params: dict[str, str], window: Window | None = None) -> Result:
    """Frame `index` of the file with operation `op`; BadRequest or DisplayError when it cannot."""
    if op not in OPERATIONS:
        raise BadRequest(f"op: one of {', '.join(OPERATIONS)}")
    if op == "threshold":
        return _threshold(path, index, params)
    frame = next(display.frames(path, window, [index]))
    shown = (display.to_rgb8(frame) if frame.colour else display.to_grey(frame, 16)).astype(np.float64)
    shown /= 255.0 if frame.colour else 65535.0
    out = _apply(op, shown, params, channel_axis=-1 if frame.colour else None)
    return Result(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))


def _apply(op: str, img: np.ndarray, p: dict[str, str], channel_axis: int | None) -> np.ndarray:
    from skimage import exposure, feature, filters, restoration
    from skimage.color import rgb2gray
    from skimage.morphology import disk

    if op == "equalize":
        return np.asarray(exposure.equalize_hist(img))
    if op == "clahe":
        clip = _number(p, "clip", 0.01, 0.0001, 1.0)
        tiles = int(_number(p, "tiles", 8, 1, 64))
        kernel = (max(1, img.shape[0] // tiles), max(1, img.shape[1] // tiles))
        return np.asarray(exposure.equalize_adapthist(img, kernel_size=kernel, clip_limit=clip))
    if op == "gamma":
        return np.asarray(exposure.adjust_gamma(img, _number(p, "gamma", 1.0, 0.05, 10.0)))
    if op == "denoise":
        method = p.get("method", "median")
        if method == "median":
            size = int(_number(p, "radius", 1, 1, 10))
            fp = disk(size) if channel_axis is None else disk(size)[..., None]
            return np.asarray(filters.median(img, footprint=fp))
        if method == "gaussian":
            return np.asarray(filters.gaussian(img, sigma=_number(p, "sigma", 1.0, 0.1, 20.0),
                                               channel_axis=channel_axis))
        if method == "nlmeans":
            h = _number(p, "strength", 0.04, 0.001, 1.0)  # on the 0..1 scale of the shown image
            return np.asarray(restoration.denoise_nl_means(img, h=h, patch_size=5, patch_distance=6, fast_mode=True,
                                                           channel_axis=channel_axis))
        if method == "bilateral":
            return np.asarray(restoration.denoise_bilateral(img, sigma_color=_number(p, "sigma_color", 0.05, 0.001, 1),
                                                            sigma_spatial=_number(p, "sigma", 2.0, 0.1, 20.0),
                                                            channel_axis=channel_axis))
        raise BadRequest(f"method: one of {', '.join(DENOISERS)}")
    if op == "sharpen":
        return np.asarray(filters.unsharp_mask(img, radius=_number(p, "radius", 2.0, 0.1, 20.0),
                                               amount=_number(p, "amount", 1.0, 0.0, 10.0), channel_axis=channel_axis))
    # edges: on the luminance
    grey = rgb2gray(img) if channel_axis is not None else img
    method = p.get("method", "sobel")
    if method == "sobel":
        mag = np.asarray(filters.sobel(grey))
        top = float(mag.max())
        return mag / top if top > 0 else mag
    if method == "canny":
        return np.asarray(feature.canny(grey, sigma=_number(p, "sigma", 2.0, 0.1, 20.0)), dtype=np.float64)
    raise BadRequest("method: sobel or canny")


def _threshold(path: Path, index: int, p: dict[str, str]) -> Result:
    """The region at or above a threshold in modality units (Otsu's, or `value`), as a coloured
    overlay, with its area (mm² from the pixel spacing, else pixels)."""
    from skimage.filters import threshold_otsu

    ds, values = display.modality_values(path, index)
    if values.ndim == 3:  # colour: on the luminance, 0..255
        values = values[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if p.get("value", "").strip():
        level = _number(p, "value", 0.0, -1e9, 1e9)
        how = "manual"
    else:
        if float(values.min()) == float(values.max()):
            raise DisplayError("the frame has one value only: nothing to separate")
        level, how = float(threshold_otsu(values)), "otsu"
    mask = values >= level
    overlay = np.zeros((*mask.shape, 4), dtype=np.uint8)
    overlay[mask] = OVERLAY_RGBA
    pixels = int(mask.sum())
    spacing = display.pixel_spacing(ds, index)
    figures: dict[str, Any] = {"threshold": round(level, 3), "method": how, "pixels": pixels}
    if spacing:
        figures.update(area=round(pixels * spacing[0] * spacing[1], 2), unit="mm2", measured_at=spacing[2])
    else:
        figures.update(area=pixels, unit="px")
    return Result(overlay, figures)


def _number(p: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    text = p.get(name, "").strip()
    if not text:
        return default
    try:
        v = float(text)
    except ValueError:
        raise BadRequest(f"{name}: a number from {low:g} to {high:g}") from None
    if not (low <= v <= high):
        raise BadRequest(f"{name}: a number from {low:g} to {high:g}")
    return v
