"""A tiny PNG bar chart of tokens per day for ``usage`` (no plotting library needed)."""

from __future__ import annotations

import calendar
import struct
import zlib
from collections.abc import Sequence
from datetime import date

from core.usage import DayUsage

_BAR = (64, 120, 220)
_AXIS = (120, 120, 120)
_BACKGROUND = (255, 255, 255)


def _png(width: int, height: int, pixels: list[bytearray]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def usage_chart(days: Sequence[DayUsage], *, month: date, height: int = 120) -> bytes:
    """One bar per day of ``month`` (input + output tokens), scaled to the busiest day."""
    count = calendar.monthrange(month.year, month.month)[1]
    bar, gap, margin = 8, 3, 6
    width = margin * 2 + count * (bar + gap)
    totals = {d.day.day: d.input_tokens + d.output_tokens for d in days}
    peak = max(totals.values(), default=0) or 1
    pixels = [bytearray(bytes(_BACKGROUND) * width) for _ in range(height)]
    base = height - margin
    for x in range(margin, width - margin):
        pixels[base][x * 3 : x * 3 + 3] = bytes(_AXIS)
    for day, tokens in totals.items():
        top = base - max(1, round((base - margin) * tokens / peak))
        left = margin + (day - 1) * (bar + gap)
        for y in range(top, base):
            pixels[y][left * 3 : (left + bar) * 3] = bytes(_BAR) * bar
    return _png(width, height, pixels)
