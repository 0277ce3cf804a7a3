"""Training examples of a direct student, shared by its trainers (from scratch and trunk).

An example is a frame (the unrelaxed candidate, or the teacher's minimum)
labelled with the teacher's relaxed energy per atom (``hts_target``), the
composition it belongs to (``hts_group``: batches hold whole compositions, so
polymorphs meet in a step) and its readout head (``hts_head``); a trunk
student's frames may also carry the teacher's per-atom relaxed energies
(``hts_atom_target``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = [
    "POINT",
    "RELAXED",
    "batches",
    "composition_baseline",
    "frame_id",
    "tagged",
    "write_examples",
]

_TAG = "id:"


def tagged(cid: str) -> str:
    """A candidate id as written into an extxyz frame: tagged, so no reader takes it for a number.

    ASE's extxyz reader parses an all-digit id (``1439871577777452``) as an
    int and ``12e4…`` as a float; the tag keeps every id a string.
    """
    return f"{_TAG}{cid}"


def frame_id(a) -> str:
    """The candidate id of a frame read back (tagged, or an untagged one ASE took for an int)."""
    v = a.info.get("hts_id", "")
    if isinstance(v, str):
        return v[len(_TAG) :] if v.startswith(_TAG) else v
    if isinstance(v, (int, np.integer)):  # written untagged by an older hts: ids are 16 digits
        return f"{int(v):016d}"
    return str(v)


RELAXED, POINT = "Default", "point"  # readout heads: the relaxed energy is the one a campaign reads


def write_examples(
    path: Path,
    frames: list,
    targets: dict[str, float] | None,
    groups: dict[str, str],
    head: str = RELAXED,
    mode: str = "w",
) -> int:
    """Write training frames with their target energy per atom and readout head.

    ``frames`` are ASE Atoms carrying ``hts_id``.  For the ``Default`` head the
    target is ``targets[id]``, the teacher's relaxed energy per atom; for the
    ``point`` head it is the frame's own teacher energy (a single point of the
    unrelaxed candidate: cheap labels that teach the chemistry the relaxed head
    shares).  ``groups[id]`` is the composition the candidate belongs to.
    """
    from ase import Atoms
    from ase.io import write

    out = []
    for a in frames:
        cid = frame_id(a)
        b = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
        e = targets[cid] if head == RELAXED else a.info["REF_energy"] / len(a)
        b.info = {
            "hts_id": tagged(cid),
            "hts_target": float(e),
            "hts_group": groups[cid],
            "hts_head": head,
        }
        if (
            "hts_atom_target" in a.arrays
        ):  # the teacher's per-atom relaxed energies (trunk students)
            b.arrays["hts_atom_target"] = a.arrays["hts_atom_target"]
        out.append(b)
    if out:
        write(path, out, format="extxyz", append=mode == "a")
    return len(out)


def composition_baseline(frames, zs: list[int]) -> np.ndarray:
    """Per-element energies (eV/atom) from a least-squares fit of the targets to composition."""
    col = {z: k for k, z in enumerate(zs)}
    a = np.zeros((len(frames), len(zs)))
    for i, fr in enumerate(frames):
        for z in fr.numbers:
            a[i, col[int(z)]] += 1.0 / len(fr)
    b = np.array([fr.info["hts_target"] for fr in frames])
    e0 = np.linalg.lstsq(a.T @ a + 1e-6 * np.eye(len(zs)), a.T @ b, rcond=None)[0]
    return e0


def batches(groups: list[str], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Whole compositions per batch (polymorphs together), about ``size`` frames each."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    keys = list(by)
    rng.shuffle(keys)
    out, cur = [], []
    for k in keys:
        cur.extend(by[k])
        if len(cur) >= size:
            out.append(np.array(cur))
            cur = []
    if cur:
        out.append(np.array(cur))
    return out
