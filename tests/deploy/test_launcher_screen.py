"""`python -m launcher screenshot`: the gateway's screen as a PNG, read from a real Xvfb's framebuffer file."""

from __future__ import annotations

import random
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from launcher import screen

from tests.deploy.test_launcher_run import launcher_env
from tests.support import file_written, wait_for


def decoded(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB rows of a PNG written by launcher.screen (filter type 0 on every row)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(png):
        (length,) = struct.unpack_from(">I", png, at)
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack_from(">I", png, at + 8 + length)
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    width, height, depth, colour_type = struct.unpack_from(">IIBB", chunks[b"IHDR"])
    assert (depth, colour_type) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def xwd(pixels: list[list[int]], byte_order: int) -> bytes:
    """An XWD file as Xvfb writes one: 32 bits per pixel, masks 0xff0000/0xff00/0xff, two colormap entries."""
    height, width = len(pixels), len(pixels[0])
    name = b"screen\0\0"
    header_size, ncolors = 100 + len(name), 2
    header = struct.pack(
        ">25I", header_size, 7, 2, 24, width, height, 0, byte_order, 32, byte_order, 32, 32, 4 * width, 4,
        0xFF0000, 0xFF00, 0xFF, 8, 256, ncolors, width, height, 0, 0, 0,
    )  # fmt: skip
    order = "little" if byte_order == 0 else "big"
    image = b"".join(p.to_bytes(4, order) for row in pixels for p in row)
    return header + name + b"\0" * 12 * ncolors + image


@pytest.mark.parametrize("byte_order", [0, 1], ids=["LSBFirst", "MSBFirst"])
def test_xwd_pixels_become_the_same_rgb_in_the_png(byte_order: int) -> None:
    pixels = [[0xFF0000, 0x00FF00, 0x0000FF], [0x123456, 0xFFFFFF, 0x000000]]
    width, height, rows = decoded(screen.xwd_to_png(xwd(pixels, byte_order)))
    assert (width, height) == (3, 2)
    assert rows == [bytes.fromhex("ff000000ff000000ff"), bytes.fromhex("123456ffffff000000")]


def test_a_truncated_or_foreign_framebuffer_is_one_clear_error() -> None:
    whole = xwd([[1, 2], [3, 4]], 0)
    with pytest.raises(screen.ScreenError, match="truncated"):
        screen.xwd_to_png(whole[:-3])
    with pytest.raises(screen.ScreenError, match="unsupported framebuffer"):
        screen.xwd_to_png(whole[:4] + struct.pack(">I", 6) + whole[8:])


def test_screenshot_without_screenshots_enabled_says_how(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "screenshot"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "gateway-image"),
             "SCREEN_DIR": str(tmp_path)},
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().strip().splitlines() == [
        f"launcher screenshot: no framebuffer at {tmp_path}/Xvfb_screen0: start the container with SCREENSHOTS=true "
        "(Xvfb then writes it there)"
    ]


def test_the_launchers_xvfb_shows_its_screen_as_a_png(tmp_path: Path, shm_dir: Path) -> None:
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is missing: install Debian's xvfb package (make test does)"
    display = next(f":{n}" for n in random.sample(range(200, 600), 400) if not Path(f"/tmp/.X{n}-lock").exists())
    screen_dir = shm_dir / "screen"
    env = launcher_env(
        tmp_path, shm_dir, SCREENSHOTS="true", SCREEN_DIR=str(screen_dir), DISPLAY=display,
        XVFB_COMMAND=f"{xvfb} {display} -screen 0 320x200x24 -nolisten tcp -retro",  # -retro: the weave root
    )  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run"], env=env, stderr=subprocess.PIPE)
    try:
        wait_for(file_written(screen_dir / "Xvfb_screen0", proc), what="Xvfb's framebuffer file")
        wait_for(file_written(tmp_path / "consumer.json", proc), what="the consumer to start after Xvfb")
        assert oct(screen_dir.stat().st_mode & 0o777) == "0o700"

        def weave_shown() -> tuple[int, int] | None:
            """The screenshot's size once it shows the weave -retro draws on the root window (a real picture,
            not an empty buffer); Xvfb's framebuffer is black until the server has drawn it."""
            shot = subprocess.run(
                [sys.executable, "-m", "launcher", "screenshot"], env=env, capture_output=True, timeout=30
            )
            assert shot.returncode == 0, shot.stderr
            width, height, rows = decoded(shot.stdout)
            colours = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
            return (width, height) if {b"\x00\x00\x00", b"\xff\xff\xff"} <= colours else None

        size = wait_for(weave_shown, what="a screenshot showing Xvfb's black-and-white weave")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert size == (320, 200)
