"""``reid-tune report EXP --html``: one self-contained page, checked as a file and in a real headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it when missing). With ``CI=true`` the browser
test must run; elsewhere it skips, saying why, when no browser is installed.
"""

from __future__ import annotations

import io
import json
import os
import re

import pandas as pd
import pytest

from tuner.report import main as report_main

from .browser import find_browser, open_page

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def page(knob_search):
    """The knob search's report page (report.html in the experiment), its table and winner."""
    code, exp, printed, _ = knob_search
    assert code == 0, printed
    assert report_main([str(exp), "--html", "--no-plots"]) == 0
    best = json.loads((exp / "best_config.json").read_text())["trial_id"]
    return exp / "report.html", pd.read_csv(exp / "results.csv", dtype={"trial_id": str}), best


def test_the_page_holds_everything_and_fetches_nothing(page):
    path, table, best = page
    text = path.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    sources = re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)  # curves, importance, hyperparams
    assert "<h2>Re-run the winner</h2>" in text and f"reid-tune train --config {path.parent / 'best_config.json'} --out DIR" in text
    stuck = table[table.end_reason == "stuck_at_chance"]
    assert len(stuck) >= 2 and "healthy" in text
    for _, row in stuck.iterrows():
        assert f"trial {row.trial_id}: <code>{row.stuck_cause}</code>" in text


def test_html_to_a_file_of_ones_choosing_and_the_table_still_printed(knob_search, tmp_path, capsys):
    _, exp, _, _ = knob_search
    assert report_main([str(exp), "--html", str(tmp_path / "share.html"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "trial_id" in out and out.strip().splitlines()[-1] == f"wrote {tmp_path / 'share.html'}"
    assert (tmp_path / "share.html").read_text().startswith("<!DOCTYPE html>")


def non_white_share(png: bytes) -> float:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return sum(histogram[:235]) / (image.width * image.height)


def test_in_a_real_browser_it_loads_without_errors_and_shows_the_winner_and_every_stuck_cause(page):
    browser = find_browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no browser is installed (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    path, table, best = page
    shown = open_page(browser, path)
    assert shown.errors == []  # no console error, no exception, no failed load
    assert {u.split(":", 1)[0] for u in shown.requested} <= {"file", "data"}  # nothing from the network
    assert non_white_share(shown.screenshot) > 0.05  # not a blank page: text, tables and pictures drawn
    assert f"trial {best}" in shown.text
    for cause in table.loc[table.end_reason == "stuck_at_chance", "stuck_cause"]:
        assert cause in shown.text
