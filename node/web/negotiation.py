"""Accept headers as viewers write them (PS3.18 8.7): several media ranges, q values, quoted or
unquoted `type` and `transfer-syntax` parameters, `*/*` or no header at all."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r'\s*([^;,=\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?\s*')


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: `media_type` lower-cased, parameters unquoted."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        if self.media_type in ("*/*", media_type):
            return True
        major, _, minor = self.media_type.partition("/")
        return minor == "*" and media_type.startswith(major + "/")

    @property
    def part_type(self) -> str | None:
        """The `type` of a multipart/related range (the media type of its parts)."""
        t = self.params.get("type")
        return t.lower() if t else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first (q, then as written); `*/*` when there is none."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for n, part in enumerate(_split(header, ",")):
        pieces = _split(part, ";")
        if not pieces or not pieces[0].strip():
            continue
        params: dict[str, str] = {}
        for p in pieces[1:]:
            m = _TOKEN.fullmatch(p)
            if m and m.group(2) is not None:
                value = m.group(2).strip()
                if value.startswith('"') and value.endswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[m.group(1).lower()] = value
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            ranges.append((q, n, MediaRange(pieces[0].strip().lower(), params, q)))
    return [r for _q, _n, r in sorted(ranges, key=lambda x: (-x[0], x[1]))]


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes."""
    out, buf, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out
