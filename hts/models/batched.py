"""Models that evaluate many structures in one forward pass (CHGNet, MACE, SevenNet).

The input dicts they feed their libraries are built in :mod:`hts.models.graphs`
(shared with the student and distillation) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hts.models.base import Prediction, _symbols, not_covered, voigt
from hts.models.graphs import mace_collate, mace_graph, mace_tensor_input, sevennet_graph

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "ChgnetModel",
    "MaceModel",
    "ModelFileError",
    "SevennetModel",
    "mace_collate",
    "mace_graph",
    "mace_tensor_input",
    "sevennet_graph",
]


class ChgnetModel:
    """CHGNet 0.3.0 (weights ship in the ``chgnet`` wheel), batched through ``predict_structure``.

    Not marked thread-safe (its graph converter is not checked for shared
    state), so each worker thread loads its own.
    """

    name = "chgnet"
    thread_safe = False

    def __init__(self, device: str, batch_size: int) -> None:
        import chgnet
        from chgnet.model import CHGNet

        self.version = f"0.3.0 (chgnet {chgnet.__version__})"
        self.device = device
        self.batch_size = batch_size
        self.model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
        self.model.eval()

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        bad = sorted(_symbols(z for z in numbers if not 1 <= int(z) <= 94))
        return f"element(s) {', '.join(bad)} not covered by model chgnet" if bad else None

    def calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=self.model, use_device=self.device)

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        from ase.units import GPa
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in batch]
        preds = self.model.predict_structure(structures, task="efs", batch_size=self.batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        out = []
        for a, p in zip(batch, preds, strict=True):
            n = len(a) if self.model.is_intensive else 1
            out.append(
                Prediction(
                    energy=float(p["e"]) * n,
                    forces=np.asarray(p["f"], dtype=float),
                    stress=voigt(np.asarray(p["s"], dtype=float) * GPa),  # CHGNet: GPa
                )
            )
        return out


class SevennetModel:
    """A pretrained SevenNet checkpoint (ships in the ``sevenn`` wheel), batched.

    sevenn's ASE calculator evaluates one structure per call; its model also
    takes a batch of graphs (that is how it is trained), so the batch is one
    forward and backward pass.  Energies, forces and stress equal the
    calculator's (tested).

    On a CPU each pass holds at most ``cpu_atoms`` atoms: SevenNet-0 is
    compute-bound there and large batches fall out of cache (measured on one
    thread, ms per structure: 8-atom cells 128 through the calculator, 66–71 in
    passes of 2–8 cells, 79 in passes of 16; 32-atom cells 263, 260 in passes of
    2, ~390 in passes of 4–16).
    """

    cpu_atoms = 64
    thread_safe = False  # not checked: sevenn's modules may keep per-call state

    checkpoints = {"sevennet-0": "7net-0", "sevennet-l3i5": "7net-l3i5"}

    def __init__(self, name: str, device: str, batch_size: int) -> None:
        import warnings

        from ase.data import chemical_symbols

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weights_only.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="e3nn")
            warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
            import sevenn
            import sevenn._keys as keys
            from sevenn import util

            checkpoint = self.checkpoints[name]
            model, config = util.model_from_checkpoint(util.pretrained_name_to_path(checkpoint))
        model.set_is_batch_data(True)
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.checkpoint = checkpoint
        self.name = name
        self.version = f"{checkpoint} (sevenn {sevenn.__version__})"
        self.device = device
        self.batch_size = batch_size
        self.cutoff = float(config[keys.CUTOFF])
        self.elements = {chemical_symbols[int(z)] for z in config[keys.TYPE_MAP]}
        self._calc = None

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        return not_covered(numbers, self.elements, self.name)

    def calculator(self):
        if self._calc is None:
            from sevenn.calculator import SevenNetCalculator

            self._calc = SevenNetCalculator(self.checkpoint, device=self.device)
        return self._calc

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        from hts.models.tensor import predict_via_tensors

        limit = self.cpu_atoms if self.device == "cpu" else None
        out: list[Prediction] = []
        for part in _passes(batch, self.batch_size, limit):
            out.extend(predict_via_tensors(self, part))
        return out

    def evaluate(self, b):
        """Energy, forces and stress of a :class:`~hts.models.tensor.TensorBatch`, on its device.

        The graph is sevenn's batched one, built on the device
        (:func:`hts.models.neighbors.neighbor_list`, same edges as sevenn's
        matscipy graph); on a CPU at most ``cpu_atoms`` atoms go through one pass.
        """
        import torch

        from hts.models.tensor import Evaluation, TensorBatch

        limit = self.cpu_atoms if self.device == "cpu" else None
        counts = b.counts.tolist()
        if limit is None or sum(counts) <= limit:
            return self._evaluate(b)
        parts = []
        offsets = np.concatenate([[0], np.cumsum(counts)])
        start = 0
        while start < len(counts):
            stop, n = start + 1, counts[start]
            while stop < len(counts) and n + counts[stop] <= limit:
                n += counts[stop]
                stop += 1
            a0, a1 = int(offsets[start]), int(offsets[stop])
            parts.append(
                self._evaluate(
                    TensorBatch(
                        b.positions[a0:a1],
                        b.cells[start:stop],
                        b.numbers[a0:a1],
                        b.batch[a0:a1] - start,
                        b.counts[start:stop],
                    )
                )
            )
            start = stop
        return Evaluation(
            *(torch.cat([getattr(p, k) for p in parts]) for k in Evaluation.__slots__)
        )

    def atomic(self, b):
        """Per-atom energies ``[N]`` (eV) and the features the readout reads ``[N, F]``, no forces.

        The labels a distilled student can learn beyond the total energy, from one
        forward pass (:func:`hts.distill.sample.label_chunk` calls it at the
        teacher's relaxed structure): sevenn's atomic energies sum to its total
        energy, and the features are the last interaction block's scalars.
        """
        import sevenn._keys as keys
        import torch

        data = sevennet_graph(b, self.cutoff)
        features = None
        with torch.no_grad():
            if self.model.eval_type_map:  # what the sequential's forward does first: Z → type index
                data[keys.NODE_FEATURE] = self.model._atomic_numbers_to_onehot(b.numbers)
            for name, module in self.model._modules.items():
                if name == "force_output":
                    break
                if name == "reduce_input_to_hidden":
                    features = data[keys.NODE_FEATURE].clone()
                data = module(data)
        energies = data[keys.ATOMIC_ENERGY].reshape(-1)
        return energies.to(b.positions.dtype), features

    def _evaluate(self, b):
        import sevenn._keys as keys
        import torch

        from hts.models.tensor import Evaluation

        res = self.model(sevennet_graph(b, self.cutoff))
        out = b.positions.dtype
        # sevenn: (xx, yy, zz, xy, yz, zx), positive under compression
        v = -res[keys.PRED_STRESS].detach().to(out)
        xx, yy, zz, xy, yz, zx = v.unbind(-1)
        stress = torch.stack(
            [
                torch.stack([xx, xy, zx], -1),
                torch.stack([xy, yy, yz], -1),
                torch.stack([zx, yz, zz], -1),
            ],
            -2,
        )
        return Evaluation(
            res[keys.PRED_TOTAL_ENERGY].detach().to(out).reshape(-1),
            res[keys.PRED_FORCE].detach().to(out),
            stress,
        )


def _passes(batch: Sequence[Atoms], structures: int, atoms: int | None):
    """Consecutive slices of at most ``structures`` structures and ``atoms`` atoms (≥ 1 each)."""
    start = 0
    while start < len(batch):
        stop, n = start + 1, len(batch[start])
        while stop < len(batch) and stop - start < structures:
            if atoms is not None and n + len(batch[stop]) > atoms:
                break
            n += len(batch[stop])
            stop += 1
        yield batch[start:stop]
        start = stop


class ModelFileError(ValueError):
    """A model file that is missing or cannot be read as a MACE model; the message names it."""


def _load_mace_file(path: str, device: str):
    """A MACE model from a pickled module (``*.model``) or a TorchScript file.

    A pickled module (what mace saves, what foundation models ship as, what
    ``hts distill`` names ``student.model``) only loads under the e3nn it was
    saved with, but its symmetric contractions can be folded for inference; a
    TorchScript file (``*_compiled.model``) loads anywhere and runs as it is.
    """
    import warnings
    import zipfile
    from pathlib import Path

    import torch

    with warnings.catch_warnings():  # e3nn 0.4.4's import-time torch.load notice
        warnings.simplefilter("ignore")
        import mace.modules  # noqa: F401  (registers the classes a pickled model needs)

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(p) as zf:
            scripted = any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except zipfile.BadZipFile:
        scripted = False  # very old torch pickle format; torch.load decides
    try:
        if scripted:
            model = torch.jit.load(str(p), map_location=device)
        else:
            model = torch.load(str(p), map_location=device, weights_only=False)
    except Exception as err:
        raise ModelFileError(
            f"{path}: cannot load as a MACE model ({type(err).__name__}: {str(err)[:200]}); "
            "is the file complete, and saved by mace-torch (a .model or *_compiled.model)?"
        ) from None
    for attr in ("atomic_numbers", "r_max"):
        if not hasattr(model, attr):
            raise ModelFileError(f"{path}: loads, but is not a MACE model (no {attr!r})")
    return model.to(device)


class MaceModel:
    """A MACE model file (a foundation model or a distilled student), batched forward passes.

    Thread-safe, so one instance serves every thread of a worker process
    (:func:`hts.models.get_model`): the weights are frozen and each forward
    pass builds its own graph.  The one shared state is the inference swaps'
    lazy per-element cache (:class:`~hts.models.mace_inference.FoldedContraction`
    folds an element's tensors on its first forward pass); a batch with an
    element no pass has seen yet runs under a lock, so each element's cache is
    built once, and batches of known elements run side by side unlocked.
    """

    name = "mace"
    thread_safe = True

    def __init__(self, path: str, device: str, batch_size: int, dtype: str) -> None:
        import threading

        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        model = _load_mace_file(path, device)
        model = model.double() if dtype == "float64" else model.float()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        from hts.models.mace_inference import optimize_for_inference

        optimize_for_inference(model)
        self.model = model
        self._seen: frozenset[int] = frozenset()  # elements whose lazy caches are built
        self._first_use = threading.Lock()
        self.atomic_numbers = [int(z) for z in model.atomic_numbers]
        self.r_max = float(model.r_max)
        self.heads = list(getattr(model, "heads", None) or ["Default"])
        # row of node_attrs for each Z, and the head a plain structure gets (as mace's AtomicData)
        self._z_index = np.full(max(self.atomic_numbers) + 1, -1)
        self._z_index[self.atomic_numbers] = np.arange(len(self.atomic_numbers))
        self._head = self.heads.index("Default") if "Default" in self.heads else len(self.heads) - 1
        self._rows = None  # z_index on the device, made at the first evaluation
        import mace

        self.version = f"{path} (mace-torch {getattr(mace, '__version__', '?')})"

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        bad = sorted(_symbols(z for z in numbers if int(z) not in self.atomic_numbers))
        return (
            f"element(s) {', '.join(bad)} not covered by model mace ({self.path})" if bad else None
        )

    def calculator(self):
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=self.path, device=self.device, default_dtype=self.dtype)

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        from hts.models.tensor import predict_via_tensors

        out: list[Prediction] = []
        for part in _passes(batch, self.batch_size, None):
            out.extend(predict_via_tensors(self, part))
        return out

    def evaluate(self, b):
        """Energy, forces and stress of a :class:`~hts.models.tensor.TensorBatch`, on its device.

        The graph is built on the device (:func:`hts.models.neighbors.neighbor_list`);
        positions are cast to the model's dtype and results back to the batch's.
        """
        elements = set(self._seen_of(b.numbers))
        if elements <= self._seen:
            return self._evaluate(b)
        with self._first_use:  # builds the new elements' caches, once
            out = self._evaluate(b)
            self._seen = self._seen | elements
        return out

    def _seen_of(self, numbers) -> frozenset[int]:
        return frozenset(int(z) for z in numbers.unique().tolist())

    def atomic(self, b):
        """Per-atom energies ``[N]`` (eV, mace's ``node_energy``) and node features ``[N, F]``.

        What a distilled student can learn beyond the total energy, from one
        forward pass without forces (see :meth:`SevennetModel.atomic`).
        """
        import torch

        with self._first_use, torch.no_grad():
            res = self.model(self._data(b), compute_force=False, training=False)
        return res["node_energy"].to(b.positions.dtype), res.get("node_feats")

    def _evaluate(self, b):
        from hts.models.tensor import Evaluation

        res = self.model(self._data(b), compute_stress=True, training=False)
        out_dt = b.positions.dtype
        return Evaluation(
            res["energy"].detach().to(out_dt),
            res["forces"].detach().to(out_dt),
            res["stress"].detach().to(out_dt),
        )

    def _data(self, b) -> dict:
        """mace's input for a tensor batch, graph built on the batch's device."""
        import torch

        dev = b.positions.device
        if self._rows is None or self._rows.device != dev:
            self._rows = torch.as_tensor(self._z_index, dtype=torch.long, device=dev)
        kinds = self._rows[b.numbers]
        return mace_tensor_input(
            b, kinds, len(self.atomic_numbers), self.r_max, self.dtype, self._head
        )
