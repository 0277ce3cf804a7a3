"""The random source: pyxtal's symmetric random crystals, one reproducible draw at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hts.candidates import build_unit, open_source, source_id
from hts.candidates.random_crystals import Draw, RandomSpace
from hts.spec import CampaignError, parse_campaign
from tests.conftest import lj_campaign

MGO = {"Mg": 1, "O": 1}
SIO2 = {"Si": 1, "O": 2}


def _campaign(tmp_path, seed: int = 0, **source):
    cand = {"kind": "random", "compositions": [MGO], **source}
    return parse_campaign(lj_campaign(tmp_path, candidates=cand, seed=seed))


def _space(tmp_path, seed: int = 0, **source) -> RandomSpace:
    space = open_source(_campaign(tmp_path, seed, **source))
    assert isinstance(space, RandomSpace)
    return space


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"space_groups": [231]}, "231 is out of range"),
        ({"space_groups": [0, 5]}, "out of range"),
        ({"compositions": [{"Mg": 1, "Xx": 1}]}, "'Xx' is not a chemical element"),
        ({"compositions": [{"Mg": 0, "O": 1}]}, "compositions.0.Mg: need a whole number >= 1"),
        ({"formula_units": [4, 2]}, "need 1 <= low <= high <= 64"),
    ],
)
def test_bad_source_is_refused_with_its_field(tmp_path, source, message):
    with pytest.raises(CampaignError) as err:
        _campaign(tmp_path, **source)
    assert "candidates.random." in str(err.value)
    assert message in str(err.value)


def test_mgo_z1_in_fm3m_is_rocksalt(tmp_path):
    import spglib

    space = _space(tmp_path, space_groups=[225], formula_units=[1, 2], per_group=2)
    cands = list(space)
    assert len(cands) == space.count() == 4
    assert all(not c.error and c.formula == "MgO" and c.chemsys == "Mg-O" for c in cands)
    assert all(c.prototype == "Fm-3m(225)" for c in cands)
    assert cands[0].source == "random:MgO:Z=1:Fm-3m(225):0"
    rocksalt = [c for c in cands if ":Z=1:" in c.source]
    for c in rocksalt:  # Mg on 4a, O on 4b: the only way to place one MgO per primitive cell
        assert c.n_atoms == 2
        frac = c.positions @ np.linalg.inv(c.cell)
        assert spglib.get_symmetry_dataset((c.cell, frac, c.numbers), symprec=1e-3).number == 225
        a = np.cbrt(abs(np.linalg.det(c.cell)) * 4)  # conventional cube edge
        assert c.nearest == pytest.approx(a / 2)  # rocksalt: Mg-O is half the cube edge


def test_same_seed_same_crystal_other_seed_another(tmp_path):
    source = {"compositions": [SIO2], "space_groups": [14], "formula_units": 2}
    d = Draw(0, 2, 14, 1)
    a = _space(tmp_path, seed=7, **source).candidate(d)
    b = _space(tmp_path, seed=7, **source).candidate(d)
    c = _space(tmp_path, seed=8, **source).candidate(d)
    assert not a.error and a.formula == "O2Si"
    assert a.id == b.id and a.source == b.source
    for x, y in ((a.numbers, b.numbers), (a.positions, b.positions), (a.cell, b.cell)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()  # bitwise, not approximately
    assert a.numbers.dtype == np.int64
    assert c.id != a.id and not np.allclose(c.cell, a.cell)
    # another index of the same stratum is another crystal too
    assert _space(tmp_path, seed=7, **source).candidate(Draw(0, 2, 14, 0)).id != a.id


def test_group_that_cannot_hold_the_composition_is_skipped(tmp_path):
    # SiO2 at Z=1 in body-centred Im-3m is Si2 O4 in the conventional cell, and no set of
    # 229's Wyckoff positions (2a, 6b, 8c, 12d, ...) holds four oxygens.  (Three groups, as a
    # list of two numbers is a range.)
    space = _space(tmp_path, compositions=[SIO2], space_groups=[1, 2, 229], formula_units=1)
    assert space.strata() == [1, 1, 1]
    assert space.assignment_at(0, 0) == Draw(0, 1, 1, 0)
    assert space.assignment_at(2, 0) is None
    assert space.skipped() == [(SIO2, 1, 229)]
    assert space.count() == 2 == len(list(space.assignments()))
    units = space.units(chunk_size=10)
    assert [p[0] for u in units for p in u.pieces] == [0, 1]  # no task for the skipped group
    from hts.candidates.record import Unit

    assert space.unit_candidates(Unit(((2, 0, 1),))) == []
    # built anyway (by hand), it is a failed candidate saying why, not an exception
    c = space.candidate(Draw(0, 1, 229, 0))
    assert c.error.startswith("group 229 (Im-3m) has no Wyckoff positions that hold SiO2 (Z=1")
    assert c.id == source_id(c.source)


def test_generator_failure_is_a_failed_candidate(tmp_path, monkeypatch):
    import pyxtal

    def fail(self, *args, **kwargs):
        raise RuntimeError("long time to generate structure,\n check inputs")

    monkeypatch.setattr(pyxtal.pyxtal, "from_random", fail)
    space = _space(tmp_path, space_groups=[225], formula_units=1)
    (c,) = list(space)
    assert c.error == (
        "pyxtal could not place MgO (Z=1, {'Mg': 4, 'O': 4} per conventional cell) in group "
        "225 (Fm-3m): RuntimeError: long time to generate structure, check inputs"
    )
    assert c.id == source_id(c.source) and c.prototype == "Fm-3m(225)" and c.n_atoms == 0


def test_units_cover_exactly_the_draws(tmp_path):
    campaign = _campaign(
        tmp_path,
        seed=3,
        compositions=[MGO, SIO2],
        space_groups=[1, 2, 225, 229],
        formula_units=[1, 2],
        per_group=3,
    )
    space = open_source(campaign)
    everything = [c.source for c in space]
    assert len(everything) == space.count() == space.upper_bound()
    assert len(space.strata()) == 2 * 2 * 4 and space.skipped()
    assert len(space.skipped()) * 3 + space.count() == sum(space.strata())
    # as the driver hands them out: a few integers per task, built where the task runs
    source_json = json.dumps(campaign.candidates.model_dump(mode="json"))
    units = space.units(chunk_size=2)
    assert len(units) > 1
    built = [c.source for u in units for c in build_unit(source_json, campaign.base_dir, 3, u)]
    assert sorted(built) == sorted(everything) and len(set(built)) == len(built)
    # a stratum larger than a chunk is cut into slices
    assert any(parts > 1 for u in units for _, _, parts in u.pieces)


def test_system_assignments_pick_the_composition(tmp_path):
    space = _space(tmp_path, compositions=[MGO, SIO2], space_groups=[1, 2], formula_units=1)
    mg = space.system_assignments({"Mg", "O"})
    assert mg and all(d.comp == 0 for d in mg)
    assert {d.comp for d in space.system_assignments(["O", "Si"])} == {1}
    assert space.system_assignments({"O"}) == []
    assert space.formula_assignments("O2Si") == space.system_assignments({"O", "Si"})
    assert space.formula_assignments("OSi") == []
    assert space.candidate(space.formula_assignments("O2Si")[0]).formula == "O2Si"


def test_import_is_cheap():
    code = (
        "import sys, hts.candidates.random_crystals; "
        "print(any(m.split('.')[0] in ('pyxtal', 'pymatgen') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sigkill_resumes_every_crystal_once(tmp_path):
    """Killed mid-run, the rerun stores the same crystals a clean run stores, each once."""
    from typer.testing import CliRunner

    from hts.campaign import run_campaign
    from hts.cli import app
    from hts.execution.engine import SerialEngine
    from hts.store import open_dataset
    from tests.conftest import kill_run_after, write_campaign

    cand = {"kind": "random", "compositions": [MGO], "formula_units": [1, 2], "per_group": 1}
    cand["space_groups"] = [143, 230]  # trigonal to cubic: ~100 crystals
    data = lj_campaign(tmp_path, candidates=cand, chunk_size=8)
    data["stages"]["prefilter"]["relax"] = {"max_steps": 3}
    path = write_campaign(tmp_path, data)
    store = tmp_path / "lj.zarr"
    kill_run_after(path, store, 16, cwd=tmp_path)
    assert open_dataset(store).attrs["ledger"]["finalized"] is False
    res = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    ids = open_dataset(store).id.values.tolist()
    assert len(ids) == len(set(ids))

    clean = parse_campaign(data | {"store": str(tmp_path / "clean.zarr")}, base_dir=str(tmp_path))
    run_campaign(clean, SerialEngine())
    assert sorted(ids) == sorted(open_dataset(tmp_path / "clean.zarr").id.values.tolist())
