"""`consumer report`: the snapshot table and the HTML page, rendered by headless Chromium and looked at."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from consumer.report import PALETTE, page, table

CHROMIUM = "chromium"  # Debian's package and binary name; `make test` installs it


def snapshots() -> list[dict[str, Any]]:
    """Five trading days: dummy gains then gives some back, testsignalgenerator loses, a new book appears."""
    out = []
    for n, (nlv, dummy, tsg) in enumerate(
        [
            (1_000_000, 0, 0),
            (1_004_000, 3_000, 1_000),
            (1_001_500, 2_500, -1_000),
            (998_000, 500, -2_500),
            (1_002_000, 4_000, -2_000),
        ]
    ):
        strategies = {
            "dummy": {"marketValue": 50_000.0, "realizedPnl": 100.0 * n, "unrealizedPnl": dummy - 100.0 * n,
                      "realizedPnlToDate": 100.0 * n, "grossExposure": 50_000.0 + 1_000 * n, "netExposure": 50_000.0},
            "testsignalgenerator": {"marketValue": -20_000.0, "realizedPnl": 0.0, "unrealizedPnl": float(tsg),
                                    "realizedPnlToDate": 0.0, "grossExposure": 20_000.0, "netExposure": -20_000.0},
        }  # fmt: skip
        out.append(
            {"date": f"2026-06-{15 + n:02d}", "baseCurrency": "USD", "netLiquidation": float(nlv), "cash": 900_000.0,
             "highWaterMark": 1_004_000.0 if n else 1_000_000.0, "strategies": strategies}
        )  # fmt: skip
    return out


def test_the_table_has_a_row_per_day_with_the_change_and_each_strategys_pnl() -> None:
    text = table(snapshots()).splitlines()
    assert len(text) == 2 + 5
    assert text[0].split()[:4] == ["date", "netLiq", "change", "highWater"]
    assert text[4].startswith("2026-06-17")
    assert "-2,500.00" in text[4]  # net liquidation's change that day
    assert "200.00/2,500.00" in text[4]  # dummy: the day's realized / P&L to date
    assert table([]) == "no snapshots (eod-check writes one per trading day)"


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA PNG, as Chromium writes them (no PIL here)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8, depth
    assert colour in (2, 6), colour
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for r in range(height):
        kind, line = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        previous = line
    if bpp == 4:  # drop alpha: colours are compared as RGB
        rows = [b"".join(row[i : i + 3] for i in range(0, len(row), 4)) for row in rows]
    return width, height, rows


def test_the_html_page_renders_its_plots_in_headless_chromium(tmp_path: Path) -> None:
    binary = shutil.which(CHROMIUM)
    if binary is None:
        pytest.fail(
            "chromium is not installed: `apt-get install -y chromium` (Debian package chromium; make test does it)"
        )
    document = page(snapshots(), "Daily P&L (paper)")
    assert "http://" not in document.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert "https://" not in document
    html_file, shot = tmp_path / "report.html", tmp_path / "report.png"
    html_file.write_text(document, encoding="utf-8")
    subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,900", html_file.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.exists()
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    colours = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    assert len(colours) > 20, f"a nearly blank screenshot: {len(colours)} colours"
    # The first two series' colours are drawn: the lines and legends are on the page, not just the background.
    for hex_colour in PALETTE[:2]:
        assert bytes.fromhex(hex_colour[1:]) in colours, hex_colour
