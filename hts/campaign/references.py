"""The reference book: elemental reference energies per stage, from the cheapest place that has them.

In order: the store (a resumed run never relaxes a reference twice), the
distillation report (a student's fitted references, read once by
:func:`~hts.campaign.resolve.resolve`), and otherwise the stage's own model on
the workers, all missing elements of all stages in parallel.  A reference that
cannot be had is recorded with its reason, and the candidates that need it fail
with that reason rather than with a bare "missing reference".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from hts.campaign.pool import TaskPool
from hts.campaign.resolve import ResolvedCampaign
from hts.campaign.scoring import StageScorer
from hts.models.ase_calculator import ModelSpecError
from hts.stages.references import relax_references

__all__ = ["ReferenceBook", "RunError"]


class RunError(RuntimeError):
    """The run cannot go on (a failure of the machinery, not of a candidate); nothing was lost."""


log = logging.getLogger("hts.campaign")

FITTED = "fitted (distillation report)"


class ReferenceBook:
    """Elemental references of every MLIP stage, cached in the store.

    Parameters
    ----------
    resolved
        The campaign, its files read.
    store
        The run's store (``references`` / ``set_references``).
    scorers
        Each MLIP stage's scorer; references found are added to its hull.
    engine
        Where relaxations run.
    on_phase
        Called with a phase description when relaxations start and end.
    """

    def __init__(
        self,
        resolved: ResolvedCampaign,
        store,
        scorers: dict[str, StageScorer],
        engine,
        on_phase: Callable[[str], None] = lambda phase: None,
    ) -> None:
        self.resolved = resolved
        self.store = store
        self.scorers = scorers
        self.engine = engine
        self.on_phase = on_phase
        self._known: dict[str, set[str]] = {name: set() for name in scorers}

    def load(self) -> None:
        """The user's reference entries and the store's cached references into every hull."""
        refs = self.store.references
        for name, t in self.scorers.items():
            t.hull.add_entries(self.resolved.entries)
            cached = refs.get(name, {})
            t.add_references(cached)
            self._known[name].update(cached)

    def ensure(self, elements: Iterable[str]) -> None:
        """Make sure every stage has a reference (or a recorded failure) for each element."""
        if not self.resolved.campaign.hull.model_references:
            return
        elements = set(elements)
        missing = {name: sorted(elements - known) for name, known in self._known.items()}
        if not any(missing.values()):
            return
        refs = dict(self.store.references)
        new: dict[str, dict[str, dict]] = {}
        pool = TaskPool(self.engine)
        for name, els in missing.items():
            if not els:
                continue
            if name in self.resolved.fitted:
                new[name] = self._fitted(name, els)
                continue
            spec = self.resolved.stages[name]
            label = spec.resource
            n = max(1, min(len(els), self.engine.workers(label)))
            for group in (els[i::n] for i in range(n)):
                pool.submit(label, (name, group), relax_references, group, spec)
        relaxing = len(pool) > 0
        if relaxing:
            self.on_phase("relaxing elemental references")
        for done in pool.completed():
            name, group = done.tag
            table = new.setdefault(name, {})
            if done.ok:
                for r in done.result:
                    table[r.element] = {
                        "energy_per_atom": r.energy_per_atom,
                        "structure": r.structure,
                        "reason": r.reason,
                    }
                continue
            # the machinery failed, not the elements: record nothing, stop, and say so
            if isinstance(done.error, ModelSpecError):
                raise RunError(
                    f"{done.error.at(f'stages.{name}.model')}. Nothing was recorded; fix the "
                    "model section and run the same command again"
                )
            raise RunError(
                f"stage {name}: the task relaxing the elemental references of "
                f"{', '.join(group)} failed as a whole: {done.describe_error()}. Nothing was "
                "recorded for them; fix the cause and run the same command again"
            )
        for name, table in new.items():
            refs[name] = {**refs.get(name, {}), **table}
            self.scorers[name].add_references(table)
            self._known[name].update(table)
        self.store.set_references(refs)
        if relaxing:
            self.on_phase("screening")

    def require(self, elements: Iterable[str], field: str) -> None:
        """Stop the run when an element the source always places has no reference.

        For a one-chemistry source (enumeration, random) such an element fails
        a whole share of the space, usually because a stage's model does not
        know it: the campaign file's ``field`` is what to fix, before any work.
        """
        if not self.resolved.campaign.hull.model_references:
            return
        refs = self.store.references
        for name in self._known:
            for el in sorted(elements):
                entry = refs.get(name, {}).get(el, {})
                e = entry.get("energy_per_atom", float("nan"))
                if e is None or e != e:
                    why = entry.get("reason") or "no reference"
                    raise RunError(
                        f"{field}: {el} has no elemental reference under stage {name}'s model "
                        f"({why}); every candidate containing {el} would fail. Remove it, or "
                        "use a model that knows it"
                    )

    def _fitted(self, name: str, elements: list[str]) -> dict[str, dict]:
        table = self.resolved.fitted[name]
        out = {}
        for el in elements:
            e = table.get(el, math.nan)
            ok = math.isfinite(e)
            out[el] = {
                "energy_per_atom": e if ok else math.nan,
                "structure": FITTED,
                "reason": ""
                if ok
                else f"{el} is not in the distillation report's fitted references",
            }
        return out

    def trial_structure(self, element: str) -> str:
        """The trial structure an MLIP stage found lowest for an element ('' if none relaxed it).

        DFT relaxes that phase of the element rather than guessing one.
        """
        refs = self.store.references
        for name in reversed(list(self.scorers)):
            structure = refs.get(name, {}).get(element, {}).get("structure", "")
            if structure and structure != FITTED:
                return structure
        return ""
