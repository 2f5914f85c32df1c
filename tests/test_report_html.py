"""The HTML report in a real browser (headless Chromium): self-contained, table and plots drawn, fits a phone.

Needs the `chromium` binary (Debian: `apt-get install -y chromium`). Without it these tests skip, except under
CI=true, where a missing browser is a failure: CI must not pass by testing nothing.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.records import load_records
from bench.report.html import render_html
from bench.report.write import write_reports

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"


class Elements(HTMLParser):
    """Every start tag as (tag, attributes, the text up to the next tag)."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    shutil.copytree(FIXTURES, folder, dirs_exist_ok=True)
    write_reports(folder)
    return folder / "report.html"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not on PATH; CI must install it (apt-get install -y chromium)")
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    return path


def browse(chromium: str, page: Path, tmp: Path, *args: str) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000", *args, page.as_uri()]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def layout(chromium: str, report: Path, tmp: Path, width: int) -> dict[str, str]:
    """Open a copy of the report in an iframe `width` pixels wide and read layout facts back from it.

    The copy gets a script that posts the page's scroll width and each image's decoded width to the parent, which
    writes them into its DOM for --dump-dom to carry out. An iframe, because headless Chromium will not make its
    window narrower than 500 px. The report itself has no script; the probe exists only here."""
    probe = """<script>window.addEventListener("load", () => parent.postMessage({
      innerWidth: window.innerWidth,
      scrollWidth: document.documentElement.scrollWidth,
      images: Array.from(document.images).map(i => (i.complete ? i.naturalWidth : -1)).join(","),
    }, "*"));</script></body>"""
    (tmp / "probe.html").write_text(report.read_text().replace("</body>", probe))
    wrapper = tmp / "wrapper.html"
    wrapper.write_text(f"""<!doctype html><html><body>
<iframe src="probe.html" style="width:{width}px;height:900px;border:0"></iframe>
<script>window.addEventListener("message", e => Object.assign(document.body.dataset, e.data));</script>
</body></html>""")
    body = Elements(browse(chromium, wrapper, tmp, "--dump-dom", f"--window-size={width + 100},1000")).find("body")[0]
    assert body.get("data-inner-width") == str(width), body
    return body


def screenshot(chromium: str, report: Path, tmp: Path, width: int, height: int) -> np.ndarray:
    png = tmp / f"shot-{width}.png"
    browse(chromium, report, tmp, f"--screenshot={png}", f"--window-size={width},{height}")
    img = Image.open(png).convert("RGB")
    assert img.size == (width, height)
    return np.asarray(img).astype(int)


def pixels_near(img: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=2) <= tol).sum())


def test_html_is_one_self_contained_file(report):
    html = report.read_text()
    els = Elements(html)
    assert not els.find("script") and not els.find("link") and not els.find("iframe")
    for _, attrs in els.tags:
        for key in ("src", "href", "srcset", "action", "poster"):
            assert not attrs.get(key) or attrs[key].startswith(("data:", "#")), (key, attrs[key][:80])
    assert "://" not in html and "url(" not in html and "@import" not in html
    # Nothing inside the plots points outside either (namespace declarations name, never fetch).
    for img in els.find("img"):
        svg = base64.b64decode(img["src"].split(",", 1)[1]).decode()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert not re.search(r'(?:xlink:)?href="(?!#)', svg)


def test_html_renders_identically_twice():
    records = load_records(FIXTURES)
    assert render_html(records) == render_html(records)


def test_browser_dom_has_the_table_and_the_plots(chromium, report, tmp_path):
    els = Elements(browse(chromium, report, tmp_path, "--dump-dom", "--window-size=1280,900"))
    assert len(els.find("table", "summary")) == 1
    assert len([t for t, _ in els.tags if t == "tr"]) >= 7  # the summary alone: a header and six runs
    assert len(els.find("tr", "failed")) == 1
    assert len(els.find("td", "best")) == 6  # prompt_tuning's five costs and full's eval loss
    imgs = els.find("img")
    assert len(imgs) == 4 and all(i["src"].startswith("data:image/svg+xml;base64,") for i in imgs)


@pytest.mark.parametrize("width", [1280, 380])
def test_plots_decode_and_only_tables_scroll_sideways(chromium, report, tmp_path, width):
    facts = layout(chromium, report, tmp_path, width)
    widths = [int(w) for w in facts["data-images"].split(",")]
    assert len(widths) == 4 and all(w > 200 for w in widths), widths  # every SVG decoded to a real picture
    # The wide summary table scrolls inside its box; the page itself never needs a sideways scroll.
    assert int(facts["data-scroll-width"]) <= width


@pytest.mark.parametrize("width,height", [(1280, 2000), (400, 2400)])
def test_screenshot_shows_table_highlights_and_plots(chromium, report, tmp_path, width, height):
    img = screenshot(chromium, report, tmp_path, width, height)
    colours = {tuple(c) for c in img.reshape(-1, 3)[:: 7]}
    assert len(colours) > 200  # text, highlights and charts; a blank or error page has a handful
    assert pixels_near(img, "#ffffff", 0) < 0.97 * img.shape[0] * img.shape[1]
    assert pixels_near(img, "#c8f0d2", 2) > 500  # best-value highlight in the summary table
    assert pixels_near(img, "#ffe4e1", 2) > 500  # the failed run's row
    # Dots and lines of the charts in the runs' colours (full, prompt_tuning): the SVG plots were drawn.
    assert pixels_near(img, "#E69F00") > 30
    assert pixels_near(img, "#D55E00") > 30
