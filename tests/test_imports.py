"""No side effects on import: heavy libraries load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, hts, hts.cli, hts.campaign, hts.spec, hts.store, hts.models, hts.candidates\n"
        "heavy = [m for m in ('torch', 'parsl', 'zarr', 'mace', 'sevenn', 'chgnet', 'xarray', 'pymatgen') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_only_execution_imports_parsl():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "hts"
    for path in root.rglob("*.py"):
        if "execution" in path.parts:
            continue
        text = path.read_text()
        assert "import parsl" not in text and "from parsl" not in text, path
        assert "mpi4py" not in text, path
