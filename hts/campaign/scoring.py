"""Scoring: a stage's energies against its own hull, then its keep rule — written once.

Each stage (student, teacher, DFT) has its own hull: energies of different
models are not comparable.  :meth:`StageScorer.verdict` is the one place where
an energy becomes ``e_above_hull``, a formation energy and a keep decision; the
streaming verdicts while chunks arrive, the final pass over the whole store and
the DFT stage all call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hts.stages.hull import HullTracker, MissingReferenceError, elements_of

__all__ = ["FORMATION_FLOOR", "StageScorer", "Verdict"]

# eV/atom.  The most negative formation energies known are near -4.5 eV/atom (fluorides and
# oxides of the strongest cations, in the Materials Project and in the models trained on it);
# a result below this is a model that relaxed into a hole (atoms collapsed onto each other, a
# cell gone flat), not a discovery.  Let into a hull, it would sit on it and reject everything.
FORMATION_FLOOR = -6.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the hull and the keep rule say of one energy; ``why`` is set when it could not be scored."""

    e_above_hull: float
    formation_energy: float
    kept: bool
    why: str = ""


@dataclass
class StageScorer:
    """One stage's hull, its keep rule and why some elements have no reference.

    Parameters
    ----------
    name
        The stage (``prefilter``, ``rescore``, ``validate``).
    k
        Its index on the store's stage axis.
    keep
        The stage's keep rule: called with ``e_above_hull``, ``energy_per_atom``,
        ``n_atoms`` and ``converged``.
    """

    name: str
    k: int
    keep: object
    hull: HullTracker = field(default_factory=HullTracker)
    ref_reasons: dict[str, str] = field(default_factory=dict)  # element -> why no reference

    def add_references(self, table: dict[str, dict]) -> None:
        """Elemental references ``{el: {"energy_per_atom": e, "reason": …}}``; a NaN one records why."""
        for el, r in table.items():
            e = r.get("energy_per_atom")
            if e is None or not math.isfinite(e):
                self.ref_reasons[el] = r.get("reason") or "reference relaxation failed"
            else:
                self.hull.add_reference(el, float(e))

    def reject_implausible(self, pairs) -> None:
        """Fail ``(formula, record)`` results whose energy no crystal can have, before any hull sees them.

        A failed record keeps its structure and says why; the candidate is judged
        no further (a model's hole is a verdict on neither the hull nor its neighbours).
        """
        for formula, rec in pairs:
            if rec.status != "ok":
                continue
            try:
                eform = self.hull.formation_energy(formula, rec.energy_per_atom)
            except MissingReferenceError:
                continue  # scored (and failed with that reason) by columns()
            if eform < FORMATION_FLOOR:
                rec.status = "failed"
                rec.reason = (
                    f"{self.name}: formation energy {eform:.3g} eV/atom is below any crystal's "
                    f"({FORMATION_FLOOR} eV/atom): the model relaxed into a hole "
                    f"(energy {rec.energy_per_atom:.4g} eV/atom after {rec.n_steps} steps)"
                )

    def verdict(
        self, formula: str, energy_per_atom: float, n_atoms: int, converged: bool
    ) -> Verdict:
        """Score one energy against the hull as it stands and apply the keep rule."""
        try:
            ehull = self.hull.e_above_hull(formula, energy_per_atom)
            eform = self.hull.formation_energy(formula, energy_per_atom)
        except MissingReferenceError as err:
            present = elements_of(formula)
            why = "; ".join(f"{el}: {r}" for el, r in self.ref_reasons.items() if el in present)
            return Verdict(math.nan, math.nan, False, f"{err}{' (' + why + ')' if why else ''}")
        kept = bool(
            self.keep(
                {
                    "e_above_hull": ehull,
                    "energy_per_atom": energy_per_atom,
                    "n_atoms": n_atoms,
                    "converged": converged,
                }
            )
        )
        return Verdict(ehull, eform, kept)

    def columns(self, rec, formula: str, n_atoms: int) -> tuple[dict[str, float | bool | int], str]:
        """The store's stage columns for one successful record, and why scoring failed ('' if not)."""
        v = self.verdict(formula, rec.energy_per_atom, n_atoms, rec.converged)
        values: dict[str, float | bool | int] = {
            "energy": rec.energy,
            "energy_per_atom": rec.energy_per_atom,
            "e_above_hull": v.e_above_hull,
            "formation_energy": v.formation_energy,
            "converged": rec.converged,
            "n_steps": rec.n_steps,
            "pressure": rec.pressure,
            "time_s": rec.time_s,
            "kept": v.kept,
        }
        return values, v.why

    def score_rows(
        self,
        formulas: np.ndarray,
        energies: np.ndarray,
        n_atoms: np.ndarray,
        converged: np.ndarray,
        ok: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(e_above_hull, formation_energy, kept)`` for many rows; NaN energies stay unscored.

        ``ok`` (optional) vetoes keeping a row whatever its energy (a DFT job
        that ended with values but failed its checks).
        """
        ehull = np.full(len(energies), np.nan)
        eform = np.full(len(energies), np.nan)
        kept = np.zeros(len(energies), dtype=bool)
        for i in np.flatnonzero(np.isfinite(energies)):
            v = self.verdict(
                str(formulas[i]), float(energies[i]), int(n_atoms[i]), bool(converged[i])
            )
            ehull[i], eform[i] = v.e_above_hull, v.formation_energy
            kept[i] = v.kept and (ok is None or bool(ok[i]))
        return ehull, eform, kept

    def final_pass(self, store, gated: bool = False) -> int:
        """Score every committed row against the final hull and write the stage's columns.

        Streams the store in blocks, so memory stays flat however large the run;
        returns how many rows the stage keeps.  ``gated`` (a later stage): a
        row is kept only if the previous stage finally kept it too, and an
        audited row never is — the verdict goes to ``audit_missed`` instead.
        """
        kept_total = 0
        names = ["formula", "energy_per_atom", "n_atoms", "converged"]
        if gated:
            names += ["kept", "audit", "audit_missed"]
        for start, b in store.iter_blocks(names):
            ehull, eform, kept = self.score_rows(
                b["formula"],
                b["energy_per_atom"][:, self.k],
                b["n_atoms"],
                b["converged"][:, self.k],
            )
            if gated:
                audit = b["audit"]
                missed = kept & audit
                changed = np.flatnonzero(missed != b["audit_missed"])
                store.write_rows("audit_missed", start + changed, missed[changed])
                kept = kept & b["kept"][:, self.k - 1] & ~audit
            store.write_stage_column("e_above_hull", self.name, start, ehull)
            store.write_stage_column("kept", self.name, start, kept)
            store.write_stage_column("formation_energy", self.name, start, eform)
            kept_total += int(kept.sum())
        return kept_total
