"""End to end in a real headless Chromium: the dashboard of a campaign that is running,
then its static ``hts report`` opened from disk; in both, a clicked candidate's 3-D cell.

Marked ``browser``: CI installs Debian's chromium and chromium-driver and runs
it (``make test-browser``).  The campaign runs in its own process, as a user's
would, while the test's dashboard reads the store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hts.campaign import open_store
from hts.dashboard.html import write_html
from hts.dashboard.server import Dashboard
from hts.spec import load_campaign
from hts.store import open_dataset, structure_of
from tests.conftest import lj_campaign, write_campaign

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser(download_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail(f"needs {CHROMIUM} and {DRIVER} (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2400",
        "--enable-unsafe-swiftshader",  # WebGL in software, for the 3-D viewer without a GPU
    ):
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(download_dir), "download.prompt_for_download": False},
    )
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _fresh(action, tries: int = 5):
    """``action()``, again if the page replaced the element under it (a redraw between find and use)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for i in range(tries):
        try:
            return action()
        except StaleElementReferenceException:
            if i == tries - 1:
                raise
            time.sleep(0.2)


def _rows(driver) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.rows || -1)"))


def _view_a_candidate(driver, store: Path) -> str:
    """Click the best candidate with the most sites; its relaxed cell must be drawn in 3-D.

    Checks what the viewer holds (a canvas, one atom per stored site, a legend
    of the structure's elements), and that a mouse drag rotates it.  Returns
    the candidate's id.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ds = open_dataset(store)
    row_of = {str(cid): i for i, cid in enumerate(ds.id.values)}
    ids = driver.execute_script(
        "return Array.from(document.querySelectorAll('#best tr[data-id]'), tr => tr.dataset.id)"
    )
    assert ids, "no candidate to click"
    cid = max(ids, key=lambda c: int(ds.n_atoms.values[row_of[c]]))
    atoms = structure_of(ds, row_of[cid])
    # the formula cell: a click on the row, not on its download links
    _fresh(
        lambda: driver.find_element(
            By.CSS_SELECTOR, f'#best tr[data-id="{cid}"] td:nth-child(2)'
        ).click()
    )
    deadline = time.time() + 30
    while True:
        box = driver.execute_script(
            "const v = document.getElementById('viewer'); return {id: v.dataset.id,"
            " state: v.dataset.state, atoms: v.dataset.atoms,"
            " canvases: v.querySelectorAll('canvas').length,"
            " info: document.getElementById('viewer-info').textContent}"
        )
        if box["id"] == cid and box["state"] != "loading":
            break
        assert time.time() < deadline, f"the viewer never drew {cid}: {box}"
        time.sleep(0.2)
    assert box["state"] == "drawn", box["info"]
    assert box["canvases"] >= 1
    held = driver.execute_script(
        "return window.htsViewer.viewer.getModel().selectedAtoms({}).length"
    )
    assert int(box["atoms"]) == held == int(ds.n_atoms.values[row_of[cid]]) == len(atoms)
    legend = driver.execute_script(
        "return Array.from(document.querySelectorAll('#viewer-legend .item'),"
        " i => [i.dataset.elem, i.querySelector('.swatch').style.background])"
    )
    assert sorted(e for e, _ in legend) == sorted(set(atoms.get_chemical_symbols()))
    assert all(color.startswith("rgb") for _, color in legend)  # each element its colour
    assert "-0.000" not in box["info"]
    before = driver.execute_script("return window.htsViewer.viewer.getView()")
    canvas = driver.find_element(By.CSS_SELECTOR, "#viewer canvas")
    ActionChains(driver).drag_and_drop_by_offset(canvas, 80, 30).perform()
    after = driver.execute_script("return window.htsViewer.viewer.getView()")
    assert after[4:] != before[4:], "a drag did not rotate the view"  # the quaternion
    return cid


def test_dashboard_follows_a_running_campaign(tmp_path):
    from selenium.webdriver.common.by import By

    # a demo-sized campaign, slowed to a few candidates per commit so it runs ~half a minute
    data = lj_campaign(tmp_path, chunk_size=2, limits={"max_candidates": 120, "max_in_flight": 1})
    data["stages"]["prefilter"]["relax"] = {"fmax": 0.001, "max_steps": 400}
    data["stages"]["rescore"] = {"model": {"name": "lennard-jones"}, "keep": "e_above_hull <= 0.05"}
    path = write_campaign(tmp_path, data)
    env = {**os.environ, "COLUMNS": "120"}
    run = subprocess.Popen(
        [sys.executable, "-m", "hts.cli", "run", str(path), "-q"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    store = Path(data["store"])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    dash = driver = None
    try:
        deadline = time.time() + 120
        while not (store / "zarr.json").exists():
            assert run.poll() is None, run.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.2)
        dash = Dashboard(store, port=0)
        dash.start()
        driver = _browser(downloads)
        driver.get(dash.url)
        # the page loads and shows the campaign
        deadline = time.time() + 60
        while _rows(driver) < 0:
            assert time.time() < deadline, "the page never rendered a snapshot"
            time.sleep(0.2)
        assert "lj-test" in driver.find_element(By.ID, "title").text
        # the counts rise while the run proceeds
        seen = [_rows(driver)]
        while run.poll() is None and time.time() < deadline + 120:
            time.sleep(1.0)
            seen.append(_rows(driver))
        assert run.returncode == 0, run.stderr.read().decode()
        time.sleep(3)  # one more poll after the final commit
        final = _rows(driver)
        assert final == open_dataset(store).sizes["candidate"] > 0
        assert seen == sorted(seen) and len(set(seen)) >= 3, seen  # rose step by step, never fell
        assert "finished" in driver.find_element(By.ID, "state").text
        # the plots render (SVGs decoded by the browser)
        for name in ("throughput", "hull", "parity"):
            w = driver.execute_script(
                f"const i = document.getElementById('plot-{name}'); return i.complete ? i.naturalWidth : 0"
            )
            assert w > 100, name
        funnel = driver.find_elements(By.CSS_SELECTOR, "#funnel .row")
        assert [r.get_attribute("data-stage") for r in funnel[1:]] == ["prefilter", "rescore"]
        # the best table sorts by a column, and a structure downloads
        # (the page redraws the table on a poll: read it in one script, retry a click on a stale node)
        _fresh(lambda: driver.find_elements(By.CSS_SELECTOR, "#best th")[1].click())  # formula
        formulas = driver.execute_script(
            "return Array.from(document.querySelectorAll('#best tr td:nth-child(2)'),"
            " td => td.textContent)"
        )
        assert formulas and formulas == sorted(formulas)

        def download() -> str:
            link = driver.find_element(By.CSS_SELECTOR, "#best a.dl")
            name = link.get_attribute("download")
            link.click()
            return name

        name = _fresh(download)
        target = downloads / name
        deadline = time.time() + 20
        while not target.exists():
            assert time.time() < deadline, f"{name} never downloaded"
            time.sleep(0.2)
        assert "_cell_length_a" in target.read_text()
        # a clicked candidate's relaxed cell in 3-D, its library served by the dashboard itself
        _view_a_candidate(driver, store)
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert any(n.endswith("/static/3Dmol-min.js") for n in loaded)
        assert all(n.startswith(dash.url.split("?")[0]) for n in loaded), loaded
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        # the static report, opened from disk: the same viewer, nothing fetched
        report = write_html(store, tmp_path / "report.html")
        driver.get(report.as_uri())
        assert _rows(driver) == final
        _view_a_candidate(driver, store)
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert all(n.startswith("data:") for n in loaded), loaded
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        if driver is not None:
            driver.quit()
        if dash is not None:
            dash.close()
        if run.poll() is None:
            run.kill()
    # the dashboard only read: the store reopens for writing as the same, consistent campaign
    c = load_campaign(path)
    s = open_store(c, store)
    assert s.n_rows == final and s.finalized
