"""Students built on a teacher's own pretrained layers (``hts distill``'s ``student.kind: trunk``).

A student trained from scratch must learn chemistry from the few thousand
teacher relaxations a campaign can afford; its error fell as labels^-0.46 on
the screen space.  The teacher has already learnt chemistry from millions of
DFT frames, and most of that lives in its early layers (embedding and
interaction blocks): a :class:`TrunkStudent` copies the teacher's embedding
and its first ``blocks`` interaction blocks, weights included, and puts a new
readout on the scalar features of the last one, then is fine-tuned end to end
(DistilBERT's recipe: start the student from the teacher's layers, Sanh et
al. 2019).  Fewer blocks cost less per candidate; the full trunk starts from
the teacher's own readout, so before any training it *is* the teacher's
single point.

A student predicts per-atom energies, which sum to the structure's energy: a
direct student's is the teacher's *relaxed* energy predicted from the
unrelaxed candidate, and its per-atom energies are trained against the
teacher's at the relaxed structure (the same atoms, moved).

Trunks:

- ``sevennet``: a SevenNet checkpoint shipped in the ``sevenn`` wheel
  (``7net-0``: embedding, five interaction blocks, linear readout).  The file
  keeps the weights only; the layers are rebuilt from the wheel's checkpoint,
  so a student never pickles sevenn's classes.
- ``mace``: a MACE model file; its first ``blocks`` interactions and products
  and their readouts are kept (MACE sums a readout per layer), pickled in the
  student file as mace students are.

File format: ``torch.save`` of a dict with ``format: "hts-student"``, the
trunk's recipe, the state dict, the elements trained on and the licence the
weights carry (a SevenNet trunk's weights derive from GPL-3.0 weights).

This module owns the file (recipe, building, saving, loading, licence) and the
model interface (:class:`StudentModel`); the ``nn.Module`` classes themselves
live in :mod:`hts.models.student_layers`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hts.models.base import Prediction, not_covered
from hts.models.student_layers import layer_classes, sevennet_copy, torch_module

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "FORMAT",
    "StudentModel",
    "is_trunk_student",
    "load_student",
    "make_student",
    "save_student",
    "trunk_of",
]

FORMAT = "hts-student"
LICENSES = {
    "sevennet": "GPL-3.0-only (weights derived from SevenNet)",
    "mace": "as the teacher file",
}


def trunk_of(teacher) -> dict | None:
    """The recipe of the teacher's trunk (a :class:`hts.spec.ModelSpec`), or None: a black box.

    SevenNet checkpoints shipped in the wheel and MACE files have layers to
    copy; CHGNet, ASE calculators and the analytic potentials do not.
    """
    from hts.models.batched import SevennetModel

    if teacher.name in SevennetModel.checkpoints:
        return {"kind": "sevennet", "checkpoint": SevennetModel.checkpoints[teacher.name]}
    if teacher.name == "mace" and teacher.path:
        return {"kind": "mace", "path": str(teacher.path)}
    return None


def make_student(
    recipe: dict,
    blocks: int | None,
    hidden: int = 64,
    teacher_readout: bool = True,
    heads: int = 1,
    seed: int = 0,
):
    """A fresh student from a trunk recipe (:func:`trunk_of`); ``blocks`` None: the whole trunk.

    With the whole SevenNet trunk and ``teacher_readout``, the teacher's
    readout is copied into the linear part, so the student starts equal to
    the teacher (tested).
    """
    torch = torch_module()
    cls = layer_classes()
    if recipe["kind"] == "sevennet":
        n = _n_blocks_sevennet(recipe["checkpoint"])
        trunk = cls["sevennet"](recipe["checkpoint"], n if blocks is None else blocks)
    elif recipe["kind"] == "mace":
        from hts.models.batched import _load_mace_file

        module = _load_mace_file(recipe["path"], "cpu").float()
        trunk = cls["mace"](module, len(module.interactions) if blocks is None else blocks)
    else:
        raise ValueError(f"unknown trunk kind {recipe['kind']!r}")
    torch.manual_seed(seed)  # the heads' initial weights (each head its own)
    student = cls["TrunkStudent"](trunk, hidden, heads)
    if recipe["kind"] == "sevennet" and trunk.blocks == trunk.n_blocks and teacher_readout:
        _copy_sevennet_readout(student, recipe["checkpoint"])
    return student.to(torch.float32)


def _n_blocks_sevennet(checkpoint: str) -> int:
    import sevenn._keys as keys

    return int(sevennet_copy(checkpoint)[1][keys.NUM_CONVOLUTION])


def _copy_sevennet_readout(student, checkpoint: str) -> None:
    """The teacher's readout (two linear maps, no activation) as one weight vector, and its rescale."""
    torch = torch_module()
    teacher, _ = sevennet_copy(checkpoint)
    mods = teacher._modules
    n = student.trunk.n_features
    first, second = mods["reduce_input_to_hidden"].linear, mods["reduce_hidden_to_energy"].linear
    with torch.no_grad():
        w = second(first(torch.eye(n))).reshape(n)
        if float(second(first(torch.zeros(1, n))).abs().max()) > 1e-6:
            raise RuntimeError("SevenNet's readout has a bias: cannot copy it as a linear map")
        rescale = mods["rescale_atomic_energy"]
        student.readout.linear.weight.copy_(w.reshape(1, n))
        student.readout.scale.copy_(rescale.scale.reshape(-1))
        student.readout.shift.copy_(rescale.shift.reshape(-1))


