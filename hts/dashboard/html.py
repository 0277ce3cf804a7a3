"""``hts report STORE --html FILE``: the dashboard's views as one self-contained HTML file.

The same page, script and stylesheet as the live dashboard, with the
snapshot (the funnel's audit, economics and warning among it), the plots
(SVG data URIs), the best candidates' structures and the lab table's XRD
patterns, peak tables and conventional cells embedded, so the file can be
mailed or attached to a lab notebook and opened anywhere, offline.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from hts.dashboard.server import static_file
from hts.dashboard.views import LAB_FILES, PLOTS, StoreViews

__all__ = ["write_html"]


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def write_html(store: str | Path, out: str | Path, top: int = 50) -> Path:
    views = StoreViews(store, top=top)
    snap = views.snapshot()
    plots = {name: _data_uri(views.plot(name), "image/svg+xml") for name in PLOTS}
    structures = {
        b["id"]: {
            "cif": _data_uri(views.structure(b["id"], "cif"), "chemical/x-cif"),
            "extxyz": _data_uri(views.structure(b["id"], "extxyz"), "text/plain"),
        }
        for b in snap["best"]
    }
    lab = {
        e["id"]: {
            kind: _data_uri(views.lab_file(e["id"], kind), mime.split(";")[0])
            for kind, mime in LAB_FILES.items()
        }
        for e in (snap.get("lab") or {}).get("candidates", [])
        if not e.get("error")
    }
    payload = json.dumps(
        {"snapshot": snap, "plots": plots, "structures": structures, "lab": lab}, default=str
    )
    payload = payload.replace("</", "<\\/")  # no early </script> inside the data
    page = static_file("index.html").decode()
    css = static_file("style.css").decode()
    js = static_file("app.js").decode()
    page = page.replace(
        '<link rel="stylesheet" href="static/style.css">', f"<style>\n{css}</style>"
    )
    page = page.replace(
        '<script src="static/app.js"></script>',
        f"<script>window.HTS_STATIC = {payload};</script>\n<script>\n{js}</script>",
    )
    out = Path(out)
    out.write_text(page)
    return out
