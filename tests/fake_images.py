"""Image files that lie about themselves, for the tests of what the readers refuse (no tests here)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (the data stays 1x1: a bomb-like header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)
