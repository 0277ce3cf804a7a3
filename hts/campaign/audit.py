"""The audit during a run: the final sample of rejects, and the live recall warning.

:func:`hts.audit.audit_pick` decides per candidate whether a reject is
audited.  While chunks stream, a row is marked from its running verdict; the
final hull can still drop an early survivor, so once the final verdicts are
written :func:`final_audit` marks the sample again from them (and the sample
does not depend on how the run was chunked).  :class:`RecallWatch` reads the
writer's counters after each audited rescore batch and warns once when the
prefilter's recall falls short of what its distillation promised.
"""

from __future__ import annotations

import logging

import numpy as np

from hts.audit import audit_pick, estimate, warning

__all__ = ["RecallWatch", "audit_sample", "final_audit"]

log = logging.getLogger("hts.campaign")


def audit_sample(ids, scored, kept, seed: int, share: float) -> np.ndarray:
    """Which rows are in the audit: the final rejects :func:`hts.audit.audit_pick` draws."""
    out = np.zeros(len(ids), dtype=bool)
    for i in np.flatnonzero(scored & ~kept):
        out[i] = audit_pick(seed, str(ids[i]), share)
    return out


def final_audit(store, seed: int, share: float) -> int:
    """Mark the audit sample again from the final verdicts; returns the change in its size.

    An early survivor the final hull drops is a reject like any other: if
    drawn, it joins the sample (the teacher already rescored it).  Streams the
    store in blocks, writing only the rows whose mark changes.
    """
    if not share:
        return 0
    change = 0
    for start, b in store.iter_blocks(["id", "e_above_hull", "kept", "audit"]):
        want = audit_sample(
            b["id"], np.isfinite(b["e_above_hull"][:, 0]), b["kept"][:, 0], seed, share
        )
        changed = np.flatnonzero(want != b["audit"])
        store.write_rows("audit", start + changed, want[changed])
        change += int(want.sum()) - int(b["audit"].sum())
    return change


class RecallWatch:
    """Warns once when the audited recall's upper bound falls below the distillation's target.

    Parameters
    ----------
    link
        The prefilter's distillation link (its ``target_recall``); None: nothing to watch.
    share
        The audited share of rejects.
    """

    def __init__(self, link, share: float) -> None:
        self.link = link
        self.share = share
        self.warned = False

    def check(self, counters) -> None:
        """Read the store's running counters; log the warning the first time it applies."""
        if self.warned or self.link is None:
            return
        line = warning(estimate(counters, self.share, self.link.target_recall))
        if line:
            log.warning("%s", line)
            self.warned = True
