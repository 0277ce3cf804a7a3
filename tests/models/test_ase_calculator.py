"""``name: ase``: any ASE calculator behind the model interface, and each way it can go wrong."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hts.models import get_model, load_model
from hts.models.ase_calculator import ModelSpecError, check_calculator, require_stress
from hts.models.base import Model
from hts.spec import ModelSpec
from tests.models.test_models import _in_threads, _structures, tiny_mace


def _ase(calculator: str, **fields) -> ModelSpec:
    return ModelSpec(name="ase", calculator=calculator, **fields)


def _metals():
    out = [bulk("Cu", a=3.7), bulk("CuAu", "rocksalt", a=5.2), bulk("Ni", a=3.5) * (2, 1, 1)]
    for k, a in enumerate(out):
        a.rattle(0.05, seed=k)
    return out


def test_emt_through_ase_equals_the_shipped_emt():
    ours = load_model(_ase("ase.calculators.emt:EMT"))
    shipped = load_model(ModelSpec(name="emt"))
    assert isinstance(ours, Model) and ours.name == "ase"
    assert ours.version.startswith("ase.calculators.emt:EMT (ase ")
    for p, q in zip(ours.predict(_metals()), shipped.predict(_metals()), strict=True):
        assert p.energy == q.energy
        np.testing.assert_array_equal(p.forces, q.forces)
        np.testing.assert_array_equal(p.stress, q.stress)


def test_factory_kwargs_reach_the_calculator():
    from ase.calculators.lj import LennardJones

    spec = _ase(
        "ase.calculators.lj:LennardJones", kwargs={"sigma": 2.3, "epsilon": 0.05, "rc": 6.0}
    )
    model = load_model(spec)
    assert model.version.startswith(
        "ase.calculators.lj:LennardJones(epsilon=0.05, rc=6.0, sigma=2.3) (ase "
    )
    ref = LennardJones(sigma=2.3, epsilon=0.05, rc=6.0)
    for s, p in zip(_metals(), model.predict(_metals()), strict=True):
        s.calc = ref
        assert p.energy == pytest.approx(s.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(p.stress, s.get_stress(), atol=1e-12)
    default = load_model(_ase("ase.calculators.lj:LennardJones")).predict(_metals()[:1])[0]
    assert default.energy != pytest.approx(model.predict(_metals()[:1])[0].energy)


def test_a_foundation_model_package_through_its_ase_calculator(tmp_path):
    """MACE's own ASE calculator on a model file gives what hts's MACE loader gives."""
    path = str(tiny_mace(tmp_path / "tiny.model"))
    spec = _ase(
        "mace.calculators:MACECalculator",
        kwargs={"model_paths": path, "device": "cpu", "default_dtype": "float64"},
    )
    check_calculator(spec, "relax.cell is true")
    ours = load_model(spec)
    assert ours.has_stress and "(mace-torch " in ours.version
    mace = load_model(ModelSpec(name="mace", path=path, device="cpu"))
    structures = _structures()
    for p, q in zip(ours.predict(structures), mace.predict(structures), strict=True):
        assert p.energy == pytest.approx(q.energy, abs=1e-6)
        np.testing.assert_allclose(p.forces, q.forces, atol=1e-6)
        np.testing.assert_allclose(p.stress, q.stress, atol=1e-7)


def test_elements_limit_what_the_model_takes():
    model = load_model(_ase("ase.calculators.emt:EMT", elements=["Cu", "Au"]))
    assert model.unsupported([29, 79]) is None
    assert "Na" in model.unsupported([11, 29]) and "ase.calculators.emt:EMT" in model.unsupported(
        [11]
    )
    assert load_model(_ase("ase.calculators.emt:EMT")).unsupported([11, 17]) is None  # all


def test_one_calculator_per_thread():
    spec = _ase("ase.calculators.emt:EMT", batch_size=13)
    a, b = _in_threads(lambda: (get_model(spec), get_model(spec)))
    assert a[0] is a[1] and b[0] is b[1] and a[0] is not b[0]
    assert a[0].calculator() is not b[0].calculator()


def test_a_calculator_without_stress_gives_nan_stress_and_refuses_a_cell_relaxation():
    model = load_model(_ase("tests.models.calculators:emt_without_stress"))
    p = model.predict(_metals()[:1])[0]
    assert np.isfinite(p.energy) and np.isfinite(p.forces).all() and np.isnan(p.stress).all()
    with pytest.raises(
        ModelSpecError, match=r"gives no stress .*needs \(relax.cell is true\)"
    ) as info:
        require_stress(model, "relax.cell is true")
    assert info.value.field == "calculator"
    require_stress(load_model(ModelSpec(name="emt")), "relax.cell is true")  # shipped: pass


def test_a_calculator_class_without_stress_is_refused_before_loading():
    spec = _ase("ase.calculators.test:TestPotential")
    check_calculator(spec, None)  # nothing relaxes the cell: fine
    with pytest.raises(ModelSpecError, match=r"implemented_properties: energy, forces"):
        check_calculator(spec, "stages.rescore.relax.cell is true")


@pytest.mark.parametrize(
    ("calculator", "kwargs", "field", "words"),
    [
        ("no_such_pkg.calc:Thing", {}, "calculator", "cannot import 'no_such_pkg.calc': No module"),
        (
            "ase.calculators.emt:EMTX",
            {},
            "calculator",
            "'ase.calculators.emt' has no attribute 'EMTX'",
        ),
        (
            "ase.calculators.emt:EMT.nope",
            {},
            "calculator",
            "'ase.calculators.emt:EMT' has no attribute",
        ),
        ("ase.calculators.emt:parameters", {}, "calculator", "is a dict, not a class or function"),
        (
            "tests.models.calculators:from_checkpoint",
            {"path": "x"},
            "kwargs",
            "missing a required argument",
        ),
        ("ase.calculators.lj:LennardJones", {"sigm": 2.0}, "kwargs", "has no parameter 'sigm'"),
    ],
)
def test_what_can_be_checked_before_loading(calculator, kwargs, field, words):
    spec = _ase(calculator, kwargs=kwargs)
    with pytest.raises(ModelSpecError) as info:
        check_calculator(spec, None)
    assert info.value.field == field and words in info.value.message
    with pytest.raises(ModelSpecError):  # a worker that loads it without a preflight says the same
        load_model(spec)


def test_what_only_loading_can_tell():
    with pytest.raises(ModelSpecError, match=r"missing_weights\(\) raised FileNotFoundError"):
        load_model(_ase("tests.models.calculators:missing_weights"))
    with pytest.raises(ModelSpecError, match="returned a collections.OrderedDict, not an ASE"):
        load_model(_ase("collections:OrderedDict"))
    ok = _ase("tests.models.calculators:from_checkpoint", kwargs={"checkpoint": "x.pt"})
    check_calculator(ok, "relax.cell is true")  # a function: its stress is known once loaded
    assert load_model(ok).has_stress


def test_the_error_pickles_for_the_trip_back_from_a_worker():
    import pickle

    err = pickle.loads(pickle.dumps(ModelSpecError("kwargs", "no")))
    assert (
        err.field == "kwargs"
        and err.at("stages.rescore.model") == "stages.rescore.model.kwargs: no"
    )
