"""The explain page in a real browser: headless Chromium (Debian's ``chromium``, which ``.ci/run``
installs) renders it to a PNG that is not blank, and after its scripts run its DOM holds one
element per character per block, and hovering over a character fills the tooltip. Without
Chromium these tests fail rather than skip, so that CI cannot pass without having run them."""

import html.parser
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import play_text

from charlstm.config import ExplainConfig
from charlstm.insight.explain import explain_checkpoint

CHARS, CELLS = 3000, 6
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium(*args: str) -> subprocess.CompletedProcess:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        pytest.fail("headless Chromium is needed for this test: apt-get install -y chromium (.ci/run does)")
    command = [found, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def explained(shared_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    text = folder / "text.txt"
    text.write_text(play_text(CHARS, seed=5), encoding="utf-8")
    out = folder / "page.html"
    explain_checkpoint(shared_run, ExplainConfig(str(text), str(out), cells=CELLS))
    return out


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) as (H, W, C) uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        header = struct.unpack(">IIBBBBB", body) if kind == b"IHDR" else header
        idat += [body] if kind == b"IDAT" else []
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
    image, prev = np.zeros((height, width * channels), np.uint8), np.zeros(width * channels, np.int64)
    for y in range(height):
        image[y] = prev = _unfilter(int(rows[y, 0]), rows[y, 1:].astype(np.int64), prev, channels)
    return image.reshape(height, width, channels)


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """One row of PNG filter types 0-4 undone (line and prev (W * C,) int64)."""
    if kind == 0:
        return line
    if kind == 1:  # Sub: a running sum per channel
        return (line.reshape(-1, bpp).cumsum(axis=0) % 256).ravel()
    if kind == 2:  # Up
        return (line + prev) % 256
    out, up = [0] * len(line), prev.tolist()
    for i, x in enumerate(line.tolist()):
        a, b = (out[i - bpp] if i >= bpp else 0), up[i]
        c = up[i - bpp] if i >= bpp else 0
        if kind == 3:  # Average
            out[i] = (x + (a + b) // 2) % 256
        else:  # Paeth
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            out[i] = (x + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
    return np.array(out, dtype=np.int64)


def test_png_reader_undoes_every_filter(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3)).astype(np.int64)
    rows, prev = [], np.zeros(12, np.int64)
    for y, kind in enumerate([0, 1, 2, 3, 4]):
        rows.append(bytes([kind]) + bytes(_filter(kind, image[y].ravel(), prev, 3).astype(np.uint8).tolist()))
        prev = image[y].ravel()
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + b"\0\0\0\0"  # noqa: E731
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 5, 8, 2, 0, 0, 0))
    (tmp_path / "x.png").write_bytes(png + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), image)


def _filter(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG's filters, forwards, for the test of the reader."""
    left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
    p = left + prev - upleft
    pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
    predicted = [0 * row, left, prev, (left + prev) // 2, paeth][kind]
    return (row - predicted) % 256


@pytest.mark.browser
def test_page_renders_with_its_colours(explained, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1000,800", explained.as_uri())
    image = read_png(shot)[:, :, :3].astype(np.int64)  # (800, 1000, 3)
    assert image.shape[:2] == (800, 1000)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the page rendered (nearly) blank"
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    assert ((red > blue + 80) & (red > green + 80)).sum() > 500, "no red cells on screen"
    assert ((blue > red + 80) & (blue > green + 30)).sum() > 500, "no blue cells on screen"


class Dom(html.parser.HTMLParser):
    """Spans per block and the tooltip's text, from the DOM as Chromium dumps it."""

    def __init__(self):
        super().__init__()
        self.spans_per_block: list[int] = []
        self.tip, self.in_tip = "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "text":
            self.spans_per_block.append(0)
        elif tag == "span" and self.spans_per_block and (attrs.get("class") or "").startswith("q"):
            self.spans_per_block[-1] += 1
        self.in_tip = tag == "div" and attrs.get("id") == "tip"

    def handle_endtag(self, tag):
        self.in_tip = False

    def handle_data(self, data):
        if self.in_tip:
            self.tip += data


HOVER = """<script>
document.querySelectorAll(".text")[1].children[{index}]
  .dispatchEvent(new MouseEvent("mouseover", {{bubbles: true, clientX: 40, clientY: 40}}));
</script></body>"""


@pytest.mark.browser
def test_dom_holds_every_character_and_hover_shows_the_predictions(explained, tmp_path):
    index = 100
    hovered = tmp_path / "hovered.html"
    built = explained.read_text(encoding="utf-8")
    hovered.write_text(built.replace("</body>", HOVER.format(index=index)), encoding="utf-8")
    dom = Dom()
    dom.feed(chromium("--dump-dom", hovered.as_uri()).stdout)
    assert dom.spans_per_block == [CHARS] * CELLS
    data = json.loads(built.split("const D=", 1)[1].split(";</script>", 1)[0])
    first = data["top"][index * data["k"]]
    assert f"character {index}" in dom.tip and "likeliest next:" in dom.tip
    assert f"  {data['labels'][first]}  {data['prob'][index * data['k']] / 10:.1f}%" in dom.tip
    loss = float(re.search(r"loss (\d+\.\d\d) nats", dom.tip).group(1))
    assert loss == pytest.approx(data["loss"][index] / 1000, abs=0.0051)
