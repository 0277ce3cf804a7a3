"""MLIP loaders behind one interface (see :mod:`hts.models.base`).

``load_model(spec)`` builds a model from a campaign's ``model`` section;
``get_model(spec)`` returns one that stays loaded for the life of the worker
thread, so tasks after the first pay nothing for loading.  Every loader imports
its ML package only when called.
"""

from __future__ import annotations

import json
import os
import threading

from hts.models.base import CalculatorModel, Model, Prediction, configure_threads, resolve_device

__all__ = ["Model", "Prediction", "get_model", "load_model"]

_local = threading.local()
# Loading compiles TorchScript (e3nn, sevenn), and torch.jit's compiler is not
# thread-safe: two worker threads loading at once fail in its overload table.
_load_lock = threading.Lock()


def load_model(spec) -> Model:
    """A fresh model for a :class:`hts.spec.ModelSpec`; threads are configured first."""
    configure_threads(spec.threads, torch_model=_uses_torch(spec))
    if spec.name == "lennard-jones":
        from hts.models.analytic import LennardJonesModel

        return LennardJonesModel()
    if spec.name == "emt":
        import ase
        from ase.calculators.emt import EMT, parameters

        return CalculatorModel("emt", f"ase {ase.__version__}", EMT, set(parameters))
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
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
    raise ValueError(f"unknown model {spec.name!r}")


def get_model(spec) -> Model:
    """The worker thread's loaded model for ``spec`` (loaded on first use, then kept)."""
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    if key not in cache:
        with _load_lock:
            cache[key] = load_model(spec)
    configure_threads(spec.threads, torch_model=_uses_torch(spec))
    return cache[key]


def _uses_torch(spec) -> bool:
    return spec.name not in ("lennard-jones", "emt")
