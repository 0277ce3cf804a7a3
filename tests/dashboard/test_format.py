"""The page's numbers, in the dashboard and in ``hts report``: an energy that rounds to zero
reads 0.000, never -0.000 (as the terminal's :func:`hts.render.energy`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import hts.dashboard
from hts.dashboard.html import write_html

NODE = shutil.which("node")
RENDER = Path(__file__).with_name("render_page.js")
STATIC = Path(hts.dashboard.__file__).with_name("static")


def _payload(page: str) -> dict:
    return json.loads(re.search(r"window.HTS_STATIC = (.*?);</script>", page, re.S)[1])


def _node(js: str) -> object:
    res = subprocess.run([NODE, "-e", js], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_page_prints_energies_that_round_to_zero_as_zero():
    """app.js's fmt (every energy on the page and in the report), as hts.render.energy."""
    from hts.render import energy

    values = [-0.0004, -1e-12, -0.0, 0.0, 0.0004, -0.0006, -1.2, 0.25]
    page = (STATIC / "viewer.js").read_text() + "\n" + (STATIC / "app.js").read_text()
    js = f"""
    const vm = require("vm");
    const stub = () => ({{ addEventListener() {{}}, set textContent(v) {{}} }});
    const ctx = {{ document: {{ getElementById: stub }}, setTimeout: () => 0, console,
                  fetch: () => Promise.reject(new Error("offline")) }};
    ctx.window = ctx;
    vm.createContext(ctx);
    vm.runInContext({json.dumps(page)}, ctx);
    const out = vm.runInContext("{json.dumps(values)}.map((x) => fmt(x))", ctx);
    out.push(vm.runInContext("[fmt(-0.00004, 4), pct(-0.0000001), secs(-0.001)]", ctx));
    process.stdout.write(JSON.stringify(out));
    """
    *shown, others = _node(js)
    assert shown == [energy(x) for x in values]
    assert shown[:5] == ["0.000"] * 5 and shown[5] == "-0.001"
    assert others == ["0.0000", "0.0 %", "0.00 s"]


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_report_shows_zero_not_minus_zero(store, tmp_path):
    """A candidate on the hull whose energies came out as -1e-9: its cells read 0.000."""
    out = write_html(store, tmp_path / "report.html")
    page = out.read_text()
    data = _payload(page)
    b = data["snapshot"]["best"][0]
    b["formation_energy"] = -0.0003
    b["e_above_hull_by_stage"] = {st: -1e-9 for st in b["e_above_hull_by_stage"]}
    raw = json.dumps(data).replace("</", "<\\/")
    out.write_text(
        re.sub(
            r"window.HTS_STATIC = (.*?);</script>",
            lambda _: f"window.HTS_STATIC = {raw};</script>",
            page,
            count=1,
            flags=re.S,
        )
    )
    res = subprocess.run([NODE, str(RENDER), str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]["best"]
    head = rows[0]
    row = next(r for r in rows[1:] if r[0] == b["id"])
    cells = {h: row[i] for i, h in enumerate(head)}
    assert cells["E_form (eV/atom)"] == "0.000"
    assert [cells[f"E_hull {st}"] for st in b["e_above_hull_by_stage"]] == ["0.000"] * len(
        b["e_above_hull_by_stage"]
    )
    assert not any("-0.000" in c for r in rows for c in r)
