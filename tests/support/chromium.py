"""Looking at an HTML page as a person would: headless Chromium (the Debian package
`chromium`), its DOM after loading and a screenshot, and a small PNG reader to check what the
screenshot shows.

Chromium is kept off the network: every host name resolves to nothing and every request goes
to a proxy on a closed loopback port, and its background services are off. A page drd writes
loads nothing anyway; this makes sure the browser does not either.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("chromium", "chromium-browser")
WINDOW = (1200, 1600)


def binary() -> str | None:
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


def require() -> str:
    found = binary()
    if found is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs "
            "it): the HTML reports cannot be rendered"
        )
    return found


def _run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [
        require(),
        "--headless",
        "--no-sandbox",  # as root (CI containers) Chromium refuses to start with its sandbox
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after the page loaded, serialised."""
    return _run(page, profile, "--dump-dom").stdout.decode()


def screenshot(page: Path, profile: Path, png: Path) -> Image:
    _run(page, profile, f"--screenshot={png}", "--hide-scrollbars")
    return read_png(png.read_bytes())


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    #: RGB rows
    rows: list[bytes]

    def pixels(self) -> list[tuple[int, int, int]]:
        return [
            (row[i], row[i + 1], row[i + 2]) for row in self.rows for i in range(0, len(row), 3)
        ]


def read_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), as RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        previous = line
        # Drop the alpha channel: a screenshot is opaque.
        rows.append(
            bytes(line) if channels == 3 else bytes(line[i] for i in range(stride) if i % 4 != 3)
        )
    return Image(width, height, rows)
