"""Helpers shared by the benchmark scripts: campaigns, peak memory, the table + JSON output."""

from __future__ import annotations

import json
import resource
import sys

# A wide substitution space for scale runs: every element in every role, no charge balance
# (≈1.4×10⁶ raw assignments, enough for the 10⁶-candidate run).
METALS = [
    "Li",
    "Na",
    "K",
    "Rb",
    "Cs",
    "Be",
    "Mg",
    "Ca",
    "Sr",
    "Ba",
    "Sc",
    "Y",
    "La",
    "Ti",
    "Zr",
    "Hf",
    "V",
    "Nb",
    "Ta",
    "Cr",
    "Mo",
    "W",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Ag",
    "Zn",
    "Cd",
    "Al",
    "Ga",
    "In",
    "Tl",
    "Ge",
    "Sn",
    "Pb",
    "Bi",
    "Ru",
    "Rh",
    "Pd",
    "Pt",
    "Au",
    "Ir",
    "Os",
    "Re",
]
ANIONS = ["O", "S", "Se", "Te", "F", "Cl", "Br", "I", "N", "P", "As", "Sb", "H", "B", "C", "Si"]
LANTHANIDES = ["Ce", "Pr", "Nd", "Sm", "Gd", "Dy", "Er", "Yb", "Lu"]
ELEMENTS = METALS + ANIONS + LANTHANIDES


def wide_campaign(
    store: str,
    n: int,
    model: dict,
    chunk_size: int = 256,
    site: str = "local",
    max_steps: int = 100,
) -> dict:
    return {
        "name": f"scale-{n}",
        "candidates": {
            "kind": "substitution",
            "prototypes": [
                "rocksalt",
                "zincblende",
                "cscl",
                "wurtzite",
                "fluorite",
                "rutile",
                "perovskite",
                "spinel",
                "layered",
                "heusler",
            ],
            "elements": {"A": ELEMENTS, "B": ELEMENTS, "X": ELEMENTS},
            "charge_balance": False,
        },
        "stages": {
            "prefilter": {
                "model": model,
                "relax": {"fmax": 0.05, "max_steps": max_steps, "cell_filter": "unit"},
            }
        },
        "store": store,
        "site": site,
        "chunk_size": chunk_size,
        "limits": {"max_candidates": n},
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(title: str, columns: list[str], rows: list[dict], extra: dict | None = None) -> None:
    """A table for people, then one JSON line for machines."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)))
    print(json.dumps({"benchmark": title, "rows": rows, **(extra or {})}))
    sys.stdout.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
