"""The HTML report: self-contained, and rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from typing import Any

import pytest
from report_helpers import SmallRun

from pbtune.report.data import best_member_id, member_schedule
from pbtune.report.html import write_report

CHROMIUM = "/usr/bin/chromium"


class _Page(HTMLParser):
    """Collects what the checks need: images, table rows, external references, the config."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.rows: dict[str, list[str]] = {}
        self.external: list[str] = []
        self._table: str | None = None
        self._in_tbody = False
        self._in_config = False
        self.config_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(key, "")):
                self.external.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._table = a.get("id")
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody and self._table:
            self.rows.setdefault(self._table, []).append(a.get("data-member", ""))
        elif tag == "pre" and a.get("id") == "config-json":
            self._in_config = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_tbody = False
        elif tag == "pre":
            self._in_config = False

    def handle_data(self, data: str) -> None:
        if self._in_config:
            self.config_text += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def report_file(small_run: SmallRun, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report written once (rendering the figures is the slow part)."""
    return write_report(small_run.data, str(tmp_path_factory.mktemp("report") / "sub" / "report.html"))


def test_the_report_is_self_contained(small_run: SmallRun, report_file: str) -> None:
    data = small_run.data
    with open(report_file, encoding="utf-8") as handle:
        page = _parse(handle.read())
    assert page.external == []  # opens offline: no scripts, styles or images from elsewhere
    assert [i["id"] for i in page.images] == ["img-scores", "img-hparams", "img-lineage", "img-schedule"]
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):]).startswith(b"\x89PNG\r\n\x1a\n")
    assert page.rows["members-table"] == [str(m.member_id) for m in data.members]
    best = best_member_id(data)
    assert best is not None
    assert len(page.rows["schedule-table"]) == len(member_schedule(data, best))
    assert json.loads(page.config_text) == json.loads(json.dumps(dict(data.config)))


def test_write_report_is_atomic_and_readable(report_file: str) -> None:
    assert os.listdir(os.path.dirname(report_file)) == ["report.html"]  # no temporary file left
    assert os.stat(report_file).st_mode & 0o044  # not the 0600 of a temporary file
    with open(report_file, encoding="utf-8") as handle:
        text = handle.read()
    assert "<title>pbtune report: toy</title>" in text and text.rstrip().endswith("</html>")


def _chromium_dom(url: str, profile: str) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: apt-get install -y chromium")
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_chromium_renders_the_figures_and_sorts_the_table(
    small_run: SmallRun, report_file: str, tmp_path: Any, direction: str
) -> None:
    data = small_run.data
    dom = _chromium_dom(f"file://{report_file}#sort=score:{direction}", str(tmp_path / "profile"))
    # set by the page's script on load: images whose data decoded to a picture / all images
    assert 'data-images-loaded="4/4"' in dom
    assert f'data-sorted-by="score:{direction}"' in dom
    page = _parse(dom)
    by_score = sorted(data.members, key=lambda m: m.score, reverse=direction == "desc")
    assert page.rows["members-table"] == [str(m.member_id) for m in by_score]
