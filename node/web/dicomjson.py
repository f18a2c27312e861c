"""DICOM JSON (PS3.18 F.2): data sets as the web side sends them.

Each element keyed by its tag (8 upper-case hex digits) with its VR; values as
pydicom's `to_json_dict` writes them (person names as {"Alphabetic": ...},
numbers as JSON numbers, short binary as InlineBinary). Binary values longer
than `BULK_THRESHOLD` become a BulkDataURI: its path inside the object (tag,
item number, tag, ...) joined to the instance's URL, so a client fetches them
on demand (WADO-RS /bulkdata).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydicom.dataset import Dataset

BULK_THRESHOLD = 1024
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def to_json(ds: Dataset, bulk_uri: Callable[[str], str] | None = None, path: str = "") -> dict[str, Any]:
    """One data set as a DICOM JSON object; `bulk_uri(path)` names where a bulk value is fetched."""
    out: dict[str, Any] = {}
    for elem in ds:
        tag = f"{int(elem.tag):08X}"
        if elem.VR == "SQ":
            items = elem.value or []
            out[tag] = {"vr": "SQ", "Value": [to_json(item, bulk_uri, f"{path}{tag}/{i + 1}/")
                                              for i, item in enumerate(items)]} if items else {"vr": "SQ"}
            continue
        if elem.VR in BULK_VRS and bulk_uri is not None and _length(elem) > BULK_THRESHOLD:
            out[tag] = {"vr": elem.VR, "BulkDataURI": bulk_uri(path + tag)}
            continue
        try:
            out[tag] = elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62)
        except Exception:  # a value pydicom cannot render (malformed number...): the element, empty
            out[tag] = {"vr": elem.VR}
    return out


def _length(elem: Any) -> int:
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else 0


def stream_array(objects: Iterable[dict[str, Any]], batch: int = 64) -> Iterator[bytes]:
    """A JSON array, `batch` objects per chunk: a large answer is never held whole, and a server
    iterating this in a thread pays one hand-over per chunk rather than per object."""
    parts: list[bytes] = [b"["]
    first = True
    for obj in objects:
        parts.append((b"" if first else b",") + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
        first = False
        if len(parts) >= batch:
            yield b"".join(parts)
            parts = []
    parts.append(b"]")
    yield b"".join(parts)
