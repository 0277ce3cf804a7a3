"""The bad-input battery: each case gets a clear error (exit 1 or 2, the file or field named,
what to do), never a traceback.  Structures that are bad one by one are in
tests/candidates/test_files.py (they fail alone, the run goes on); store damage in
tests/store/test_verify.py; a second writer in tests/store/test_lock.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hts.cli import app
from tests.conftest import lj_campaign, write_campaign


def _campaign(tmp_path: Path, **overrides) -> Path:
    return write_campaign(
        tmp_path, lj_campaign(tmp_path, limits={"max_candidates": 4}, **overrides)
    )


def _store(tmp_path: Path) -> Path:
    """A small finished store."""
    res = CliRunner().invoke(app, ["run", str(_campaign(tmp_path)), "-q", "--engine", "serial"])
    assert res.exit_code == 0, res.output
    return tmp_path / "lj.zarr"


def _non_utf8(tmp_path):
    p = _campaign(tmp_path)
    p.write_bytes(p.read_bytes().replace(b"lj-test", b"lj-t\xe9st"))
    return ["validate", str(p)]


def _duplicate_key(tmp_path):
    p = _campaign(tmp_path)
    p.write_text(p.read_text() + "chunk_size: 3\nchunk_size: 4\n")
    return ["validate", str(p)]


def _store_is_a_file(tmp_path):
    (tmp_path / "lj.zarr").write_text("x")
    return ["run", str(_campaign(tmp_path)), "-q", "--engine", "serial"]


def _store_in_proc(tmp_path):
    return ["run", str(_campaign(tmp_path)), "-q", "--engine", "serial", "--store", "/proc/x.zarr"]


def _truncated_root(tmp_path):
    store = _store(tmp_path)
    meta = store / "zarr.json"
    meta.write_text(meta.read_text()[:200])
    return ["run", str(_campaign(tmp_path)), "-q", "--engine", "serial"]


def _not_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["status", str(tmp_path / "empty")]


def _export_to_a_file(tmp_path):
    store = _store(tmp_path)
    (tmp_path / "out.txt").write_text("x")
    return ["export", str(store), "--out", str(tmp_path / "out.txt")]


def _port_out_of_range(tmp_path):
    return ["dashboard", str(_store(tmp_path)), "--port", "99999"]


def _site_not_a_site(tmp_path):
    return ["run", str(_campaign(tmp_path)), "-q", "--site", str(_campaign(tmp_path))]


def _site_zero_workers(tmp_path):
    site = tmp_path / "mine.yaml"
    site.write_text(
        yaml.safe_dump({"name": "mine", "executors": {"cpu": {"kind": "threads", "workers": 0}}})
    )
    return ["run", str(_campaign(tmp_path)), "-q", "--site", str(site)]


def _no_references(tmp_path):
    return ["validate", str(_campaign(tmp_path, hull={"model_references": False}))]


def _nan_reference_entry(tmp_path):
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    dumpfn([ComputedEntry("LiF", float("nan"))], tmp_path / "refs.json")
    return ["validate", str(_campaign(tmp_path, hull={"reference_entries": "refs.json"}))]


def _missing_model_file(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["model"] = {"name": "mace", "path": "nowhere.model"}
    return ["validate", str(write_campaign(tmp_path, data))]


def _empty_source(tmp_path):
    return [
        "validate",
        str(_campaign(tmp_path, candidates={"kind": "files", "path": "nothing/*.cif"})),
    ]


def _hash_changed(tmp_path):
    _store(tmp_path)
    return ["run", str(_campaign(tmp_path, seed=5)), "-q", "--engine", "serial"]


def _verify_damaged(tmp_path):
    store = _store(tmp_path)
    (store / "energy" / "c" / "0" / "0").unlink()
    return ["verify", str(store)]


def _teacher(tmp_path, model: dict, command: str = "validate", **overrides) -> list[str]:
    """The LJ campaign with an ``ase`` teacher (rescore stage)."""
    data = lj_campaign(tmp_path, limits={"max_candidates": 4}, **overrides)
    data["stages"]["prefilter"]["keep"] = "e_above_hull <= 10"
    data["stages"]["rescore"] = {"model": {"name": "ase", **model}}
    args = [command, str(write_campaign(tmp_path, data))]
    return args + (["-q", "--engine", "serial"] if command == "run" else [])


def _entries_for_every_element(tmp_path) -> dict:
    """hull settings whose references come from a file, so no reference relaxation loads a model."""
    from monty.serialization import dumpfn
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    els = ["Li", "Na", "K", "Mg", "Ca", "Sr", "O", "S", "F", "Cl"]
    dumpfn([PDEntry(Composition(el), -1.0) for el in els], tmp_path / "refs.json")
    return {"model_references": False, "reference_entries": "refs.json"}


def _calculator_module_missing(tmp_path):
    return _teacher(tmp_path, {"calculator": "no_such_pkg.calc:Thing"})


def _calculator_attribute_missing(tmp_path):
    return _teacher(tmp_path, {"calculator": "ase.calculators.emt:EMTX"})


def _calculator_not_a_path(tmp_path):
    return _teacher(tmp_path, {"calculator": "ase.calculators.emt.EMT"})


def _calculator_factory_raises(tmp_path):
    return _teacher(tmp_path, {"calculator": "tests.models.calculators:missing_weights"}, "run")


def _calculator_not_a_calculator(tmp_path):
    model = {"calculator": "collections:OrderedDict"}
    # references from a file: the stage's own task is where the model first loads
    return _teacher(tmp_path, model, "run", hull=_entries_for_every_element(tmp_path))


def _calculator_kwargs_rejected(tmp_path):
    model = {"calculator": "tests.models.calculators:from_checkpoint", "kwargs": {"path": "x"}}
    return _teacher(tmp_path, model)


def _calculator_kwarg_misspelt(tmp_path):
    model = {"calculator": "ase.calculators.lj:LennardJones", "kwargs": {"sigm": 2.0}}
    return _teacher(tmp_path, model)


def _calculator_class_without_stress(tmp_path):
    return _teacher(tmp_path, {"calculator": "ase.calculators.test:TestPotential"})


def _calculator_without_stress_found_on_load(tmp_path):
    model = {"calculator": "tests.models.calculators:emt_without_stress"}
    return _teacher(tmp_path, model, "run")


# case -> (build the command line, words the message must hold)
CASES = {
    "campaign not UTF-8": (_non_utf8, "UTF-8"),
    "a key given twice": (_duplicate_key, "given twice"),
    "store path is a file": (_store_is_a_file, "is a file; refusing to overwrite it"),
    "store on /proc": (_store_in_proc, "cannot write here"),
    "root zarr.json truncated": (_truncated_root, "zarr.json is unreadable"),
    "status of a folder that is no store": (_not_a_store, "no hts store here"),
    "export --out a file": (_export_to_a_file, "is a file; give a folder"),
    "dashboard --port 99999": (_port_out_of_range, "less than or equal to 65535"),
    "site file that is a campaign": (_site_not_a_site, "problem(s) in the site file"),
    "site with workers: 0": (_site_zero_workers, "must be auto or a number of workers"),
    "no elemental reference at all": (_no_references, "no elemental reference"),
    "reference entry with NaN energy": (_nan_reference_entry, "without a finite energy"),
    "model file missing": (_missing_model_file, "nowhere.model"),
    "source matches no file": (_empty_source, "matches no"),
    "campaign changed under its store": (_hash_changed, "its settings changed"),
    "a chunk file deleted": (_verify_damaged, "chunk file missing"),
    "ase: calculator's module missing": (
        _calculator_module_missing,
        "stages.rescore.model.calculator: cannot import 'no_such_pkg.calc': No module named "
        "'no_such_pkg'",
    ),
    "ase: calculator's factory missing": (
        _calculator_attribute_missing,
        "stages.rescore.model.calculator: 'ase.calculators.emt' has no attribute 'EMTX'",
    ),
    "ase: calculator not module:factory": (
        _calculator_not_a_path,
        "stages.rescore.model.calculator: 'ase.calculators.emt.EMT' is not 'package.module:factory'",
    ),
    "ase: the factory raises": (
        _calculator_factory_raises,
        "stages.rescore.model.calculator: tests.models.calculators:missing_weights() raised "
        "FileNotFoundError: checkpoint uma-s-1.pt not found",
    ),
    "ase: the factory returns no calculator": (
        _calculator_not_a_calculator,
        "stages.rescore.model.calculator: collections:OrderedDict returned a "
        "collections.OrderedDict, not an ASE calculator",
    ),
    "ase: kwargs the factory does not take": (
        _calculator_kwargs_rejected,
        "stages.rescore.model.kwargs: do not fit tests.models.calculators:from_checkpoint(checkpoint, "
        "device='cpu'): missing a required argument: 'checkpoint'",
    ),
    "ase: a kwarg the calculator does not know": (
        _calculator_kwarg_misspelt,
        "stages.rescore.model.kwargs: ase.calculators.lj:LennardJones has no parameter 'sigm'",
    ),
    "ase: no stress, cell relaxed (class)": (
        _calculator_class_without_stress,
        "stages.rescore.model.calculator: ase.calculators.test:TestPotential gives no stress "
        "(implemented_properties: energy, forces), which relaxing the cell needs "
        "(stages.rescore.relax.cell is true)",
    ),
    "ase: no stress, cell relaxed (found on load)": (
        _calculator_without_stress_found_on_load,
        "stages.rescore.model.calculator: tests.models.calculators:emt_without_stress gives no "
        "stress",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error_not_a_traceback(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    build, words = CASES[case]
    args = build(tmp_path)
    res = CliRunner().invoke(app, args)
    text = res.output
    assert res.exit_code in (1, 2), f"{case}: exit {res.exit_code}\n{text}"
    assert isinstance(res.exception, SystemExit), f"{case}: {res.exception!r}"
    assert "Traceback" not in text
    assert words in " ".join(text.split()), f"{case}: {json.dumps(text)}"
