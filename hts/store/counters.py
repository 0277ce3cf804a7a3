"""Running counters of a store: per-stage funnel counts and the failure histogram.

``hts status`` and the dashboard show, for every stage, how many candidates it
tried, scored and kept, and the failures grouped by (stage, reason).  Counting
them again from the whole store on every commit costs O(store); instead the
writer keeps them in the ledger and adjusts them by what each commit changed
(O(new rows)).  :func:`recount` computes the same numbers from the arrays and
is the reference the running counters must always equal: the writer uses it
when it reopens a store (a killed writer may have left uncommitted updates in
committed rows), and readers use it for stores written before counters existed.

The definitions are those ``hts report`` always used:

* tried (``in``): every row for the first stage; for a later stage, the rows
  its ``stage_status`` is set for.  Rows of older stores (no ``stage_status``)
  count when the stage left an energy or a failure reason prefixed
  ``"<stage>:"``.
* scored (``ok``): a finite ``e_above_hull``; ``failed`` is tried − scored.
* kept: the stage's ``kept`` flag.
* time_ms: worker milliseconds per stage (each row's ``time_s`` rounded to
  the millisecond, so running sums stay exact integers).
* audit: ``[audited, scored, missed]`` — rows in the audit sample (``audit``),
  those the teacher scored (a finite ``e_above_hull`` at ``rescore``), and
  those it keeps (``audit_missed``): what :mod:`hts.audit` estimates recall from.
* failures: rows whose ``status`` is not ok, grouped by the stage that failed
  (the last ``stage_status`` that says ``failed``, else the reason's prefix)
  and :func:`reason_key` of the reason as shown (``"rescore: …"``).  Each
  group keeps its count, its first row, that row's reason and the ids of its
  first three rows, so the listing equals a count in row order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from hts.store.schema import STATUS_FAILED, STATUS_OK

__all__ = ["Counters", "RowState", "STATE_VARS", "failure_text", "reason_key", "recount"]

# what a row's contribution to the counters depends on
STATE_VARS = (
    "status",
    "reason",
    "stage_status",
    "e_above_hull",
    "energy_per_atom",
    "kept",
    "time_s",
    "audit",
    "audit_missed",
)
_EXAMPLE_IDS = 3


def reason_key(reason: str) -> str:
    """Group reasons that differ only in numbers, sites or quoted details."""
    key = re.sub(r"site \d+ \(\w+\) and site \d+ \(\w+\)", "site i and site j", reason)
    key = re.sub(r"[-+]?\d+\.?\d*(e[-+]?\d+)?", "#", key)
    return key[:160]


def failure_text(stages: list[str], stage: str, reason: str) -> str:
    """A failure's reason as shown: prefixed by its stage unless it is the first stage.

    Stores written before ``stage_status`` already carry the prefix in the
    reason; it is not added twice.
    """
    if stage == stages[0] or reason.startswith(f"{stage}:"):
        return reason
    return f"{stage}: {reason}"


@dataclass(slots=True)
class RowState:
    """What a block of rows contributes to the counters."""

    tried: np.ndarray  # [m, n_stages] bool
    scored: np.ndarray
    kept: np.ndarray
    failures: dict[int, tuple[str, str]]  # position in the block -> (stage, reason as shown)
    time_ms: np.ndarray  # [m, n_stages] int64
    audit: np.ndarray  # [m, 3] bool: audited, scored by the teacher, missed

    @classmethod
    def of(cls, stages: list[str], cols: dict[str, np.ndarray]) -> RowState:
        """``cols`` holds :data:`STATE_VARS` for the block (``stage_status`` may be absent)."""
        status = np.asarray(cols["status"], dtype=object)
        reason = np.asarray(cols["reason"], dtype=object)
        m, n = len(status), len(stages)
        ss = cols.get("stage_status")
        ss = np.full((m, n), "", dtype=object) if ss is None else np.asarray(ss, dtype=object)
        ss_set = ss != ""
        tried = ss_set.copy()
        if n:
            tried[:, 0] = True
        legacy = np.flatnonzero(~ss_set.any(axis=1)) if n else np.zeros(0, np.int64)
        if len(legacy):  # a store from before stage_status: the old reading of reasons
            e = np.asarray(cols["energy_per_atom"])[legacy]
            texts = reason[legacy].astype(str)
            for k, st in enumerate(stages[1:], 1):
                tried[legacy, k] |= np.isfinite(e[:, k]) | np.char.startswith(texts, f"{st}:")
        failures: dict[int, tuple[str, str]] = {}
        for i in np.flatnonzero(status != STATUS_OK):
            text = str(reason[i])
            where = np.flatnonzero(ss[i] == STATUS_FAILED)
            if len(where):
                st = stages[int(where[-1])]
            else:
                st = next((s for s in stages[1:] if text.startswith(f"{s}:")), stages[0])
            failures[int(i)] = (st, failure_text(stages, st, text))
        scored = np.isfinite(np.asarray(cols["e_above_hull"], dtype=np.float64))
        t = cols.get("time_s")
        t = np.zeros((m, n)) if t is None else np.asarray(t, dtype=np.float64)
        audited = cols.get("audit")
        audited = np.zeros(m, bool) if audited is None else np.asarray(audited, dtype=bool)
        missed = cols.get("audit_missed")
        missed = np.zeros(m, bool) if missed is None else np.asarray(missed, dtype=bool)
        k = stages.index("rescore") if "rescore" in stages else None
        teacher = scored[:, k] if k is not None else np.zeros(m, bool)
        return cls(
            tried=tried,
            scored=scored,
            kept=np.asarray(cols["kept"], dtype=bool),
            failures=failures,
            time_ms=np.rint(np.nan_to_num(t * 1000.0, nan=0.0)).astype(np.int64),
            audit=np.stack([audited, audited & teacher, audited & missed], axis=1),
        )


@dataclass
class Counters:
    """Per-stage counts and the failure groups, as kept in the ledger."""

    stages: list[str]
    tried: list[int]
    scored: list[int]
    kept: list[int]
    # (stage, reason key) -> [count, first row, its reason as shown, [[row, id], ...]]
    groups: dict[tuple[str, str], list] = field(default_factory=dict)
    time_ms: list[int] = field(default_factory=list)  # per stage
    audit: list[int] = field(default_factory=lambda: [0, 0, 0])  # audited, scored, missed
    stale: bool = False  # a group lost an example row: recount before committing

    def __post_init__(self) -> None:
        if len(self.time_ms) != len(self.stages):
            self.time_ms = [0] * len(self.stages)

    @classmethod
    def empty(cls, stages: list[str]) -> Counters:
        n = len(stages)
        return cls(list(stages), [0] * n, [0] * n, [0] * n)

    @classmethod
    def from_json(cls, data: dict | None, stages: list[str]) -> Counters | None:
        """The ledger's counters, or None when absent or kept for other stages."""
        if not data or list(data.get("stages", [])) != list(stages):
            return None
        if "time_ms" not in data:  # counters from before time and audit were counted
            return None
        groups = {(g[0], g[1]): [int(g[2]), int(g[3]), g[4], g[5]] for g in data["failures"]}
        return cls(
            list(stages),
            list(data["tried"]),
            list(data["scored"]),
            list(data["kept"]),
            groups,
            list(data["time_ms"]),
            list(data["audit"]),
        )

    def to_json(self) -> dict:
        return {
            "stages": list(self.stages),
            "tried": [int(x) for x in self.tried],
            "scored": [int(x) for x in self.scored],
            "kept": [int(x) for x in self.kept],
            "time_ms": [int(x) for x in self.time_ms],
            "audit": [int(x) for x in self.audit],
            "failures": [[st, key, *g] for (st, key), g in self.groups.items()],
        }

    # -- changes -----------------------------------------------------------------

    def add_counts(self, state: RowState, sign: int = 1) -> None:
        for name in ("tried", "scored", "kept", "time_ms", "audit"):
            delta = getattr(state, name).sum(axis=0)
            setattr(
                self,
                name,
                [int(a + sign * b) for a, b in zip(getattr(self, name), delta, strict=True)],
            )

    def add_failure(self, row: int, stage: str, text: str, cid: str) -> None:
        key = (stage, reason_key(text))
        g = self.groups.get(key)
        if g is None:
            self.groups[key] = [1, row, text, [[row, cid]]]
            return
        g[0] += 1
        if row < g[1]:
            g[1], g[2] = row, text
        if len(g[3]) < _EXAMPLE_IDS or row < g[3][-1][0]:
            g[3] = sorted([*g[3], [row, cid]])[:_EXAMPLE_IDS]

    def remove_failure(self, row: int, stage: str, text: str) -> None:
        key = (stage, reason_key(text))
        g = self.groups.get(key)
        if g is None:  # not counted: the counters are off, count again
            self.stale = True
            return
        g[0] -= 1
        if g[0] <= 0:
            del self.groups[key]
        elif row == g[1] or any(r == row for r, _ in g[3]):
            self.stale = True  # the next example lies somewhere in the store

    def move(self, stages: list[str], rows: np.ndarray, old: dict, new: dict, ids) -> None:
        """Move the counts from rows' old state to their new one (a later stage's results).

        ``old``/``new`` hold :data:`STATE_VARS` of ``rows`` before and after;
        ``ids(rows)`` reads the candidate ids of rows that gained a failure.
        """
        before, after = RowState.of(stages, old), RowState.of(stages, new)
        self.add_counts(before, sign=-1)
        self.add_counts(after)
        changed = [j for j in range(len(rows)) if before.failures.get(j) != after.failures.get(j)]
        for j in changed:
            if j in before.failures:
                self.remove_failure(int(rows[j]), *before.failures[j])
        gained = [j for j in changed if j in after.failures]
        if gained:
            for j, cid in zip(gained, ids(rows[gained]), strict=True):
                self.add_failure(int(rows[j]), *after.failures[j], str(cid))

    def rewrite(self, name: str, k: int, old: np.ndarray, values: np.ndarray) -> None:
        """Stage ``k``'s column ``name`` rewritten in place (the final pass) from ``old`` to ``values``."""
        if name == "e_above_hull":
            self.scored[k] += int(np.isfinite(values).sum()) - int(np.isfinite(old).sum())
            if self.audit[0] and self.stages[k] == "rescore":
                self.stale = True  # the audit's scored count may have moved: count again
        elif name == "kept":
            self.kept[k] += int(np.asarray(values, bool).sum()) - int(np.asarray(old, bool).sum())
        else:
            self.stale = True  # not a column the final pass writes: count again

    # -- what readers show -------------------------------------------------------

    def stage_counts(self) -> list[dict]:
        return [
            {"stage": st, "in": t, "ok": s, "failed": t - s, "kept": k}
            for st, t, s, k in zip(self.stages, self.tried, self.scored, self.kept, strict=True)
        ]

    def failures(self, n: int = 15) -> list[dict]:
        """The ``n`` largest groups, ties in order of their first row (as a count in row order)."""
        order = sorted(self.groups.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:n]
        return [
            {"stage": st, "reason": g[2], "count": g[0], "ids": [cid for _, cid in g[3]]}
            for (st, _), g in order
        ]


def recount(stages: list[str], n_rows: int, read_block, block: int = 65536) -> Counters:
    """The counters from the arrays themselves, in blocks of flat memory.

    ``read_block(names, start, stop)`` returns a dict of those variables'
    committed values (``stage_status`` missing from it for older stores).
    """
    c = Counters.empty(stages)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        cols = read_block(STATE_VARS, start, stop)
        state = RowState.of(stages, cols)
        c.add_counts(state)
        if state.failures:
            ids = read_block(("id",), start, stop)["id"]
            for i, (st, text) in state.failures.items():
                c.add_failure(start + i, st, text, str(ids[i]))
    return c
