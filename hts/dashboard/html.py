"""``hts report STORE --html FILE``: the dashboard's views as one self-contained HTML file.

The same page, scripts and stylesheet as the live dashboard, with the
snapshot (the funnel's audit, economics and warning among it), the plots
(SVG data URIs), the listed candidates' structures and the lab table's XRD
patterns, peak tables and conventional cells embedded, so the file can be
mailed or attached to a lab notebook and opened anywhere, offline.

The 3-D structure viewer's library, 3Dmol.js (``static/3Dmol-min.js``, ~540
kB), is inlined too: a ``<script src>`` to a file beside the report would be
lost when the report is mailed on its own, and a CDN would fail offline and
tell a third party who opened which report.  It is inlined only when the
report has a structure to show, so a report of a store with no candidates
yet does not carry half a megabyte it cannot use.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from hts.dashboard.server import static_file
from hts.dashboard.views import LAB_FILES, PLOTS, StoreViews

__all__ = ["write_html"]

LIBRARY = "3Dmol-min.js"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _inline_script(js: str) -> str:
    """``js`` safe inside ``<script>…</script>``: no early ``</script``, no ``<!--`` escape state."""
    return js.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def _structures(views: StoreViews, snap: dict) -> dict[str, dict[str, str]]:
    """CIF (and extxyz, for the downloads of the best table) of every candidate the page lists.

    The best, lab and DFT tables' candidates can each be clicked to view in
    3-D; the CIF is what the viewer draws, as the live dashboard's
    ``/structure/<id>.cif``.
    """
    out = {
        b["id"]: {
            "cif": _data_uri(views.structure(b["id"], "cif"), "chemical/x-cif"),
            "extxyz": _data_uri(views.structure(b["id"], "extxyz"), "text/plain"),
        }
        for b in snap["best"]
    }
    listed = [e["id"] for e in (snap.get("lab") or {}).get("candidates", []) if not e.get("error")]
    listed += [c["id"] for c in (snap.get("dft") or {}).get("candidates", [])]
    for cid in listed:
        if cid not in out:
            out[cid] = {"cif": _data_uri(views.structure(cid, "cif"), "chemical/x-cif")}
    return out


def write_html(store: str | Path, out: str | Path, top: int = 50) -> Path:
    """Write the report of ``store`` to ``out`` (one file) and return its path."""
    views = StoreViews(store, top=top)
    snap = views.snapshot()
    plots = {name: _data_uri(views.plot(name), "image/svg+xml") for name in PLOTS}
    structures = _structures(views, snap)
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
    viewer = static_file("viewer.js").decode()
    library = ""
    if structures:  # the 3-D viewer's library, with an id: render_page.js and readers skip it
        library = (
            f'<script id="lib-3dmol">\n{_inline_script(static_file(LIBRARY).decode())}\n</script>\n'
        )
    page = page.replace(
        '<link rel="stylesheet" href="static/style.css">', f"<style>\n{css}</style>"
    )
    page = page.replace(
        '<script src="static/viewer.js"></script>',
        f"{library}<script>\n{viewer}</script>",
    )
    page = page.replace(
        '<script src="static/app.js"></script>',
        f"<script>window.HTS_STATIC = {payload};</script>\n<script>\n{js}</script>",
    )
    out = Path(out)
    out.write_text(page)
    return out
