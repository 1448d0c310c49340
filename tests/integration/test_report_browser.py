"""The HTML report as a person sees it: rendered from real logs (a scripted `sale-ray eval` run on
a local Ray, and a `sale-ray run` log still being written), opened in headless Chromium, every
plot loaded and not blank, and a screenshot taken.

``SALE_RAY_SCREENSHOT=docs/report.png .venv/bin/python -m pytest -q
tests/integration/test_report_browser.py`` refreshes the screenshot in docs/ (docs/queries.md).
"""

import os
import shutil

import pytest

from sale_ray.agents.scripted import scripted_evaluate
from sale_ray.evaluation import run_eval
from sale_ray.evaluation.analytics import write_report
from tests.browser import Browser
from tests.conftest import require_browser
from tests.integration.test_eval_scripted import _config, _tasks
from tests.unit.test_queries import write_run_log

pytestmark = pytest.mark.integration

PLOTS = {
    "cost_vs_pass.png",  # pass@1 vs cost, with the oracle
    "largest_share.png",
    "per_bin.png",
    "winner_share_stream.png",  # winner share over time
    "phase_tokens.png",
    "phase_spend.png",  # spend per phase
}
IMAGES = """[...document.images].map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
    height: i.naturalHeight, shown: i.getBoundingClientRect().width * i.getBoundingClientRect().height
}))"""


def _look(html, shot):
    """Open ``html`` in Chromium; (its images as the page sees them, its headings), and a
    screenshot at ``shot``."""
    with Browser(require_browser()) as b:
        b.open(html.as_uri())
        images = b.evaluate(IMAGES)
        headings = b.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        width, height = b.screenshot(shot, scale=0.75)  # the whole page, small enough for docs/
    assert width >= 800 and height >= 800
    return images, headings


def _assert_plots_drawn(images, folder):
    """Every plot is in the page, decoded, laid out, and its PNG has content (not one colour)."""
    from matplotlib.image import imread

    assert {i["src"] for i in images} == PLOTS
    for i in images:
        assert i["complete"] and i["width"] > 0 and i["height"] > 0 and i["shown"] > 0, i
        assert imread(folder / i["src"]).std() > 0.05, i["src"]


def test_an_eval_report_shows_every_plot_in_chromium(ray_cluster, tmp_path):
    require_browser()  # before the run: a missing browser should not cost the eval
    out = tmp_path / "eval"
    run_eval(_tasks(24), _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    shot = tmp_path / "report.png"
    images, headings = _look(out / "report" / "report.html", shot)
    _assert_plots_drawn(images, out / "report")
    assert {"Methods", "Spend per phase", "Winner share over the task stream"} <= set(headings)
    from matplotlib.image import imread

    assert imread(shot).std() > 0.05  # the page drew, not a blank canvas
    if os.environ.get("SALE_RAY_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SALE_RAY_SCREENSHOT"])


def test_a_running_runs_report_shows_every_plot_in_chromium(tmp_path):
    write_run_log(tmp_path / "run")  # the final file and two parts, not merged yet
    md = write_report(str(tmp_path / "run"))
    images, headings = _look(md.with_suffix(".html"), tmp_path / "run.png")
    _assert_plots_drawn(images, md.parent)
    assert "| run |" in md.read_text() and "Reliance on the largest agent" in headings
