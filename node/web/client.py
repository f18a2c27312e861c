"""This node as a DICOMweb client, for remotes that are DICOMweb endpoints ([remotes.NAME] url):
QIDO-RS for `dicomnode find`, STOW-RS for `dicomnode send`, through the dicomweb-client package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.errors import AssociationFailed, QRFailed
from dicomnode.node.dimse.scu import SendItem, SendReport, inspect

BATCH_BYTES = 64 << 20  # files sent per STOW-RS request, by size: a request is held in memory by the client


def _client(url: str) -> Any:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=url)


def find(url: str, level: str, ident: Dataset) -> Iterator[Dataset]:
    """QIDO-RS at a level: keys with values filter, empty keys are asked for."""
    from requests import RequestException

    filters, fields = {}, []
    for elem in ident:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") or not elem.keyword:
            continue
        value = elem.value
        if value in (None, "", []):
            fields.append(elem.keyword)
        else:
            filters[elem.keyword] = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    search = {"STUDY": "search_for_studies", "SERIES": "search_for_series", "IMAGE": "search_for_instances"}[level]
    try:
        found = getattr(_client(url), search)(search_filters=filters, fields=fields or None)
    except RequestException as exc:
        raise QRFailed("refused", f"{url}: {type(exc).__name__}: {exc}") from None
    for obj in found:
        yield Dataset.from_json(obj)


def send(url: str, paths: list[Path], progress: Callable[[SendItem], None] | None = None) -> SendReport:
    """STOW-RS the files in batches; each file's outcome from the server's answer."""
    from requests import HTTPError, RequestException

    report = SendReport([inspect(p) for p in paths])
    client = _client(url)
    todo = [i for i in report.items if not i.comment]
    for i in report.items:
        if i.comment and progress:
            progress(i)
    for batch in _batches(todo):
        try:
            answer = client.store_instances([dcmread(i.path) for i in batch])
        except HTTPError as exc:  # 409: nothing stored; the answer still says why
            answer = _answer_of(exc)
            if answer is None:
                raise AssociationFailed("refused", f"{url}: {exc}") from None
        except RequestException as exc:
            raise AssociationFailed("unreachable", f"{url}: {type(exc).__name__}: {exc}") from None
        stored = {str(x.ReferencedSOPInstanceUID) for x in answer.get("ReferencedSOPSequence", [])}
        failed = {str(x.ReferencedSOPInstanceUID): int(x.get("FailureReason", 0xC000))
                  for x in answer.get("FailedSOPSequence", [])}
        for item in batch:
            if item.sop_instance in stored:
                item.status = 0
            else:
                item.status = failed.get(item.sop_instance, 0x0110)
                item.comment = "refused by the server" if item.sop_instance in failed else "not in the server's answer"
            if progress:
                progress(item)
    return report


def _batches(items: list[SendItem]) -> Iterator[list[SendItem]]:
    batch: list[SendItem] = []
    size = 0
    for it in items:
        n = it.path.stat().st_size
        if batch and size + n > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(it)
        size += n
    if batch:
        yield batch


def _answer_of(exc: Exception) -> Dataset | None:
    response = getattr(exc, "response", None)
    try:
        return Dataset.from_json(response.json()) if response is not None and response.content else None
    except ValueError:
        return None
