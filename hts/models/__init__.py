"""MLIP loaders behind one interface (see :mod:`hts.models.base`).

``load_model(spec)`` builds a model from a campaign's ``model`` section;
``get_model(spec)`` returns one that stays loaded for the life of the worker
process, so tasks after the first pay nothing for loading.  Every loader imports
its ML package only when called.

The cache is per process, keyed by the spec: a model that is safe to share
(``thread_safe``: MACE files, the analytic potential) is loaded once and
serves every thread of a pool; one that is not (ASE calculators keep state on
themselves, ``ase`` models included; CHGNet and SevenNet are not checked for
it) gets one instance per thread.  Either way the torch/OpenMP thread count is
set once per process, at the first load (:func:`hts.models.base.configure_threads`).
"""

from __future__ import annotations

import json
import os
import threading

from hts.models.base import CalculatorModel, Model, Prediction, configure_threads, resolve_device

__all__ = ["Model", "Prediction", "get_model", "load_model"]

# one instance per spec for the whole process (models that say thread_safe) …
_shared: dict[str, Model] = {}
# … and per thread for the others; the keys known to need that
_local = threading.local()
_per_thread: set[str] = set()
# Loading compiles TorchScript (e3nn, sevenn), and torch.jit's compiler is not
# thread-safe: two worker threads loading at once fail in its overload table.
# The same lock makes "load once per process" hold for shared models.
_load_lock = threading.Lock()


def load_model(spec) -> Model:
    """A fresh model for a :class:`hts.spec.ModelSpec`; threads are configured first."""
    # every model relaxes through torch tensors (hts.stages.relax): pin torch's threads first
    configure_threads(spec.threads)
    if spec.name == "lennard-jones":
        from hts.models.analytic import LennardJonesModel

        return LennardJonesModel()
    if spec.name == "emt":
        import ase
        from ase.calculators.emt import EMT, parameters

        return CalculatorModel("emt", f"ase {ase.__version__}", EMT, set(parameters))
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if spec.name == "ase":
        from hts.models.ase_calculator import load_ase

        return load_ase(spec)
    device = resolve_device(spec.device)
    if spec.name in ("sevennet-0", "sevennet-l3i5"):
        from hts.models.batched import SevennetModel

        # with torch ≥ 2.6, e3nn 0.4.4's constants.pt only loads with weights_only off;
        # set above, before sevenn/e3nn are first imported
        return SevennetModel(spec.name, device, spec.batch_size)
    if spec.name == "chgnet":
        from hts.models.batched import ChgnetModel

        return ChgnetModel(device, spec.batch_size)
    if spec.name == "mace":
        from hts.models.batched import MaceModel

        return MaceModel(spec.path, device, spec.batch_size, spec.dtype)
    if spec.name == "student":  # a trunk student, or a MACE student (hts distill writes both)
        from hts.models.student import StudentModel, is_trunk_student

        if is_trunk_student(spec.path):
            return StudentModel(spec.path, device, spec.batch_size)
        from hts.models.batched import MaceModel

        return MaceModel(spec.path, device, spec.batch_size, spec.dtype)
    raise ValueError(f"unknown model {spec.name!r}")


def get_model(spec) -> Model:
    """The worker's loaded model for ``spec``: loaded on first use, then kept.

    Shared by every thread of the process when the model is ``thread_safe``,
    else one per thread.  After the first load this is a dictionary look-up:
    no thread configuration, no lock.
    """
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    model = _shared.get(key)
    if model is not None:
        return model
    mine = getattr(_local, "models", None)
    if mine is None:
        mine = _local.models = {}
    if key in mine:
        return mine[key]
    with _load_lock:
        model = _shared.get(key)
        if model is not None:
            return model
        model = load_model(spec)
        if key not in _per_thread and _shareable(model):
            _shared[key] = model
        else:
            _per_thread.add(key)
            mine[key] = model
    return model


def _shareable(model) -> bool:
    """Whether one instance may serve several threads at once (see the module docstring)."""
    # the analytic potential keeps no state between calls (hts/models/analytic.py)
    return bool(getattr(model, "thread_safe", model.name == "lennard-jones"))
