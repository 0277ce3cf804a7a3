"""The funnel's own measure of itself: the audit sample, recall with its interval, the economics.

A prefilter is only trusted if the run shows what it misses.  With
``stages.prefilter.audit: s`` the teacher also rescores a random share ``s``
of the prefilter's rejects.  Which rejects is decided by the campaign's seed
and the candidate's id alone (:func:`audit_pick`), so the sample is the same
however the run is chunked, cut or resumed; the driver marks the rows
(``audit``) and records whether the teacher keeps them (``audit_missed``).
Audited rows are not survivors: nothing downstream of the teacher sees them.

From the writer's running counters (:mod:`hts.store.counters`, O(1) to read)
:func:`funnel_summary` estimates, live:

* the **miss rate** ``p = m / a``: teacher-stable rejects ``m`` among ``a``
  audited rejects the teacher scored, with its exact two-sided
  Clopper–Pearson interval (Clopper & Pearson, Biometrika 26, 404 (1934));
* the **recall** of teacher-stable candidates, ``H / (H + p·R)``, where
  ``H`` survivors are teacher-stable (all survivors are rescored, so ``H``
  is counted, not estimated) and ``R`` candidates were rejected; its interval
  maps the miss rate's bounds through the same formula (``H`` and ``R`` are
  counts, so the only sampling error is ``p``'s);
* the **enrichment** of the prefilter over random: the teacher-stable share
  among survivors over that among the audited rejects;
* **economics**: discovery rate per stage, worker-seconds per teacher-stable
  and per DFT-confirmed hit, and the teacher time saved against screening
  every candidate with the teacher, from the measured per-candidate times.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

__all__ = [
    "AuditEstimate",
    "audit_pick",
    "clopper_pearson",
    "economics",
    "estimate",
    "funnel_of",
    "funnel_summary",
    "warning",
    "wilson",
]

_CONFIDENCE = 0.95


def audit_pick(seed: int, candidate_id: str, share: float) -> bool:
    """Whether a reject is in the audit sample: a uniform draw fixed by the seed and the id.

    SHA-256 of ``"<seed>:audit:<id>"`` read as a number in [0, 1): independent
    of the order candidates arrive in and of every other candidate, so the
    sample does not change with chunk size, workers, kills or resumes.
    """
    if share <= 0:
        return False
    h = hashlib.sha256(f"{seed}:audit:{candidate_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < share


def clopper_pearson(k: int, n: int, confidence: float = _CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided interval of a binomial proportion ``k / n``.

    Conservative (coverage at least ``confidence`` for every true
    proportion), which matters here: a few misses in a small audit is the
    usual case, where the normal approximation fails.  ``(0, 1)`` for ``n = 0``.
    """
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = (1.0 - confidence) / 2.0
    lo = 0.0 if k <= 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, confidence: float = _CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of ``k / n`` (Wilson, JASA 22, 209 (1927)): a check on the exact one."""
    from scipy.stats import norm

    if n <= 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    d = 1.0 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@dataclass(frozen=True)
class AuditEstimate:
    """What the audit says so far (``recall`` is None until it can be estimated)."""

    share: float  # the campaign's audit share
    audited: int  # rejects in the sample
    scored: int  # of those, scored by the teacher
    missed: int  # of those, kept by the teacher: teacher-stable candidates the prefilter missed
    rejected: int  # candidates the prefilter scored and rejected
    stable_kept: int  # survivors the teacher keeps
    miss_rate: float | None
    miss_rate_ci: tuple[float, float] | None
    recall: float | None
    recall_ci: tuple[float, float] | None
    enrichment: float | None  # stable share among survivors / among audited rejects
    target_recall: float | None
    below_target: bool  # the recall's upper bound is below target_recall

    def as_json(self) -> dict:
        d = asdict(self)
        for k in ("miss_rate_ci", "recall_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def _recall(h: int, p: float, rejected: int) -> float | None:
    miss = p * rejected
    return None if h + miss <= 0 else h / (h + miss)


def estimate(
    counters, share: float, target_recall: float | None = None, confidence: float = _CONFIDENCE
) -> AuditEstimate:
    """The audit's figures from a store's running counters (:class:`hts.store.Counters`)."""
    st = counters.stages
    audited, scored, missed = (int(x) for x in counters.audit)
    rejected = int(counters.scored[0] - counters.kept[0])
    k = st.index("rescore") if "rescore" in st else None
    h = int(counters.kept[k]) if k is not None else 0
    rescored_survivors = int(counters.scored[k]) - scored if k is not None else 0
    p = ci_p = rec = ci_r = enrich = None
    if scored > 0:
        p = missed / scored
        ci_p = clopper_pearson(missed, scored, confidence)
        rec = _recall(h, p, rejected)
        lo, hi = _recall(h, ci_p[1], rejected), _recall(h, ci_p[0], rejected)
        ci_r = (lo, hi) if lo is not None and hi is not None else None
        if rescored_survivors > 0 and missed > 0:
            enrich = (h / rescored_survivors) / p
    below = bool(target_recall is not None and ci_r is not None and ci_r[1] < target_recall)
    return AuditEstimate(
        share=share,
        audited=audited,
        scored=scored,
        missed=missed,
        rejected=rejected,
        stable_kept=h,
        miss_rate=p,
        miss_rate_ci=ci_p,
        recall=rec,
        recall_ci=ci_r,
        enrichment=enrich,
        target_recall=target_recall,
        below_target=below,
    )


def economics(counters, audit: AuditEstimate | None = None) -> dict:
    """Discovery rates, worker-seconds per hit and the teacher time saved, from the counters.

    The teacher-only cost is the teacher's measured mean time per candidate
    it scored times every candidate the prefilter scored; the funnel's cost
    is what every stage took.  The audit's own cost is its share of the
    teacher's candidates at that same mean time.
    """
    st = counters.stages
    screened = int(counters.tried[0]) if st else 0
    seconds = [t / 1000.0 for t in counters.time_ms]
    total = sum(seconds)
    stages = []
    for i, name in enumerate(st):
        tried = int(counters.tried[i])
        stages.append(
            {
                "stage": name,
                "in": tried,
                "kept": int(counters.kept[i]),
                "discovery_rate": counters.kept[i] / screened if screened else None,
                "worker_s": round(seconds[i], 3),
                "s_per_candidate": seconds[i] / tried if tried else None,
            }
        )
    out: dict = {"screened": screened, "worker_s": round(total, 3), "stages": stages}
    if "rescore" in st:
        k = st.index("rescore")
        stable = int(counters.kept[k])
        out["s_per_stable_hit"] = total / stable if stable else None
        per = seconds[k] / counters.tried[k] if counters.tried[k] else None
        if per is not None:
            mlip = sum(seconds[i] for i, n in enumerate(st) if n != "validate")
            teacher_only = per * int(counters.scored[0])
            out["teacher_only_s"] = round(teacher_only, 3)
            out["teacher_saved_s"] = round(teacher_only - mlip, 3)
            out["teacher_saved_share"] = (
                (teacher_only - mlip) / teacher_only if teacher_only > 0 else None
            )
            if audit is not None:
                out["audit_teacher_s"] = round(per * audit.audited, 3)
    if "validate" in st:
        v = st.index("validate")
        confirmed = int(counters.kept[v])
        out["dft_confirmed"] = confirmed
        out["s_per_dft_hit"] = total / confirmed if confirmed else None
    return out


def funnel_summary(counters, share: float, target_recall: float | None) -> dict:
    """Audit (when the campaign has one) and economics as one JSON-ready dict."""
    audit = estimate(counters, share, target_recall) if share > 0 else None
    return {
        "audit": audit.as_json() if audit is not None else None,
        "economics": economics(counters, audit),
    }


def campaign_settings(campaign_yaml: str | None) -> tuple[float, float | None]:
    """``(audit share, target_recall)`` from a store's campaign (``(0, None)`` if unknown)."""
    import yaml

    try:
        pre = (yaml.safe_load(campaign_yaml or "") or {}).get("stages", {}).get("prefilter", {})
    except yaml.YAMLError:
        return 0.0, None
    link = pre.get("distillation") or {}
    target = link.get("target_recall")
    return float(pre.get("audit") or 0.0), (float(target) if target is not None else None)


def funnel_of(reader) -> dict:
    """:func:`funnel_summary` of an open :class:`hts.store.StoreReader` (the ledger only)."""
    share, target = campaign_settings(reader.attrs.get("campaign"))
    out = funnel_summary(reader.counters(), share, target)
    out["warning"] = warning(out["audit"])
    return out


def warning(audit: AuditEstimate | dict | None) -> str | None:
    """The line status, the dashboard and the log show when recall falls short of the target."""
    if audit is None:
        return None
    a = audit if isinstance(audit, dict) else audit.as_json()
    if not a.get("below_target"):
        return None
    lo, hi = a["recall_ci"]
    return (
        f"audited recall {a['recall']:.3f} (95 % interval {lo:.3f}–{hi:.3f}) is below the "
        f"distillation's target_recall {a['target_recall']:.2f}: the student has met chemistry "
        f"it does not know ({a['missed']} teacher-stable of {a['scored']} audited rejects)"
    )
