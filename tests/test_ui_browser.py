"""End to end in a real browser: Debian's chromium driven by Playwright.

Load the page, import a tiny config, make a value invalid and see the error next to its field, fix it,
look at the graph, start a run, see log lines and the loss plot appear, close the page (the run goes
on), open a new one and stop the run from there. Then, with two finished runs: the log's last line is
inside the visible log box, a sample grid is shown at its file's aspect ratio, a run chosen in the Runs
tab stays chosen across a tab switch, and Compare overlays both. Screenshots go to the test's temp
folder and to /tmp/ui-*.png. Waits poll with generous timeouts; nothing asserts speed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image
from rollgraph.ui.app import launch

from tests.conftest import tiny_config

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = int(os.environ.get("RG_WAIT_MS", 240_000))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None,
                                reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page_and_server(tmp_path):
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    demo, url = launch(port=free_port(), user_presets_dir=tmp_path / "presets", runs_dir=runs, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(WAIT_MS)
                yield page, url, runs, demo.run_manager
            finally:
                browser.close()
    finally:
        demo.run_manager.close(stop_runs=True)
        demo.close()


def test_edit_validate_run_watch_and_stop_in_a_browser(page_and_server, tmp_path):
    page, url, runs, _ = page_and_server
    page.goto(url)
    page.wait_for_selector("#rg-problems .rg-ok")  # the shipped quickstart preset is valid

    # import a tiny config.json: the raw editor and the form both show it
    # with rollout (and so ReflexFlow, on by default for flow matching): a graph wider than the page
    cfg = tiny_config(runs, max_train_steps=200, prediction_type="flow_matching", scheduled_sampling_max_step_offset=2,
                      scheduled_sampling_probability=0.5)
    cfg["output_dir"] = str(runs / "browser")
    upload = tmp_path / "config.json"
    upload.write_text(json.dumps(cfg))
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Import config.json").click()
    chooser.value.set_files(str(upload))
    page.wait_for_function("document.querySelector('#rg-f-train_batch_size input').value === '8'")
    assert '"max_train_steps": 200' in page.inner_text("#rg-json .cm-content")

    # an invalid value: its error appears under the field and in the problems list, and in the raw JSON
    field = page.locator("#rg-f-resolution")
    field.locator("input").fill("4")
    page.wait_for_selector("#rg-f-resolution.rg-invalid")
    assert "greater than or equal to 8" in field.inner_text()
    page.wait_for_selector("#rg-problems .rg-bad")
    assert "resolution" in page.inner_text("#rg-problems")
    assert '"resolution": 4' in page.inner_text("#rg-json .cm-content")

    # fixed: the error goes away
    field.locator("input").fill("8")
    page.wait_for_selector("#rg-problems .rg-ok")
    page.wait_for_selector("#rg-f-resolution:not(.rg-invalid)")

    # the validity box follows the scroll down the long form
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("window.scrollY > 1000")
    box = page.locator("#rg-problems").bounding_box()
    assert 0 <= box["y"] < 1000, box
    page.evaluate("window.scrollTo(0, 0)")

    # the graph picture shows the stages, ports and edges
    page.get_by_role("tab", name="Graph").click()
    page.wait_for_selector('#rg-graph svg g[data-node="predict"]')
    assert page.locator("#rg-graph path.rg-edge").count() >= 8
    page.wait_for_selector('#rg-graph svg g[data-node="adr"]')
    svg, frame = page.locator("#rg-graph svg").bounding_box(), page.locator("#rg-graph").bounding_box()
    natural = float(page.get_attribute("#rg-graph svg", "width"))
    assert natural > frame["width"]  # wider than the page: it would be cut off at its own size
    assert svg["x"] >= frame["x"] - 1 and svg["x"] + svg["width"] <= frame["x"] + frame["width"] + 1  # fitted
    page.locator("#rg-graph label[for=rg-graph-full]").click()
    page.wait_for_function(f"document.querySelector('#rg-graph svg').getBoundingClientRect().width > {frame['width']}")
    page.locator("#rg-graph label[for=rg-graph-full]").click()

    # start a run; the log and the loss curve appear while it trains
    page.get_by_role("tab", name="Train").click()
    page.locator("#rg-start").click()
    page.wait_for_selector("#rg-run-msg .rg-okmsg")
    assert "browser" in page.inner_text("#rg-run-msg")
    page.wait_for_function("document.querySelector('#rg-log') && /step [0-9]+\\/200/.test(document.querySelector('#rg-log').innerText)",
                           timeout=WAIT_MS)
    page.wait_for_selector("#rg-loss-plot .role-mark path")
    page.wait_for_function("/step [0-9]+\\/200/.test(document.querySelector('#rg-progress').innerText)")
    assert "running" in page.inner_text("#rg-status")
    for path in (tmp_path / "ui.png", Path("/tmp/ui-shot.png")):
        page.screenshot(path=str(path), full_page=True)

    # closing the page does not stop the run; a new page finds it (the watch list starts on the active run)
    metrics = runs / "browser" / "metrics.jsonl"
    seen_steps = len(metrics.read_text().splitlines())
    context = page.context
    page.close()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    deadline = time.monotonic() + WAIT_MS / 1000
    while len(metrics.read_text().splitlines()) <= seen_steps and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(metrics.read_text().splitlines()) > seen_steps
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("/running/.test(document.querySelector('#rg-status').innerText)")

    # stop: the trainer checkpoints and reports "stopped", shown on the page
    page.locator("#rg-stop").click()
    page.wait_for_function("/stopped/.test(document.querySelector('#rg-status').innerText)")
    status = json.loads((runs / "browser" / "run.json").read_text())
    assert status["status"] == "stopped"
    assert (runs / "browser" / "checkpoints" / f"step-{status['step']}").is_dir()
    page.screenshot(path=str(tmp_path / "ui-stopped.png"), full_page=True)


def wait_finished(folder: Path) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        try:
            if json.loads((folder / "run.json").read_text()).get("status") == "finished":
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{folder} did not finish")


def dropdown_value(page, elem_id: str) -> str:
    return page.eval_on_selector(f"#{elem_id} input", "e => e.value")


def test_finished_run_log_gallery_runs_selection_and_compare(page_and_server):
    page, url, runs, manager = page_and_server
    # two finished runs; "alpha" ends last, so the Train tab watches it first. Its log has ~40 lines, more
    # than the log box shows at once.
    manager.submit(tiny_config(runs, max_train_steps=5, output_dir=str(runs / "beta")))
    wait_finished(runs / "beta")
    manager.submit(tiny_config(runs, max_train_steps=30, validation_steps=15, output_dir=str(runs / "alpha")))
    wait_finished(runs / "alpha")

    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("/finished at step 30/.test(document.querySelector('#rg-log').innerText)")
    assert page.locator("#rg-log .rg-log").inner_text().count("\n") > 30
    # the last line (after "finished at step 30 — sample grid: ..." comes "run folder: ...") lies inside
    # the box as the page shows it
    last_lines = page.locator("#rg-log .rg-log").inner_text().strip().splitlines()[-2:]
    assert "finished at step 30" in last_lines[0] and "run folder" in last_lines[1]
    line, box = page.evaluate("""() => {
        const pre = document.querySelector('#rg-log .rg-log');
        const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
        let last = null, node;
        while ((node = walker.nextNode())) if (node.textContent.trim()) last = node;  // the last line's end
        const range = document.createRange();
        range.selectNodeContents(last);
        const r = range.getBoundingClientRect(), b = document.querySelector('#rg-log .rg-logbox').getBoundingClientRect();
        return [[r.top, r.bottom, r.height], [b.top, b.bottom]];
    }""")
    assert line[2] > 0 and box[0] - 1 <= line[0] and line[1] <= box[1] + 1, (line, box)

    # the newest sample grid is shown whole: the shown width/height is the file's
    img = page.locator("#rg-gallery img").first
    img.wait_for()
    page.wait_for_function("document.querySelector('#rg-gallery img').naturalWidth > 0")
    shown = img.bounding_box()
    with Image.open(runs / "alpha" / "samples" / "step-000030.png") as grid:
        file_ratio = grid.width / grid.height
    assert file_ratio > 1.5  # a strip: a square thumbnail would crop it
    assert abs(shown["width"] / shown["height"] - file_ratio) / file_ratio < 0.03, (shown, file_ratio)
    page.screenshot(path="/tmp/ui-finished.png", full_page=True)

    # Runs tab: a click on a table row chooses that run, and the choice survives a tab switch
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function("document.querySelector('#rg-runs-select input').value === 'alpha'")
    page.locator("#rg-runs-table").get_by_text("beta", exact=True).first.click()
    page.wait_for_function("document.querySelector('#rg-runs-select input').value === 'beta'")
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_timeout(1500)  # let the tab's refresh come back before reading the choice
    assert dropdown_value(page, "rg-runs-select") == "beta"
    page.get_by_role("button", name="Watch in Train tab").click()
    page.wait_for_function("/beta/.test(document.querySelector('#rg-status').innerText)")
    assert dropdown_value(page, "rg-watch") == "beta"
    assert "finished" in page.inner_text("#rg-status")

    # Compare: both runs overlaid, and the table names the key that differs
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("Number(document.querySelector('#rg-compare-table [role=grid]').getAttribute('aria-rowcount')) === 3")
    page.wait_for_selector("#rg-compare-plot .role-mark path")
    table = page.inner_text("#rg-compare-table")
    assert "alpha" in table and "beta" in table and "max_train_steps" in table
    page.screenshot(path="/tmp/ui-compare.png", full_page=True)
