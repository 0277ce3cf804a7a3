"""Elemental reference phases, relaxed with the stage's own model.

A hull built from a model's candidate energies needs that same model's
energies of the elements.  For each element we relax a few trial structures
(:func:`trial_structures`) and keep the lowest energy per atom.  This runs
once per campaign; the store caches the result.  Complex standard states
(alpha-S8, black P, Ga) are only approximated: give Materials Project entries
in ``hull.reference_entries`` where that matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReferenceResult", "relax_references", "trial_structures"]


@dataclass(slots=True)
class ReferenceResult:
    element: str
    energy_per_atom: float  # NaN when every trial failed
    structure: str  # which trial won
    reason: str = ""


# Bond lengths (Å) of the diatomic molecules whose molecular solids are the standard states.
_DIMERS = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
# Elements whose standard states are molecular or open networks: dimers are tried too.
_ALSO_DIMER = {"S": 1.89, "Se": 2.17, "P": 1.89}
# p-block elements whose standard states are open, covalent networks: sc and diamond are tried too.
_OPEN_NETWORKS = {
    "B",
    "C",
    "Si",
    "Ge",
    "Sn",
    "P",
    "As",
    "Sb",
    "Bi",
    "S",
    "Se",
    "Te",
    "Ga",
    "In",
    "Tl",
    "Pb",
}


def trial_structures(element: str) -> list[tuple[str, object]]:
    """Trial structures for an element's reference phase; the lowest relaxed energy wins.

    Molecular elements (H, N, O, F and the halogens) get only a dimer crystal —
    dimers 3 Å apart, the van der Waals contact — so no MLIP finds a spurious
    dense phase far outside its training data.  Other elements get ASE's
    tabulated standard state where ASE can build it, plus fcc, bcc and hcp (and
    for covalent p-block elements simple cubic and diamond) at a nearest-neighbour
    distance of twice the covalent radius.
    """
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii, reference_states

    def dimer(d: float) -> Atoms:
        box = d + 3.0
        return Atoms(
            [element] * 2, positions=[(0, 0, 0), (0, 0, d)], cell=np.eye(3) * box, pbc=True
        )

    if element in _DIMERS:
        return [("dimer crystal", dimer(_DIMERS[element]))]
    z = atomic_numbers[element]
    nn = 2 * float(covalent_radii[z])
    trials: list[tuple[str, object]] = []
    state = reference_states[z] or {}
    sym = state.get("symmetry")
    try:
        if sym in ("fcc", "bcc", "diamond", "sc"):
            trials.append((f"{sym} (ASE standard state)", bulk(element, sym, a=state["a"])))
        elif sym == "hcp":
            c = state["a"] * state.get("c/a", 1.633)
            trials.append(("hcp (ASE standard state)", bulk(element, "hcp", a=state["a"], c=c)))
    except Exception:  # ASE's table lacks a parameter for this element; the generic trials remain
        pass
    trials += [
        ("fcc", bulk(element, "fcc", a=nn * 2**0.5)),
        ("bcc", bulk(element, "bcc", a=nn * 2 / 3**0.5)),
        ("hcp", bulk(element, "hcp", a=nn, c=nn * 1.633)),
    ]
    if element in _OPEN_NETWORKS:
        trials += [
            ("sc", bulk(element, "sc", a=nn)),
            ("diamond", bulk(element, "diamond", a=nn * 4 / 3**0.5)),
        ]
    if element in _ALSO_DIMER:
        trials.append(("dimer crystal", dimer(_ALSO_DIMER[element])))
    return trials


def relax_references(elements: list[str], stage, model=None) -> list[ReferenceResult]:
    """Lowest relaxed energy per atom of each element's trial structures."""
    from hts.models import get_model
    from hts.models.ase_calculator import require_stress
    from hts.stages.relax import relax_with

    if model is None:
        model = get_model(stage.model)
    require_stress(
        model, "hull.model_references is true: the elemental references relax their cell"
    )
    out = []
    # references always relax the cell, and get at least 200 steps
    r = stage.relax
    settings = r.model_copy(update={"cell": True, "max_steps": max(r.max_steps, 200)})
    for el in elements:
        from ase.data import atomic_numbers

        why = model.unsupported([atomic_numbers[el]])
        if why:
            out.append(ReferenceResult(el, float("nan"), "", why))
            continue
        names, atoms = zip(*trial_structures(el), strict=True)
        res = relax_with(model, list(atoms), settings, stage.model)
        ok = [(o.energy / len(o.atoms), n) for o, n in zip(res, names, strict=True) if not o.error]
        if not ok:
            out.append(ReferenceResult(el, float("nan"), "", "; ".join(o.error for o in res)[:300]))
        else:
            e, n = min(ok)
            out.append(ReferenceResult(el, e, n))
    return out
