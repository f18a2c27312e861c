"""multipart/related bodies (RFC 2387, PS3.18 8.6): written part by part, read part by part.

Writing: the body starts with `--boundary CRLF`, parts are separated by
`CRLF --boundary CRLF`, and it ends with `CRLF --boundary-- CRLF`; each part
has its own Content-Type. Reading (STOW-RS) is python-multipart's streaming
parser: a part's bytes go straight to where the caller puts them, so a 1 GB
part never sits in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from python_multipart.multipart import MultipartParser, MultipartState

CHUNK = 1 << 20


def new_boundary() -> str:
    return f"dicomnode-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    ts = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"; boundary={boundary}{ts}'


def write(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """The body of (part Content-Type, part bytes) pairs; an empty iterable gives an empty multipart."""
    mark = boundary.encode()
    first = True
    for ctype, body in parts:
        yield (b"" if first else b"\r\n") + b"--" + mark + b"\r\nContent-Type: " + ctype.encode() + b"\r\n\r\n"
        first = False
        yield from body
    yield (b"" if first else b"\r\n") + b"--" + mark + b"--\r\n"


def file_chunks(f: BinaryIO, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A file's bytes (from `start`, `length` of them) in chunks."""
    f.seek(start)
    left = length
    while left is None or left > 0:
        chunk = f.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    sink: Any = None  # where the part's bytes went (the caller's object)
    size: int = 0


class Reader:
    """Feeds a multipart body to `open_part(headers) -> sink`, whose `write` gets the part's bytes.

    Finished parts are collected in `done` for the caller to take after each
    `feed` (the parser calls back synchronously).
    """

    def __init__(self, boundary: str, open_part: Callable[[dict[str, str]], Any]) -> None:
        self.open_part = open_part
        self.done: list[Part] = []
        self._part: Part | None = None
        self._field = b""
        self._value = b""
        self._headers: dict[str, str] = {}
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._on_field, "on_header_value": self._on_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end}, max_header_count=32)

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> None:
        self.parser.finalize()

    @property
    def complete(self) -> bool:
        """Whether the closing boundary has been read (a body cut off mid-part has not)."""
        return bool(self.parser.state == MultipartState.END)

    def _begin(self) -> None:
        self._headers = {}

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_done(self) -> None:
        self._part = Part(self._headers, self.open_part(self._headers))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            self._part.size += end - start
            if self._part.sink is not None:
                self._part.sink.write(data[start:end])

    def _end(self) -> None:
        if self._part is not None:
            self.done.append(self._part)
        self._part = None