def freeze(student, blocks: int) -> int:
    """Keep the embedding and the first ``blocks`` blocks as the teacher trained them; count frozen.

    Frozen layers take no gradient, so training skips their backward pass
    (cheaper per step) and cannot forget what the teacher learned there.
    """
    if blocks <= 0:
        return 0
    trunk = student.trunk
    if hasattr(trunk, "layers"):  # sevennet: "<i>_..." blocks, everything before them embeds

        def frozen(name: str) -> bool:
            head = name.split(".")[1].split("_", 1)[0]  # "layers.<module>...."
            return not head.isdigit() or int(head) < blocks

    else:  # mace: node_embedding, radial_embedding, interactions.i, products.i, readouts.i

        def frozen(name: str) -> bool:
            parts = name.split(".")  # "module.<list>.<i>...."
            if parts[1] in ("interactions", "products", "readouts"):
                return int(parts[2]) < blocks
            return parts[1] in ("node_embedding", "radial_embedding", "atomic_energies_fn")

    n = 0
    for name, p in trunk.named_parameters():
        if frozen(name):
            p.requires_grad_(False)
            n += p.numel()
    return n


def save_student(
    path: str | Path, student, recipe: dict, elements: Sequence[str], meta: dict
) -> None:
    """Write a trunk student: recipe, weights, elements trained on, licence, and ``meta``."""
    torch = torch_module()
    trunk = student.trunk
    entry = {k: v for k, v in recipe.items() if k != "path"}
    if recipe["kind"] == "mace":
        entry["module"] = trunk.module  # pickled, as mace students are
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "trunk": {**entry, "blocks": trunk.blocks, "n_blocks": trunk.n_blocks},
            "hidden": int(student.readout.hidden),
            "heads": int(student.readout.n_heads),
            "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "elements": sorted(elements),
            "license": LICENSES[recipe["kind"]],
            "meta": meta,
        },
        str(path),
    )


def write_license(folder: str | Path, student_file: str | Path) -> list[str]:
    """The licence a trunk student's weights carry, beside it: ``LICENSE`` and ``NOTICE.md``.

    A SevenNet trunk's weights derive from SevenNet's, which are GPL-3.0: the
    folder gets the GPL's text (copied from the installed ``sevenn``
    package's own licence file) and a notice saying what is covered and why;
    hts itself (BSD-3) is not.  A MACE trunk carries its teacher file's
    licence, which hts cannot know: the notice says so.  Returns the files written.
    """
    import importlib.metadata as md

    torch = torch_module()
    blob = torch.load(str(student_file), map_location="cpu", weights_only=False)
    trunk = blob["trunk"]
    folder = Path(folder)
    name = Path(student_file).name
    if trunk["kind"] == "sevennet":
        dist = md.distribution("sevenn")
        text = next(
            (f.read_text() for f in (dist.files or []) if "LICENSE" in str(f).upper()), None
        )
        if text:
            (folder / "LICENSE").write_text(text)
        notice = (
            f"# Licence of {name}\n\n"
            f"`{name}` holds weights copied from SevenNet ({trunk['checkpoint']}, sevenn "
            f"{dist.version}) and fine-tuned from them by `hts distill`: the first "
            f"{trunk['blocks']} of its {trunk['n_blocks']} interaction blocks and its embedding.  "
            "SevenNet and its weights are distributed under the GNU General Public License "
            "v3.0, so this student, a work derived from them, is too: `LICENSE` beside it is "
            "that licence's text, from the sevenn package.  hts's own code is BSD-3-Clause; "
            "running the student needs the `sevenn` package (GPL-3.0) as well.\n"
        )
    else:
        notice = (
            f"# Licence of {name}\n\n"
            f"`{name}` holds layers copied from the MACE teacher file named in its report and "
            "fine-tuned by `hts distill`: it carries that file's licence, which hts does not know "
            "(mace-torch's code is MIT; foundation models' weights have licences of their own).\n"
        )
    (folder / "NOTICE.md").write_text(notice)
    return ["LICENSE", "NOTICE.md"] if trunk["kind"] == "sevennet" else ["NOTICE.md"]


