"""scripts/wheelhouse.py's own logic (no network): platform tags, what torch takes with it,
the stand-in wheels of the completeness check, and the refused dft extra."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "wheelhouse.py"


@pytest.fixture(scope="module")
def wh():
    spec = importlib.util.spec_from_file_location("wheelhouse", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manylinux_tags_go_down_to_the_oldest(wh):
    tags = wh.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    # pip matches --platform exactly: a wheel tagged 2_17 or manylinux2014 must still match
    for t in ("manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux_2_5_x86_64"):
        assert t in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert all(t.endswith("_x86_64") for t in tags)
    old = wh.platform_tags("manylinux2014_aarch64")
    assert old[0] == "manylinux_2_17_aarch64" and "manylinux2014_aarch64" in old
    assert "manylinux_2_18_aarch64" not in old
    assert wh.platform_tags("win_amd64") == ["win_amd64"]


def test_torch_takes_only_what_nothing_else_needs(wh):
    def item(name, requires=(), extras=()):
        return {
            "metadata": {"name": name, "version": "1", "requires_dist": list(requires)},
            "requested_extras": list(extras),
        }

    items = [
        item("hts", ["torch==1", "e3nn", "numpy"]),
        item("torch", ["sympy", "triton; platform_machine == 'x86_64'", "nvidia-cublas"]),
        item("e3nn", ["sympy", "torch"]),
        item("numpy"),
        item("sympy"),
        item("triton"),
        item("nvidia-cublas"),
    ]
    env = {"python_version": "3.12", "platform_machine": "x86_64", "sys_platform": "linux"}
    graph = wh.requires_graph(items, env)
    keep = wh.reachable(graph, {"hts"}, {"torch"})
    assert keep == {"hts", "e3nn", "numpy", "sympy"}  # sympy stays: e3nn needs it too
    assert "triton" in wh.reachable(graph, {"hts"}, set())
    # a marker false for the target drops the edge
    arm = wh.requires_graph(items, {**env, "platform_machine": "aarch64"})
    assert "triton" not in arm["torch"]


def test_skip_names_reads_files(wh, tmp_path):
    f = tmp_path / "skip"
    f.write_text("# the image's own\nnumpy\nscipy  # a comment\n\n")
    assert wh.skip_names(["torch,pandas", f"@{f}"]) == ["torch", "pandas", "numpy", "scipy"]
    shipped = wh.skip_names([f"@{ROOT / 'scripts' / 'gpu-image.skip'}"])
    assert "numpy" in shipped and "torch" in shipped
    assert "e3nn" not in shipped  # hts pins it: carried even though the image has one


def test_stub_wheel_is_a_wheel_pip_reads(wh, tmp_path):
    path = wh.stub_wheel("Torch", "2.13.0", tmp_path)
    assert path.name == "torch-2.13.0-py3-none-any.whl"
    with zipfile.ZipFile(path) as z:
        meta = z.read("torch-2.13.0.dist-info/METADATA").decode()
    assert "Name: torch" in meta and "Version: 2.13.0" in meta


def test_a_compiled_sdist_travels_with_its_needs(wh, tmp_path):
    """icet has no wheel and builds a platform-specific one: its sdist goes into the folder,
    its build requirements are read from pyproject.toml and its runtime needs from PKG-INFO
    (so the stand-in that resolution sees still pulls them in)."""
    import io
    import tarfile

    sd = tmp_path / "icet-4.0.tar.gz"
    files = {
        "icet-4.0/pyproject.toml": '[build-system]\nrequires = ["setuptools>=77.0", '
        '"pybind11>=3.0"]\nbuild-backend = "setuptools.build_meta"\n',
        "icet-4.0/PKG-INFO": "Metadata-Version: 2.4\nName: icet\nVersion: 4.0\n"
        "Requires-Dist: ase\nRequires-Dist: spglib>=2.5\n\nlong description\n",
        "icet-4.0/src/PKG-INFO": "Requires-Dist: not-this-one\n",
    }
    with tarfile.open(sd, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert wh.sdist_build_requires(sd) == ["setuptools>=77.0", "pybind11>=3.0"]
    assert wh.sdist_requires(sd) == ["ase", "spglib>=2.5"]
    stub = wh.stub_wheel("icet", "4.0", tmp_path, wh.sdist_requires(sd))
    with zipfile.ZipFile(stub) as z:
        meta = z.read("icet-4.0.dist-info/METADATA").decode()
    assert "Requires-Dist: ase\n" in meta and "Requires-Dist: spglib>=2.5\n" in meta


def test_dft_extra_is_refused_before_any_download(tmp_path):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "w"), "--extras", "dft"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0
    assert "dft extra is not offered" in p.stderr + p.stdout
    assert not (tmp_path / "w").exists()
