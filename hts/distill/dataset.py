"""The teacher-labelled dataset on disk, reusable and extendable.

``<output>/dataset/<teacher>-<hash>/`` holds one extxyz file per labelling
task (``labels-00000.extxyz``, mace's own input format: ``REF_energy``,
``REF_forces``, ``REF_stress``) and ``index.json``: per candidate, its file,
group and the teacher's relaxed energy; the teacher's isolated-atom energies
and elemental references.  The hash covers the teacher and the per-candidate
sampling settings, so a later run with more candidates labels only the new
ones, and a run with other settings starts a new folder.  The index is replaced
atomically after each task's file is complete, so an interrupted labelling
loses at most the tasks in flight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hts.distill.examples import frame_id, tagged
from hts.distill.sample import Frame, LabelResult

__all__ = ["LabelStore"]


class LabelStore:
    def __init__(self, root: Path, meta: dict) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.root / "index.json"
        data = json.loads(index.read_text()) if index.exists() else {}
        self.meta = data.get("meta", meta)
        self.candidates: dict[str, dict] = data.get("candidates", {})
        self.isolated: dict[str, float] = data.get("isolated", {})
        self.references: dict[str, dict] = data.get("references", {})
        self.n_files = int(data.get("n_files", 0))
        # frames not from a candidate's own teacher relaxation (on-policy rounds): file names
        self.extra_files: list[str] = data.get("extra_files", [])
        # candidates with only a teacher single point of their unrelaxed structure: id -> info
        self.points: dict[str, dict] = data.get("points", {})
        # files written by a task whose index update never happened are orphans: ignored

    def _save(self) -> None:
        tmp = self.root / "index.json.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "meta": self.meta,
                    "n_files": self.n_files,
                    "extra_files": self.extra_files,
                    "points": self.points,
                    "isolated": self.isolated,
                    "references": self.references,
                    "candidates": self.candidates,
                },
                indent=1,
            )
        )
        os.replace(tmp, self.root / "index.json")

    def add(self, result: LabelResult, info: dict[str, dict]) -> None:
        """Write one task's frames, then record its candidates (``info``: id → formula, group, split)."""
        from ase.io import write

        name = f"labels-{self.n_files:05d}.extxyz"
        frames = [_atoms(f) for f in result.frames]
        if frames:
            write(self.root / name, frames, format="extxyz")
        features = {f.candidate: f.features for f in result.frames if f.features is not None}
        if features:  # beside the frames: 100+ numbers per atom read badly as extxyz text
            np.savez(self.root / _features_name(name), **features)
        self.n_files += 1
        for r in result.relaxed:
            self.candidates[r.id] = {
                **info.get(r.id, {}),
                "file": name if frames else "",
                "energy_per_atom": r.energy_per_atom,
                "converged": r.converged,
                "error": r.error,
            }
        self._save()

    def add_frames(self, frames: list[Frame]) -> int:
        """Write frames of already labelled candidates (on-policy labels); return how many."""
        from ase.io import write

        if not frames:
            return 0
        name = f"labels-{self.n_files:05d}.extxyz"
        write(self.root / name, [_atoms(f) for f in frames], format="extxyz")
        self.n_files += 1
        self.extra_files.append(name)
        self._save()
        return len(frames)

    def add_points(self, result: LabelResult, info: dict[str, dict]) -> None:
        """Write one task's single points (unrelaxed candidates), then record them."""
        from ase.io import write

        name = f"labels-{self.n_files:05d}.extxyz"
        if result.frames:
            write(self.root / name, [_atoms(f) for f in result.frames], format="extxyz")
        self.n_files += 1
        for f in result.frames:
            self.points[f.candidate] = {**info.get(f.candidate, {}), "file": name}
        self._save()

    def set_isolated(self, energies: dict[str, float]) -> None:
        self.isolated.update(energies)
        self._save()

    def set_references(self, refs: dict[str, dict]) -> None:
        self.references.update(refs)
        self._save()

    def frames(self, ids: set[str] | None = None) -> Iterator:
        """ASE Atoms of every labelled frame (of the given candidates), with their labels attached."""
        from ase.io import iread

        names = {v["file"] for v in self.candidates.values() if v["file"]} | set(self.extra_files)
        names |= {v["file"] for v in self.points.values()}
        for name in sorted(names):
            for a in iread(self.root / name, index=":", format="extxyz"):
                a.info["hts_id"] = frame_id(a)  # every reader sees the plain id
                if ids is None or a.info["hts_id"] in ids:
                    yield a

    def features(self, ids: set[str]) -> dict[str, np.ndarray]:
        """The teacher's readout features ``[n_atoms, F]`` at the relaxed structure of ``ids``.

        Only candidates whose teacher exposes them (:meth:`SevennetModel.atomic`).
        """
        out: dict[str, np.ndarray] = {}
        names = {self.candidates[c]["file"] for c in ids if self.candidates.get(c, {}).get("file")}
        for name in sorted(names):
            path = self.root / _features_name(name)
            if path.exists():
                with np.load(path) as z:
                    out.update({c: z[c] for c in z.files if c in ids})
        return out

    def write_split(
        self,
        path: Path,
        ids: set[str],
        energy_window: float = float("inf"),
        max_stress_gpa: float = float("inf"),
    ) -> int:
        """Write the frames of ``ids`` that are near their relaxed minimum; return how many.

        Frames more than ``energy_window`` eV/atom above their candidate's relaxed
        energy, or under more than ``max_stress_gpa``, are left out: the first
        steps from a badly guessed trial lattice (a compressed fcc Se at
        +1.5 eV/atom and 250 GPa) teach a screening student nothing and, under
        a squared loss, drown out the energy differences that matter.
        """
        from ase.io import write
        from ase.units import GPa

        keep = []
        for a in self.frames(ids):
            e_min = self.candidates[a.info["hts_id"]]["energy_per_atom"]
            de = a.info["REF_energy"] / len(a) - e_min
            stress = float(np.abs(np.asarray(a.info["REF_stress"])).max()) / GPa  # eV/Å³ → GPa
            if de <= energy_window and stress <= max_stress_gpa:
                keep.append(a)
        if keep:
            write(path, keep, format="extxyz")
        return len(keep)


def _atoms(f: Frame):
    from ase import Atoms

    a = Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=True)
    a.info = {
        "REF_energy": f.energy,
        "REF_stress": f.stress,
        "hts_id": tagged(f.candidate),
        "config_type": f.kind,
    }
    a.arrays["REF_forces"] = f.forces
    if f.energies is not None:
        a.arrays["REF_energies"] = np.asarray(f.energies, dtype=float)
    return a


def _features_name(labels: str) -> str:
    return labels.replace(".extxyz", ".features.npz")


def frame_labels(a) -> Frame:
    """Labels back from an extxyz frame (for evaluation)."""
    return Frame(
        frame_id(a),
        str(a.info.get("config_type", "")),
        np.asarray(a.numbers),
        np.asarray(a.positions),
        np.asarray(a.cell[:]),
        float(a.info["REF_energy"]),
        np.asarray(a.arrays["REF_forces"]),
        np.asarray(a.info["REF_stress"], dtype=float),
        np.asarray(a.arrays["REF_energies"]) if "REF_energies" in a.arrays else None,
    )
