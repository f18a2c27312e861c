"""From stored pixel values to what a viewer shows (PS3.3 C.11, PS3.14), one frame at a time.

decode (pydicom + pylibjpeg, GDCM as the fallback) -> Modality LUT (rescale in
float64, or the Modality LUT Sequence) -> VOI (window, VOI LUT, LINEAR /
LINEAR_EXACT / SIGMOID; else a percentile window) -> presentation (MONOCHROME1
inverted; palette and YBR to RGB). Frames come from pydicom's iter_pixels, so
memory holds one frame, whatever the object's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, iter_pixels, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.errors import DisplayError
from dicomnode.storage.archive.header import looks_like_dicom

AUTO_SAMPLE = 1 << 14
AUTO_PERCENTILES = (0.5, 99.5)


@dataclass
class Window:
    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.3)


class Frame:
    """One display-ready frame: `pixels` is (rows, cols) float in 0..1 for grey, (rows, cols, 3)
    uint8 for colour.

    A grey frame of integer stored values is kept as those values and a lookup
    table (0..1 for each value from `offset` up), as viewers do: the chain of
    LUTs runs once per distinct value rather than once per pixel, and to_grey()
    indexes an 8/16-bit table. `pixels` is made from them only when asked for.
    """

    def __init__(self, index: int, pixels: np.ndarray | None, colour: bool, stored: np.ndarray | None = None,
                 lut: np.ndarray | None = None, offset: int = 0) -> None:
        self.index = index
        self.colour = colour
        self._pixels = pixels
        self.stored, self.lut, self.offset = stored, lut, offset

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            assert self.lut is not None
            self._pixels = self.lookup(self.lut)
        return self._pixels

    def _lut_index(self) -> np.ndarray:
        assert self.stored is not None
        if self.offset == 0 and self.stored.dtype.kind == "u":
            return self.stored
        idx = self.stored.astype(np.int64)
        idx -= self.offset
        return idx

    def lookup(self, table: np.ndarray) -> np.ndarray:
        """`table` (one entry per LUT entry) applied to the stored values.

        16-bit values index a 65536-entry table through their unsigned view, so a
        signed or offset frame costs no index array of its own.
        """
        assert self.stored is not None
        if self.stored.dtype.itemsize == 2 and self.stored.dtype.kind in "iu":
            full = np.zeros(1 << 16, dtype=table.dtype)
            values = np.arange(self.offset, self.offset + len(table))
            full[values.astype(self.stored.dtype).view(np.uint16)] = table
            return full[self.stored.view(np.uint16)]
        return table[self._lut_index()]


def header(path: Path) -> Dataset:
    """Part 10 files, and bare data sets as old modalities wrote them; not any file pydicom can force."""
    try:
        if not looks_like_dicom(path):
            raise DisplayError("not a DICOM file (no 'DICM' prefix, and no data set starting with a low group)")
        return dcmread(path, stop_before_pixels=True, force=True)
    except DisplayError:
        raise
    except Exception as exc:
        raise DisplayError(f"cannot read the header: {type(exc).__name__}: {exc}") from exc


def frame_count(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def frame_rate(ds: Dataset, default: float = 10.0) -> float:
    """FrameTime (ms), CineRate, RecommendedDisplayFrameRate, else the default."""
    for kw, convert in (("FrameTime", lambda v: 1000.0 / v), ("CineRate", float),
                        ("RecommendedDisplayFrameRate", float)):
        try:
            v = float(ds.get(kw) or 0)
            if v > 0:
                rate = convert(v)
                if 0.1 <= rate <= 240:
                    return rate
        except (TypeError, ValueError, ZeroDivisionError):
            continue
    return default


def has_pixel_data(path: Path) -> bool:
    """Seeks past everything else; bulk values stay on disk (defer_size)."""
    try:
        return "PixelData" in dcmread(path, specific_tags=["PixelData"], force=True, defer_size=64)
    except Exception as exc:
        raise DisplayError(f"cannot read the file: {type(exc).__name__}: {exc}") from exc


def frames(path: Path, window: Window | None = None, indices: list[int] | None = None) -> Iterator[Frame]:
    """Display-ready frames of a file; DisplayError when no decoder can read it."""
    ds = header(path)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    for i, arr in decoded(path, ds, indices):
        yield _display(arr, ds, photometric, window, i)


def decoded(path: Path, ds: Dataset, indices: list[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, stored values) of the frames, colour as RGB: pydicom's decoders, then the fallbacks
    of _iter; DisplayError when none can read the pixel data."""
    if not has_pixel_data(path):
        raise DisplayError("no Pixel Data (not an image)")
    produced = False
    last_error: Exception | None = None
    for plugin in ("", "gdcm", "frame-by-index", "whole-dataset"):
        try:
            for i, arr in zip(indices or range(frame_count(ds)), _iter(path, plugin, indices)):
                produced = True
                yield i, arr
            return
        except DisplayError:
            raise
        except Exception as exc:  # a decoder that cannot: try the next one, unless it already gave frames
            if produced:
                raise DisplayError(f"decoding stopped part-way: {type(exc).__name__}: {exc}") from exc
            last_error = exc
    ts = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
    name = getattr(ts, "name", str(ts))
    raise DisplayError(f"no decoder can read this pixel data ({name}): "
                       f"{type(last_error).__name__}: {last_error}")


