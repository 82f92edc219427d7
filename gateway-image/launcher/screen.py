"""The gateway's screen as a PNG, for the login dialog IBC does not handle (docs/deployment.md, troubleshooting).

With SCREENSHOTS=true the launcher starts Xvfb with `-fbdir SCREEN_DIR`: Xvfb then keeps its framebuffer in a
memory-mapped XWD file there, and `python -m launcher screenshot` turns it into a PNG on stdout. No VNC server, no
extra package, no port: the picture leaves the VM only through the operator's own IAP ssh session. The directory
belongs to the gateway user (0700), so the consumer cannot read the screen.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Literal

DEFAULT_SCREEN_DIR = "/dev/shm/screen"
_XWD_HEADER = struct.Struct(">25I")  # XWDFileHeader: 25 CARD32, big-endian
_ZPIXMAP = 2
_XWD_VERSION = 7


class ScreenError(RuntimeError):
    """No screen to read, or not one we understand; the message is the one line the operator sees."""


def xvfb_arguments(screen_dir: str) -> list[str]:
    return ["-fbdir", screen_dir]


def screenshot(screen_dir: str | Path, screen: int = 0) -> bytes:
    path = Path(screen_dir) / f"Xvfb_screen{screen}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScreenError(
            f"no framebuffer at {path}: start the container with SCREENSHOTS=true (Xvfb then writes it there)"
        ) from None
    except PermissionError:
        raise ScreenError(f"{path} is the gateway user's: run this as that user (docker exec -u ibgateway)") from None
    return xwd_to_png(data)


def xwd_to_png(data: bytes) -> bytes:
    """A 24/32-bit TrueColor ZPixmap XWD (what Xvfb writes) as an RGB PNG."""
    if len(data) < _XWD_HEADER.size:
        raise ScreenError("the framebuffer file is shorter than an XWD header")
    (header_size, version, pixmap_format, _depth, width, height, _xoffset, byte_order, _unit, _bit_order, _pad,
     bits_per_pixel, bytes_per_line, _visual, red_mask, green_mask, blue_mask, _bits_rgb, _cmap_entries, ncolors,
     *_window) = _XWD_HEADER.unpack_from(data)  # fmt: skip
    if version != _XWD_VERSION or pixmap_format != _ZPIXMAP or bits_per_pixel != 32:
        raise ScreenError(
            f"unsupported framebuffer (XWD version {version}, format {pixmap_format}, {bits_per_pixel} bpp): "
            "start Xvfb with a 24-bit screen (-screen 0 WxHx24)"
        )
    start = header_size + 12 * ncolors
    if len(data) < start + bytes_per_line * height:
        raise ScreenError("the framebuffer file is truncated")
    order: Literal["little", "big"] = "little" if byte_order == 0 else "big"
    shifts = [(mask, (mask & -mask).bit_length() - 1) for mask in (red_mask, green_mask, blue_mask)]
    rows = bytearray()
    for y in range(height):
        line = data[start + y * bytes_per_line : start + y * bytes_per_line + 4 * width]
        rows.append(0)  # PNG filter type: none
        if order == "little" and shifts == [(0xFF0000, 16), (0xFF00, 8), (0xFF, 0)]:
            # The common case (BGRX in memory): reorder bytes without a per-pixel loop.
            pixels = bytearray(3 * width)
            pixels[0::3], pixels[1::3], pixels[2::3] = line[2::4], line[1::4], line[0::4]
            rows += pixels
            continue
        for x in range(width):
            pixel = int.from_bytes(line[4 * x : 4 * x + 4], order)
            rows += bytes(((pixel & mask) >> shift) & 0xFF for mask, shift in shifts)
    return _png(width, height, bytes(rows))


def _png(width: int, height: int, raw_rows: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows, 6)) + chunk(b"IEND", b"")
    )
