"""The one interface every MLIP (and every analytic stand-in) implements.

A model takes a *batch* of structures and returns energy, forces and stress
for each.  Models that can evaluate several structures in one call (CHGNet,
MACE, the analytic potential) do so in slices of ``batch_size``; the others
loop over their own ASE calculator.  Stress is always ASE's convention: Voigt
order (xx, yy, zz, yz, xz, xy), eV/Å³, negative under compression.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

log = logging.getLogger("hts.models")

__all__ = [
    "CalculatorModel",
    "Model",
    "ModelCalculator",
    "Prediction",
    "configure_threads",
    "resolve_device",
]


@dataclass(slots=True)
class Prediction:
    """One structure's energy (eV), forces (eV/Å, shape (n, 3)) and stress (eV/Å³, Voigt 6)."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray


@runtime_checkable
class Model(Protocol):
    """What a stage needs from an MLIP: a name for the store and batched predictions.

    A model may also say ``thread_safe = True``: one instance may then serve
    several threads of a worker at once (:func:`hts.models.get_model` shares it
    per process); without it each thread gets its own instance.
    """

    name: str
    version: str
    device: str

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        """Why this model cannot treat a structure with these elements, or None."""

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        """Energy, forces and stress of every structure in the batch."""

    def calculator(self) -> Calculator:
        """The model's own ASE calculator (for one-off work and cross-checks)."""


def voigt(stress) -> np.ndarray:
    """ASE's Voigt order (xx, yy, zz, yz, xz, xy) from a 3×3 tensor (or a Voigt 6-vector)."""
    s = np.asarray(stress, dtype=float)
    if s.shape == (6,):
        return s
    s = s.reshape(3, 3)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but torch sees no CUDA device on this worker")
    return device


_threads_lock = threading.Lock()
_threads: int | None = None  # what this process's OpenMP/torch threads were set to
_torch_pinned = False
_warned: set[int] = set()


def configure_threads(threads: int) -> int:
    """Pin torch and OpenMP to ``threads`` threads in this process, once; returns the count in force.

    Thread counts are process-wide (``OMP_NUM_THREADS``, ``torch.set_num_threads``),
    so they are set once per worker process — at its first model load — not per
    task: every thread of a pool shares them, and re-setting them from several
    threads while others compute would race.  A later request for a different
    count is logged once and ignored (the first stage's count holds; a process
    cannot have two).

    Measured on 2 busy cores: torch at 2 threads per process ran 10–100× slower
    than at 1, so the thread count is always set, never left to torch.  Every
    model needs torch, since relaxations run on tensors (:mod:`hts.stages.relax`),
    the analytic potentials and ASE's calculators included.
    """
    global _threads, _torch_pinned
    if _threads is not None and _torch_pinned:
        if threads != _threads:
            _differs(threads)
        return _threads
    with _threads_lock:
        if _threads is None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            os.environ.setdefault("MKL_NUM_THREADS", str(threads))
            _threads = threads
        elif threads != _threads:
            _differs(threads)
        if not _torch_pinned:
            import torch

            if torch.get_num_threads() != _threads:
                torch.set_num_threads(_threads)
            # can only be set once per process, before any parallel work
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
            _torch_pinned = True
        return _threads


def _differs(threads: int) -> None:
    if threads not in _warned:
        _warned.add(threads)
        log.warning(
            "model.threads %d asked for, but this worker process already runs at %d torch/OpenMP "
            "threads (set once per process, by its first model); give its stages one thread count",
            threads,
            _threads,
        )


def _symbols(numbers: Sequence[int]) -> set[str]:
    from ase.data import chemical_symbols

    return {chemical_symbols[int(z)] for z in numbers}


def not_covered(numbers: Sequence[int], elements: set[str] | None, name: str) -> str | None:
    """Why a model trained on ``elements`` (None: all) cannot treat these atoms, or None."""
    missing = sorted(_symbols(numbers) - elements) if elements is not None else []
    if missing:
        return f"element(s) {', '.join(missing)} not covered by model {name}"
    return None


class CalculatorModel:
    """Any ASE calculator behind the model interface, one structure per call.

    Used for models without a batched entry point (ASE's EMT).  ``elements``
    is the set the model was trained on.  Not thread-safe: an ASE calculator
    keeps the last atoms and results on itself, so each thread has its own.
    """

    thread_safe = False

    def __init__(
        self,
        name: str,
        version: str,
        factory: Callable[[], Calculator],
        elements: set[str] | None,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.version = version
        self.device = device
        self.elements = elements
        self._factory = factory
        self._calc: Calculator | None = None

    def calculator(self) -> Calculator:
        if self._calc is None:
            self._calc = self._factory()
        return self._calc

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        return not_covered(numbers, self.elements, self.name)

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        calc = self.calculator()
        out = []
        for atoms in batch:
            a = atoms.copy()
            a.calc = calc
            out.append(
                Prediction(
                    energy=float(a.get_potential_energy()),
                    forces=np.array(a.get_forces(), dtype=float),
                    stress=np.array(a.get_stress(voigt=True), dtype=float),
                )
            )
        return out


def ModelCalculator(model: Model) -> Calculator:  # noqa: N802 - behaves as a class
    """An ASE calculator over any :class:`Model`, for code that wants ASE's interface."""
    from ase.calculators.calculator import Calculator, all_changes

    class _ModelCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            p = model.predict([self.atoms])[0]
            self.results = {
                "energy": p.energy,
                "free_energy": p.energy,
                "forces": p.forces,
                "stress": p.stress,
            }

    return _ModelCalculator()
