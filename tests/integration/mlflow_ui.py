"""The MLflow UI for tests: a tracking server started by ``cluster/mlflow/serve.sh`` (what
``make mlflow`` runs) on a free loopback port, and a headless-Chromium screenshot of an
experiment's runs in chart view, with a parent run expanded to show its children.

Chromium is Debian's (``make browser`` installs it); Playwright only drives it, nothing is
downloaded. A missing browser is a setup error (`make test` installs it first), not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.net import free_port
from pipeline.infra.tracking import experiment_ui_url

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TUBELET_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts"))


def chromium() -> str:
    """Path of Debian's chromium; fails the calling test, naming the fix, when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: run `make browser` (Debian's chromium, as root), "
                    "or `make test`, which does it first")
    return path


@contextmanager
def mlflow_server(backend_uri: str, state_dir: Path) -> Iterator[str]:
    """``serve.sh`` on a free 127.0.0.1 port for ``backend_uri``; yields the URL, stops it by pid."""
    env = {**os.environ, "TUBELET_MLFLOW_DIR": str(state_dir), "TUBELET_MLFLOW_PORT": str(free_port()),
           "TUBELET_MLFLOW_BACKEND": backend_uri, "TUBELET_MLFLOW_ARTIFACTS": str(state_dir / "artifacts"),
           "TUBELET_MLFLOW_WORKERS": "1"}
    subprocess.run(["bash", str(REPO / "cluster/mlflow/serve.sh")], env=env, check=True, capture_output=True,
                   timeout=180)
    try:
        yield (state_dir / "url").read_text().strip()
    finally:
        subprocess.run(["bash", str(REPO / "cluster/mlflow/stop.sh")], env=env, check=False, capture_output=True,
                       timeout=60)


def line_points(path_d: str) -> int:
    """Vertices of a Plotly line trace (its SVG ``d``: ``M x,y L x,y ...``); 0 for an empty path."""
    return len(re.findall(r"[ML]", path_d or ""))


VIEWPORT = {"width": 1500, "height": 950}


@dataclass
class RunsView:
    """What the runs page showed: its text, the vertex count of every line drawn in the charts
    (Plotly's ``path.js-line``), the box of the loss chart's legend entry (None when not rendered),
    and, when asked for, the picture card: its box, its text and the box of its picture."""

    text: str
    points: list[int]
    loss_box: dict[str, float] | None
    picture_card: dict[str, float] | None = None
    picture_text: str = ""
    picture_box: dict[str, float] | None = None
    picture_visible: float = 0.0


# The fraction of an element's area that is not clipped by any scrolling or clipping ancestor (a
# card whose content scrolls shows only its top) nor by the window.
VISIBLE_FRACTION = """e => {
  const r = e.getBoundingClientRect();
  let [x0, y0, x1, y1] = [r.left, r.top, r.right, r.bottom];
  for (let n = e.parentElement; n; n = n.parentElement) {
    const s = getComputedStyle(n);
    if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
      const c = n.getBoundingClientRect();
      x0 = Math.max(x0, c.left); y0 = Math.max(y0, c.top); x1 = Math.min(x1, c.right); y1 = Math.min(y1, c.bottom);
    }
  }
  x0 = Math.max(x0, 0); y0 = Math.max(y0, 0); x1 = Math.min(x1, window.innerWidth); y1 = Math.min(y1, window.innerHeight);
  const area = r.width * r.height;
  return area > 0 ? Math.max(0, x1 - x0) * Math.max(0, y1 - y0) / area : 0;
}"""


def screenshot_runs(url: str, experiment_id: str, parent: str, children: list[str], loss_run: str,
                    out: Path, picture: str = "") -> RunsView:
    """Open the link a job prints (the experiment's runs, charts shown), expand ``parent`` (one
    click), wait for every child row and the training-loss chart with ``loss_run``'s curve as
    MLflow lays the charts out (no search, no scrolling), save a PNG at ``out``; with ``picture``
    (an image key), then scroll to that image card, wait for its picture and save ``out`` with
    ``-picture`` in its name.

    MLflow 3.17 lays the sections out by key prefix, sorted, then the unprefixed keys ("Model
    metrics"), then "System metrics": the loss is ``loss/train`` so that its section comes first
    (``pipeline.infra.tracking.CHART_KEYS``)."""
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            # The link jobs.pipeline prints: the experiment in the model-training view (not GenAI's).
            page.goto(experiment_ui_url(url, experiment_id))
            page.get_by_text(parent, exact=True).first.wait_for(timeout=60_000)
            # The run-name cell's expander button shows the nested (child) runs.
            page.locator('[row-id] button[data-component-id*="runnamecellrenderer"]').first.click()
            for child in children:
                page.get_by_text(child, exact=True).first.wait_for(timeout=30_000)
            # Charts are rendered lazily, when scrolled into view: the loss chart must be there as is.
            legend = page.get_by_text(f"{loss_run} (loss/train)", exact=True).first
            legend.wait_for(timeout=30_000)
            close = page.locator('button[aria-label="Close"]')  # the assistant side panel, if shown
            if close.count():
                close.first.click()
            page.wait_for_timeout(1500)  # chart animation
            page.screenshot(path=str(out))
            lines = page.locator("path.js-line").evaluate_all("els => els.map(e => e.getAttribute('d') || '')")
            view = RunsView(page.locator("body").inner_text(), [line_points(d) for d in lines], legend.bounding_box())
            if picture:
                title = page.get_by_text(picture, exact=True).first
                page.mouse.move(VIEWPORT["width"] * 2 // 3, VIEWPORT["height"] * 2 // 3)  # over the charts
                for _ in range(60):  # scroll down as a user does: cards render when they come into view
                    if title.count():
                        break
                    page.mouse.wheel(0, 400)
                    page.wait_for_timeout(500)
                title.scroll_into_view_if_needed(timeout=30_000)
                # the card: the nearest ancestor of the title that also holds the run's row (its picture
                # or MLflow's "No image logged at this step")
                card = title.locator("xpath=ancestor::*[.//img or contains(., 'No image')][1]")
                card.locator("img").or_(card.get_by_text("No image logged", exact=False)).first.wait_for(
                    timeout=30_000)
                image = card.locator("img")
                if image.count():
                    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=image.first.element_handle(),
                                           timeout=30_000)
                    card.scroll_into_view_if_needed(timeout=10_000)  # the page scrolls; the card's own content does not
                    page.wait_for_timeout(1000)  # layout after the picture loaded
                    view.picture_box = image.first.bounding_box()
                    view.picture_visible = image.first.evaluate(VISIBLE_FRACTION)
                view.picture_card, view.picture_text = card.bounding_box(), card.inner_text()
                page.screenshot(path=str(out.with_name(f"{out.stem}-picture{out.suffix}")))
            return view
        finally:
            browser.close()
