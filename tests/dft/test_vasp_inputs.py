"""VASP, the production path, cannot run here: check the inputs hts would give it.

Each check compares what :func:`hts.dft.codes.write_vasp_inputs` writes with
atomate2's own input set for the same maker and structure, and pins the
physics that matters (MP-compatible PBE, +U on transition-metal oxides, the
POTCAR symbols, the relaxation's stopping criteria).
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Incar, Kpoints

from hts.dft.codes import flow, write_vasp_inputs
from hts.spec import ValidateStage


def _rocksalt(a: str, x: str, lattice: float) -> Structure:
    return Structure(Lattice.cubic(lattice), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _settings(**kw) -> dict:
    return ValidateStage(code="vasp", vasp=kw).vasp.model_dump(mode="json")


def _written(tmp_path, structure, settings, relax=None):
    d = tmp_path / "inputs"
    write_vasp_inputs(structure, settings, d, relax=relax)
    symbols = (d / "POTCAR.spec").read_text().split()
    return Incar.from_file(d / "INCAR"), Kpoints.from_file(d / "KPOINTS"), symbols


def test_static_inputs_are_atomate2s_mp_gga_set(tmp_path):
    from atomate2.vasp.jobs.mp import MPGGAStaticMaker

    s = _rocksalt("Mg", "O", 4.21)
    incar, kpoints, symbols = _written(tmp_path, s, _settings())
    ref = MPGGAStaticMaker().input_set_generator.get_input_set(s, potcar_spec=True)
    assert dict(incar) == dict(ref["INCAR"])
    assert kpoints.kpts == ref["KPOINTS"].kpts
    assert symbols == ref["POTCAR.spec"].split() == ["Mg_pv", "O"]
    assert incar["NSW"] == 0 and incar["ENCUT"] == 520 and incar.get("GGA", "PE").upper() == "PE"


def test_transition_metal_oxides_get_mp_hubbard_u(tmp_path):
    incar, _, symbols = _written(tmp_path, _rocksalt("Fe", "O", 4.3), _settings())
    assert incar["LDAU"] is True
    assert 5.3 in incar["LDAUU"]  # MP's U for Fe in oxides (eV)
    assert symbols == ["Fe_pv", "O"]


def test_relaxation_and_incar_updates(tmp_path):
    settings = _settings(incar_updates={"ENCUT": 700, "KPAR": 2})
    relax = {"fmax": 0.02, "max_steps": 80, "cell": True}
    incar, _, _ = _written(tmp_path, _rocksalt("Na", "Cl", 5.6), settings, relax=relax)
    assert incar["EDIFFG"] == pytest.approx(-0.02)
    assert incar["NSW"] == 80 and incar["ISIF"] == 3
    assert incar["ENCUT"] == 700 and incar["KPAR"] == 2
    relax["cell"] = False
    incar, _, _ = _written(tmp_path, _rocksalt("Na", "Cl", 5.6), settings, relax=relax)
    assert incar["ISIF"] == 2


def test_atomate2_input_set_is_pbesol(tmp_path):
    incar, _, _ = _written(tmp_path, _rocksalt("Na", "Cl", 5.6), _settings(input_set="atomate2"))
    assert incar["GGA"].upper() == "PS"


def test_vasp_flow_is_relax_then_static():
    s = _rocksalt("Na", "Cl", 5.6)
    stage = ValidateStage(code="vasp")
    request = {
        "code": "vasp",
        "workflow": "relax_static",
        "settings": stage.vasp.model_dump(mode="json"),
        "relax": stage.relax.model_dump(mode="json"),
        "structure": s.as_dict(),
    }
    f = flow(request)
    assert [j.name for j in f.jobs] == ["MP GGA relax", "MP GGA static"]
    request["workflow"] = "static"
    assert [j.name for j in flow(request).jobs] == ["MP GGA static"]
