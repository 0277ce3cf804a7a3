"""The 3-D structure viewer's wiring; ``test_browser.py`` watches it draw in Chromium."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from hts.dashboard import html as report_html
from hts.dashboard.html import write_html
from hts.dashboard.server import Dashboard, static_file
from hts.dashboard.views import StoreViews

STATIC = Path(report_html.__file__).with_name("static")


def _payload(page: str) -> dict:
    raw = re.search(r"window.HTS_STATIC = (.*?);</script>", page, re.S)[1]
    return json.loads(raw)


def test_the_vendored_library_ships_with_its_licence_and_version():
    lib = (STATIC / "3Dmol-min.js").read_text()
    licence = (STATIC / "3Dmol.LICENSE.txt").read_text()
    assert lib.startswith("/*! For license information") and "$3Dmol" in lib
    assert "BSD-3-Clause" in licence and "3dmol v2.5.5" in licence
    assert "3Dmol.js 2.5.5" in (STATIC / "viewer.js").read_text()  # the version, where it is used
    assert "</script" not in lib.lower()  # inlined into a report as is


def test_the_dashboard_serves_the_viewer_from_the_package(store):
    d = Dashboard(store, port=0)
    d.start()
    try:
        for name in ("viewer.js", "3Dmol-min.js", "3Dmol.LICENSE.txt"):
            with urllib.request.urlopen(f"{d.url}static/{name}", timeout=10) as r:
                assert r.status == 200 and r.read() == static_file(name), name
        with urllib.request.urlopen(d.url, timeout=10) as r:
            page = r.read().decode()
        # the page loads only its own script; the library comes on the first click
        assert '<script src="static/viewer.js"></script>' in page
        assert "3Dmol-min.js" not in page
    finally:
        d.close()


def test_every_listed_candidate_has_its_structure_without_a_scan(store, monkeypatch):
    """Best and lab rows are clickable: their CIF comes from rows at hand, not a scan of ids."""
    v = StoreViews(store)
    snap = v.snapshot()
    listed = [b["id"] for b in snap["best"]] + [c["id"] for c in snap["lab"]["candidates"]]
    monkeypatch.setattr(v.cache.reader, "find_id", lambda cid: pytest.fail(f"scanned for {cid}"))
    for cid in listed:
        assert "_cell_length_a" in v.structure(cid, "cif").decode()


def test_the_report_inlines_the_viewer_and_every_clickable_structure(store, tmp_path):
    page = write_html(store, tmp_path / "report.html").read_text()
    assert page.count('<script id="lib-3dmol">') == 1
    assert static_file("3Dmol-min.js").decode() in page  # as vendored, nothing fetched
    assert "function showStructure" in page and 'id="viewer-panel"' in page
    data = _payload(page)
    snap = data["snapshot"]
    clickable = {b["id"] for b in snap["best"]} | {
        c["id"] for c in snap["lab"]["candidates"] if not c.get("error")
    }
    assert clickable <= set(data["structures"])
    assert all(
        s["cif"].startswith("data:chemical/x-cif;base64,") for s in data["structures"].values()
    )


def test_a_report_without_structures_leaves_the_library_out(store, tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "_structures", lambda views, snap: {})
    page = write_html(store, tmp_path / "report.html").read_text()
    assert "lib-3dmol" not in page and "For license information" not in page
    assert "function showStructure" in page  # the page's own script, small, stays
