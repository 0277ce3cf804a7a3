"""Every loader behind one interface; batched predictions equal the model's own ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from hts.models import get_model, load_model
from hts.models.base import Model
from hts.spec import ModelSpec


def _structures():
    s = [
        bulk("NaCl", "rocksalt", a=5.6),
        bulk("Cu", a=3.6),
        bulk("MgO", "rocksalt", a=4.2) * (2, 1, 1),
        bulk("LiF", "rocksalt", a=4.0),
    ]
    for k, a in enumerate(s):
        a.rattle(0.05, seed=k)
    return s


def _matches_calculator(model, structures, atol_e=1e-5, atol_f=1e-4, atol_s=1e-5):
    preds = model.predict(structures)
    calc = model.calculator()
    for s, p in zip(structures, preds, strict=True):
        a = s.copy()
        a.calc = calc
        assert p.forces.shape == (len(a), 3) and p.stress.shape == (6,)
        assert abs(a.get_potential_energy() - p.energy) < atol_e
        np.testing.assert_allclose(p.forces, a.get_forces(), atol=atol_f)
        np.testing.assert_allclose(p.stress, a.get_stress(), atol=atol_s)


def tiny_mace(path, atomic_numbers=(1, 3, 8, 9, 11, 12, 17, 29), correlation=2, max_ell=2):
    """An untrained two-layer MACE saved like a foundation-model file (stands in for one)."""
    import torch
    from e3nn import o3
    from mace import modules

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        model = modules.MACE(
            r_max=4.0,
            num_bessel=4,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=2,
            num_elements=len(atomic_numbers),
            hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.linspace(-1, -3, len(atomic_numbers)),
            avg_num_neighbors=8.0,
            atomic_numbers=list(atomic_numbers),
            correlation=correlation,
            gate=torch.nn.functional.silu,
        )
        torch.save(model, path)
    finally:
        torch.set_default_dtype(old)
    return path


def test_lennard_jones_forces_and_stress_are_gradients():
    model = load_model(ModelSpec(name="lennard-jones"))
    a = bulk("NaCl", "rocksalt", a=5.0) * (2, 1, 1)
    a.rattle(0.05, seed=1)
    a.calc = model.calculator()
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    np.testing.assert_allclose(a.get_forces(), calculate_numerical_forces(a, 1e-5), atol=1e-7)
    np.testing.assert_allclose(a.get_stress(), calculate_numerical_stress(a, 1e-6), atol=1e-8)


def test_emt_covers_only_its_elements():
    model = load_model(ModelSpec(name="emt"))
    assert isinstance(model, Model)
    assert model.unsupported([29, 79]) is None
    assert "Na" in model.unsupported([11, 17])


def test_sevennet0_batched_equals_its_calculator():
    model = load_model(ModelSpec(name="sevennet-0", batch_size=3))
    assert model.name == "sevennet-0" and "7net-0" in model.version
    assert model.unsupported([11, 17]) is None
    assert model.unsupported([100]) is not None  # Fm is not in its training set
    _matches_calculator(model, _structures())  # 4 structures of 1-4 atoms: a batch of 3, then 1


def test_sevennet_l3i5():
    model = load_model(ModelSpec(name="sevennet-l3i5"))
    assert "7net-l3i5" in model.version
    e = model.predict([bulk("Si", "diamond", a=5.43)])[0].energy
    assert -12.0 < e < -9.0  # ≈ -5.4 eV/atom, as DFT (PBE) for silicon


def test_chgnet_batched_equals_its_calculator():
    model = load_model(ModelSpec(name="chgnet", batch_size=3))
    assert model.version.startswith("0.3.0")
    _matches_calculator(model, _structures(), atol_e=1e-4, atol_f=1e-4, atol_s=1e-5)


def test_mace_file_batched_equals_its_calculator(tmp_path):
    path = tiny_mace(tmp_path / "tiny.model")
    model = load_model(ModelSpec(name="mace", path=str(path), batch_size=3))
    _matches_calculator(model, _structures(), atol_e=1e-6, atol_f=1e-6, atol_s=1e-7)
    assert "Fe" in model.unsupported([26])


def test_worker_cache_keeps_the_model():
    spec = ModelSpec(name="emt")
    assert get_model(spec) is get_model(spec)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device (run with -m gpu on a GPU node)")
def test_cuda_device_is_used():
    model = load_model(ModelSpec(name="sevennet-0", device="auto"))
    assert model.device == "cuda"
    _matches_calculator(model, _structures()[:2], atol_e=1e-3, atol_f=1e-3, atol_s=1e-4)


def test_missing_or_corrupt_model_file_names_the_file(tmp_path):
    from hts.models.batched import ModelFileError

    missing = tmp_path / "student.model"
    with pytest.raises(ModelFileError, match=f"{missing}: model file not found"):
        load_model(ModelSpec(name="mace", path=str(missing)))
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"PK\x03\x04 this is not a complete model" * 10)
    with pytest.raises(ModelFileError, match=f"{corrupt}: cannot load as a MACE model"):
        load_model(ModelSpec(name="mace", path=str(corrupt)))
    # a truncated copy of a real model file (an interrupted download or copy)
    real = tiny_mace(tmp_path / "tiny.model")
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=f"{truncated}: cannot load"):
        load_model(ModelSpec(name="mace", path=str(truncated)))
    # something torch can load that is not a MACE model
    import torch

    other = tmp_path / "other.model"
    torch.save(torch.nn.Linear(2, 2), other)
    with pytest.raises(ModelFileError, match="not a MACE model"):
        load_model(ModelSpec(name="mace", path=str(other)))


def test_passes_respect_structure_and_atom_limits():
    from hts.models.batched import _passes

    sizes = [8, 8, 8, 40, 70, 8, 8, 8]
    cells = [bulk("Cu") * (1, 1, n) for n in sizes]
    parts = [[len(c) for c in p] for p in _passes(cells, 16, 64)]
    assert parts == [[8, 8, 8, 40], [70], [8, 8, 8]]  # a cell over the limit goes alone
    assert [len(p) for p in _passes(cells, 3, None)] == [3, 3, 2]
    assert sum(_passes(cells, 3, 64), []) == cells  # order kept, nothing lost


def _in_threads(fn, n: int = 2) -> list:
    """``fn()`` in ``n`` threads started together; their results in thread order."""
    import threading

    out: list = [None] * n
    start = threading.Barrier(n)

    def run(k):
        start.wait()
        out[k] = fn()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_models_safe_to_share_are_loaded_once_per_process(tmp_path):
    lj = ModelSpec(name="lennard-jones", batch_size=7)
    a, b = _in_threads(lambda: get_model(lj))
    assert a is b is get_model(lj)  # one instance for every thread of the worker
    mace = ModelSpec(name="mace", path=str(tiny_mace(tmp_path / "tiny.model")), batch_size=5)
    a, b = _in_threads(lambda: get_model(mace))
    assert a is b and a.thread_safe
    # an ASE calculator keeps state on itself: one per thread, kept across that thread's tasks
    emt = ModelSpec(name="emt", batch_size=9)
    a, b = _in_threads(lambda: (get_model(emt), get_model(emt)))
    assert a[0] is a[1] and b[0] is b[1] and a[0] is not b[0]


def test_threads_are_set_once_per_process(monkeypatch, caplog):
    import torch

    from hts.models.base import configure_threads

    spec = ModelSpec(name="lennard-jones", batch_size=11)
    get_model(spec)
    n = configure_threads(spec.threads)
    assert torch.get_num_threads() == n
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda k: calls.append(k))
    for _ in range(5):
        get_model(spec)
        get_model(ModelSpec(name="emt", batch_size=12))  # a new model, the same process
    assert calls == []  # not per task, not per load
    with caplog.at_level("WARNING", logger="hts.models"):
        assert configure_threads(n + 1) == n
    assert calls == [] and torch.get_num_threads() == n
    assert f"already runs at {n}" in caplog.text


def test_a_shared_mace_model_predicts_in_threads_as_alone(tmp_path):
    """Two threads on one model, each starting with elements no pass has seen (lazy caches)."""
    import itertools

    from hts.models.batched import MaceModel

    path = str(tiny_mace(tmp_path / "tiny.model"))
    s = _structures()
    batches = [[s[0], s[3]], [s[1], s[2]]]  # NaCl+LiF, Cu+MgO: disjoint elements
    alone = [MaceModel(path, "cpu", 4, "float64").predict(b) for b in batches]
    shared = MaceModel(path, "cpu", 4, "float64")
    order = itertools.count()

    def run():
        first = next(order) % 2  # one thread starts with each batch
        return {k: shared.predict(batches[k]) for k in (first, 1 - first)}

    for got in _in_threads(run):
        for k, ref in enumerate(alone):
            for r, g in zip(ref, got[k], strict=True):
                assert abs(r.energy - g.energy) < 1e-10
                np.testing.assert_allclose(g.forces, r.forces, atol=1e-10)
                np.testing.assert_allclose(g.stress, r.stress, atol=1e-12)
    assert shared._seen == {3, 8, 9, 11, 12, 17, 29}
