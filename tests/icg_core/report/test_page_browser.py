"""The report in a real browser: headless Chromium loads the page, every image decodes, a screenshot is taken.

CI installs Chromium (``apt-get install -y chromium``); without it this test fails instead of skipping.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from icg_core.stages.report import build_report
from icg_core.storage import ObjectStore
from tests.icg_core.report.test_page import DS, write_fixture_run

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
]  # fmt: skip
WINDOW = (1366, 2400)  # a laptop's width; tall enough to reach the contact sheets


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    assert path, "headless Chromium is missing: install it with `apt-get install -y chromium`"
    return path


def run_chromium(page: Path, profile: Path, *args: str) -> str:
    out = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def image_counts(page: Path, profile: Path) -> dict[str, int]:
    """What the page's load script recorded on <body>: images total / loaded / broken."""
    dom = run_chromium(page, profile, "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    counts = dict(re.findall(r'data-images-(\w+)="(\d+)"', body.group(1)))
    assert set(counts) == {"total", "loaded", "broken"}, f"the load script did not run: {body.group(0)}"
    return {k: int(v) for k, v in counts.items()}


def test_every_image_loads_and_the_page_screenshots(tmp_path) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    metrics = write_fixture_run(store, segments=3, items=4)
    page = Path(store.arrow_path(build_report(store, DS)))
    counts = image_counts(page, tmp_path / "profile")
    assert counts == {"total": 3 * 4 * 3 + 2, "loaded": 3 * 4 * 3 + 2, "broken": 0}  # covers + 2 plots
    assert len(metrics["samples"]) == 4 + 3 * 4 * 2

    shot = tmp_path / "report.png"
    run_chromium(page, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    image = Image.open(shot).convert("L")
    assert image.size == WINDOW
    low, high = image.getextrema()
    assert high - low > 100, "the screenshot is blank"


def test_a_broken_image_is_counted(tmp_path) -> None:
    """The check can fail: an image that does not decode is reported broken."""
    store = ObjectStore(str(tmp_path / "root"))
    write_fixture_run(store, segments=1, items=1)
    text = Path(store.arrow_path(build_report(store, DS))).read_text()
    text = text.replace('src="data:image/jpeg;base64,', 'src="data:image/jpeg;base64,AAAA', 1)
    page = tmp_path / "broken.html"
    page.write_text(text)
    counts = image_counts(page, tmp_path / "profile")
    assert counts["broken"] == 1 and counts["loaded"] == counts["total"] - 1