def is_trunk_student(path: str | Path) -> bool:
    """Whether a file is a trunk student (rather than a MACE module or anything else).

    Read from the pickle inside torch's zip, tensors left unloaded: the loader
    asks this before loading the file once, for real.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            pickled = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
            return FORMAT.encode() in zf.read(pickled)
    except (OSError, zipfile.BadZipFile, StopIteration):
        return False


def student_recipe(path: str | Path) -> dict | None:
    """The trunk recipe a trunk student file was built from (without its block counts), or None.

    What fine-tuning a student needs when its new teacher has no layers to
    give (the flywheel with a black-box teacher): the file's own trunk.
    """
    torch = torch_module()
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception:
        return None
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
        return None
    return {k: v for k, v in blob["trunk"].items() if k not in ("blocks", "n_blocks")}


def load_student(path: str | Path, device: str = "cpu"):
    """(module, file dict) of a trunk student file; a clear error for anything else."""
    torch = torch_module()
    from hts.models.batched import ModelFileError

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        blob = torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelFileError(
            f"{path}: cannot load as a student ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a student file written by hts distill")
    cls = layer_classes()
    spec = blob["trunk"]
    if spec["kind"] == "sevennet":
        trunk = cls["sevennet"](spec["checkpoint"], int(spec["blocks"]))
    elif spec["kind"] == "mace":
        trunk = cls["mace"](spec["module"], int(spec["blocks"]))
    else:
        raise ModelFileError(f"{path}: unknown trunk kind {spec['kind']!r}")
    student = cls["TrunkStudent"](trunk, int(blob["hidden"]), int(blob.get("heads", 1)))
    student.load_state_dict(blob["state_dict"])
    return student.to(torch.float32).to(device).eval(), blob


class StudentModel:
    """A trunk student behind the model interface: energy in one forward pass; forces by autograd.

    A direct student's prefilter needs only :meth:`energies` (no backward
    pass: the cheapest a student can be); :meth:`evaluate` also gives forces
    and stress (the gradients of its energy, as for any model) so the student
    passes the same conformance test as every other model.  Thread-safe: the
    weights are frozen and every call builds its own graph.
    """

    name = "student"
    thread_safe = True
    cpu_atoms = 64  # SevenNet-like layers fall out of cache in larger CPU passes

    def __init__(self, path: str, device: str, batch_size: int) -> None:
        torch = torch_module()
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.module, blob = load_student(path, device)
        self.model = self.module  # as MaceModel's: what parameter counts read
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.elements = set(blob["elements"])
        self.license = blob.get("license", "")
        t = blob["trunk"]
        self.version = (
            f"{Path(path).name}: {t['kind']} trunk, {t['blocks']} of {t['n_blocks']} blocks "
            f"({t.get('checkpoint', 'mace file')}), torch {torch.__version__}"
        )
        self._lock = threading.Lock()

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        return not_covered(numbers, self.elements, f"student ({self.path})")

    def calculator(self):
        from hts.models.base import ModelCalculator

        return ModelCalculator(self)

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Energy (eV) of each structure, forward pass only."""
        torch = torch_module()
        from hts.models.tensor import TensorBatch

        out = []
        for part in self._passes(structures):
            b = TensorBatch.from_atoms(part, self.device, torch.float32)
            with torch.no_grad():
                e, _, _ = self.module(b)
            total = torch.zeros(b.n_structures, dtype=e.dtype, device=e.device)
            out.append(total.index_add_(0, b.batch, e).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        from hts.models.tensor import predict_via_tensors

        return [p for part in self._passes(batch) for p in predict_via_tensors(self, part)]

    def _passes(self, structures):
        from hts.models.batched import _passes

        limit = self.cpu_atoms if self.device == "cpu" else None
        return _passes(list(structures), self.batch_size, limit)

    def evaluate(self, b):
        """Energy ``[B]``, forces ``[N, 3]`` and stress ``[B, 3, 3]`` by autograd, on the batch's device."""
        torch = torch_module()
        from hts.models.tensor import Evaluation

        dt = torch.float32
        pos = b.positions.detach().to(dt)
        cells = b.cells.detach().to(dt)
        strain = torch.zeros_like(cells, requires_grad=True)
        with torch.enable_grad():
            pos = pos.requires_grad_(True)
            sym = (strain + strain.transpose(-1, -2)) / 2
            deform = torch.eye(3, dtype=dt, device=pos.device) + sym
            p = torch.einsum("ni,nij->nj", pos, deform[b.batch])
            c = cells @ deform
            e, _, _ = self.module(b, p, c)
            total = torch.zeros(b.n_structures, dtype=dt, device=pos.device).index_add(
                0, b.batch, e
            )
            g_pos, g_strain = torch.autograd.grad(total.sum(), [pos, strain])
        volume = torch.linalg.det(cells).abs()
        out = b.positions.dtype
        return Evaluation(
            total.detach().to(out),
            (-g_pos).detach().to(out),
            (g_strain / volume[:, None, None]).detach().to(out),
        )