def modality_values(path: Path, index: int) -> tuple[Dataset, np.ndarray]:
    """The header and frame `index` in modality units (HU for CT): the Modality LUT applied, as the
    display chain applies it; colour frames as they are (RGB)."""
    ds = header(path)
    _, arr = next(decoded(path, ds, [index]))
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return ds, apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return ds, arr
    return ds, np.asarray(apply_modality_lut(arr, frame_dataset(ds, index)), dtype=np.float64)


def frame_dataset(ds: Dataset, index: int) -> Dataset:
    """`ds`, or for an enhanced multi-frame object whose rescale and window live in functional
    groups (PS3.3 C.7.6.16: Pixel Value Transformation, Frame VOI LUT), a copy with the frame's
    values at the top level, where pydicom's LUT functions look for them."""
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return ds
    found: dict[str, object] = {}
    for groups in (_item(ds, "SharedFunctionalGroupsSequence", 0), _item(ds, "PerFrameFunctionalGroupsSequence", index)):
        for seq, keywords in (("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
                              ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction"))):
            item = _item(groups, seq, 0) if groups is not None else None
            for kw in keywords:
                if item is not None and kw in item and kw not in ds:
                    found[kw] = item[kw].value  # per-frame values, read second, win over shared ones
    if not found:
        return ds
    out = Dataset()
    out.update({elem.tag: elem for elem in ds if elem.tag < 0x52000000})  # top level, without the big groups
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for kw, v in found.items():
        setattr(out, kw, v)
    return out


def pixel_spacing(ds: Dataset, index: int = 0) -> tuple[float, float, str] | None:
    """(row spacing, column spacing, where) in mm: Pixel Spacing of the frame (the functional
    groups of an enhanced object, else the data set), where = "patient"; else Imager Pixel Spacing,
    where = "detector" (measured at the detector plane, not in the patient: PS3.3 10.7.1.3).
    None when the object says neither."""
    def pair(value: object) -> tuple[float, float] | None:
        try:
            r, c = (float(v) for v in value)  # type: ignore[attr-defined]
            return (r, c) if r > 0 and c > 0 else None
        except (TypeError, ValueError):
            return None

    for groups in (_item(ds, "PerFrameFunctionalGroupsSequence", index), _item(ds, "SharedFunctionalGroupsSequence", 0)):
        measures = _item(groups, "PixelMeasuresSequence", 0) if groups is not None else None
        found = pair(measures.get("PixelSpacing")) if measures is not None else None
        if found:
            return (*found, "patient")
    for keyword, where in (("PixelSpacing", "patient"), ("ImagerPixelSpacing", "detector")):
        found = pair(ds.get(keyword))
        if found:
            return (*found, where)
    return None


def _item(ds: Dataset, keyword: str, index: int) -> Dataset | None:
    try:
        return ds[keyword].value[index]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _iter(path: Path, plugin: str, indices: list[int] | None) -> Iterator[np.ndarray]:
    """pydicom's streaming decoder; GDCM's; pydicom's one-frame-at-a-time path, whose post-processing
    copes with J2K sign mismatches that trip the streaming one; last, the whole data set as parsed
    (files whose header pydicom had to repair, e.g. implicit VR under an explicit transfer syntax)."""
    if plugin == "whole-dataset":  # a header pydicom had to repair: decode from the parsed data set
        ds = dcmread(path, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set: its encoding is its syntax
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        return iter_pixels(ds, indices=indices)
    if plugin == "frame-by-index":
        n = frame_count(header(path))
        return (pixel_array(path, index=i) for i in (indices if indices is not None else range(n)))
    return iter_pixels(path, indices=indices, decoding_plugin=plugin)


def _display(arr: np.ndarray, ds: Dataset, photometric: str, window: Window | None, index: int) -> Frame:
    ds = frame_dataset(ds, index)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return Frame(index, _to_uint8(rgb, _lut_bits(ds)), True)
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (iter_pixels converts YBR to RGB and handles planes)
        return Frame(index, _to_uint8(arr, int(ds.get("BitsStored") or 8)), True)
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < arr.size:  # fewer distinct values possible than pixels: a lookup table
            domain = np.arange(lo, hi + 1, dtype=np.int64)
            flat = arr.reshape(-1)
            sample = flat[::max(1, flat.size // AUTO_SAMPLE)].astype(np.int64) - lo
            lut = _grey(np.asarray(apply_modality_lut(domain, ds), dtype=np.float64), ds, photometric, window,
                        sample)
            return Frame(index, None, False, arr, lut, lo)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)  # no second copy when already float
    return Frame(index, _grey(values, ds, photometric, window), False)


def _grey(values: np.ndarray, ds: Dataset, photometric: str, window: Window | None,
          sample: np.ndarray | None = None) -> np.ndarray:
    """Modality values to 0..1 as shown; `sample` (indices into values) stands for the frame's pixels
    where values is a lookup table's domain."""
    grey = _voi(values, ds, window, sample)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def _voi(values: np.ndarray, ds: Dataset, window: Window | None, sample: np.ndarray | None = None) -> np.ndarray:
    """VOI to 0..1: an explicit window, the VOI LUT Sequence, the first window, else a percentile window."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if window is not None:
        return window_function(values, window.center, window.width, window.function.upper())
    if "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
            data = np.asarray(item.LUTData, dtype=np.float64)
            lo, hi = float(data.min()), float(data.max())
            if hi > lo:
                return np.clip((out - lo) / (hi - lo), 0.0, 1.0)
        except Exception:
            pass  # a malformed VOI LUT: the window, or the automatic one
    first = first_window(ds)
    if first is not None:
        return window_function(values, first.center, first.width, function)
    return auto_window(values, None if sample is None else values[sample])


def first_window(ds: Dataset) -> Window | None:
    try:
        c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
        if c is None or w is None:
            return None
        c = float(c[0] if isinstance(c, (list, MultiValue)) else c)
        w = float(w[0] if isinstance(w, (list, MultiValue)) else w)
    except (TypeError, ValueError, IndexError):
        return None
    return Window(c, w) if w > 0 else None


def window_function(x: np.ndarray, c: float, w: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 and C.11.2.1.3, scaled to 0..1."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-9)))
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / max(w, 1e-9) + 0.5, 0.0, 1.0)
    w = max(w, 1.0)
    if w == 1.0:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def auto_window(values: np.ndarray, sample: np.ndarray | None = None) -> np.ndarray:
    """No VOI in the data set: the 0.5th to 99.5th percentile, robust to a few extreme pixels.

    The percentiles of a large frame come from an even sample of ~16k of its
    pixels (every n-th; `sample` when the caller took it): the same window to
    within a grey level or two, at a fraction of the cost of partitioning every pixel.
    """
    if not values.size:
        return values.astype(np.float64)
    if sample is None:
        flat = values.reshape(-1)
        sample = flat[::max(1, flat.size // AUTO_SAMPLE)]
    lo, hi = (float(v) for v in np.percentile(sample, AUTO_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            return np.zeros_like(values, dtype=np.float64)
    out = np.subtract(values, lo, dtype=np.float64)
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    shift = max(bits - 8, 0)
    return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _lut_bits(ds: Dataset) -> int:
    try:
        return int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception:
        return 16


def to_grey(frame: Frame, bits: int) -> np.ndarray:
    """A grey frame as uint16 (0..65535) or uint8; a colour frame as it is."""
    if frame.colour:
        return frame.pixels
    top, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
    if frame.lut is not None:
        return frame.lookup(np.rint(frame.lut * top).astype(dtype))
    return np.rint(frame.pixels * top).astype(dtype)


def to_rgb8(frame: Frame) -> np.ndarray:
    if frame.colour:
        return frame.pixels
    g = to_grey(frame, 8)
    return np.stack([g, g, g], axis=-1)
