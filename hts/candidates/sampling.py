"""Random samples of a campaign's candidate space, without walking the space.

Distillation labels a sample of the campaign, and the sample must be the
campaign in miniature: drawn uniformly from the whole space (not from its
first N candidates, which are one prototype), at 10⁶–10⁷ candidates as at 10³.

- :func:`uniform` draws candidates uniformly, stratified by prototype entry
  (proportional allocation: every prototype gets its share to rounding, none is
  over- or under-drawn by chance).  A substitution space is addressed by index
  (:meth:`~hts.candidates.substitution.SubstitutionGenerator.assignment_at`), so a
  draw costs one structure build whatever the space's size; a files source is
  read once, by reservoir sampling.
- :func:`systems` draws chemical systems uniformly and returns *every*
  candidate of each, plus every candidate of its subsystems.  Within those
  systems the hull is the campaign's own hull, so ``e_above_hull`` measured on
  the sample is what the campaign will compute.  Drawing systems with equal
  probability includes every candidate with equal probability, so recall
  measured over the drawn systems' candidates is an unbiased estimate for the
  campaign's candidates.
- A space of one chemistry (orderings of a lattice, random crystals: sources
  with ``formula_assignments``) has a handful of chemical systems, one of
  which holds nearly every candidate, so :func:`systems` draws *compositions*
  there instead (:func:`grouping` says which), each as the composition of a
  candidate drawn uniformly, whole up to a cap and a uniform share of it
  beyond, with weights that make the sample stand for the space.

Candidates that fail the campaign's input checks (overlapping atoms, too many
atoms) are never drawn: the campaign fails them without a model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from hts.candidates import check_candidate
from hts.candidates.record import Candidate

__all__ = ["SystemSample", "grouping", "smallest_cells", "space_size", "systems", "uniform"]

_WALK_LIMIT = 20_000  # strata up to this many raw assignments are counted exactly
_OPEN: dict[tuple, object] = {}  # the last addressable source opened (see _open)


def _open(campaign):
    """The campaign's source, opened once per process for addressable spaces.

    Sampling opens the space several times per distillation (its size, the
    training draw, calibration, single points, each round's pool); an
    enumeration lists its labelings on first use (26 s for fcc Cu-Ag-Au-Pd up
    to 10 atoms), so the last one opened is kept, keyed by its spec.  Files
    and in-memory structures are opened afresh (a folder is read as it is now).
    """
    from hts.candidates import open_source

    spec = campaign.candidates
    if spec.kind not in ("substitution", "enumeration", "random"):
        return open_source(campaign)
    key = (spec.model_dump_json(), str(campaign.base_dir), campaign.seed)
    if key not in _OPEN:
        _OPEN.clear()
        _OPEN[key] = open_source(campaign)
    return _OPEN[key]


def grouping(campaign) -> str:
    """What calibration draws whole and holds out: ``"formula"`` or ``"chemsys"``.

    A source that lists the candidates of one composition
    (``formula_assignments``: orderings of a lattice, random crystals) is one
    chemistry: its chemical systems are a handful of nested ones, the
    highest-order holding nearly every candidate (95 % of fcc Cu-Ag-Au-Pd), so
    it is sampled, and held out, by composition.  Every other source by
    chemical system.
    """
    return "formula" if hasattr(_open(campaign), "formula_assignments") else "chemsys"


def _usable(c: Candidate, limits) -> bool:
    return not check_candidate(c, limits.max_atoms, limits.min_distance).error


def _stratum_sizes(gen, rng: np.random.Generator, pilot: int = 2000) -> list[float]:
    """Candidates per stratum after the filters: exact for small strata, else estimated."""
    sizes = []
    for k, raw in enumerate(gen.strata()):
        if raw <= _WALK_LIMIT:
            sizes.append(float(sum(gen.assignment_at(k, i) is not None for i in range(raw))))
        else:
            idx = rng.integers(0, raw, size=pilot)
            ok = sum(gen.assignment_at(k, int(i)) is not None for i in idx)
            sizes.append(raw * ok / pilot)
    return sizes


def space_size(campaign, seed: int = 0) -> int:
    """Candidates in the campaign's space after the filters (estimated for large strata)."""
    src = _open(campaign)
    if not hasattr(src, "strata"):
        return sum(1 for _ in src)
    return round(sum(_stratum_sizes(src, np.random.default_rng(seed))))


def _allocate(n: int, sizes: list[float], rng: np.random.Generator) -> list[int]:
    """Proportional allocation with systematic rounding (Madow): every stratum gets the floor
    or the ceiling of its quota, the total is exactly ``n``, and the expected share of each
    stratum is exactly proportional, so each candidate is drawn with the same probability."""
    total = sum(sizes)
    if total <= 0:
        return [0] * len(sizes)
    n = min(n, int(round(total)))
    cum = np.cumsum([n * s / total for s in sizes])
    u = rng.random()
    edges = np.floor(np.concatenate([[0.0], cum]) + u)
    alloc = np.diff(edges).astype(int)
    return [min(int(a), int(round(s))) for a, s in zip(alloc, sizes, strict=True)]


def uniform(
    campaign,
    n: int,
    seed: int,
    exclude: set[str] | frozenset[str] = frozenset(),
    keep=None,
) -> list[Candidate]:
    """``n`` distinct candidates drawn uniformly from the space, stratified by prototype.

    ``exclude`` ids are never drawn; ``keep(candidate)`` may refuse more (held-out
    chemical systems).  Fewer than ``n`` come back only when the space has fewer.
    """
    rng = np.random.default_rng(seed)
    src = _open(campaign)
    limits = campaign.limits

    def ok(c: Candidate) -> bool:
        return c.id not in exclude and _usable(c, limits) and (keep is None or keep(c))

    if not hasattr(src, "strata"):
        return _reservoir((c for c in _distinct(src) if ok(c)), n, rng)
    sizes = _stratum_sizes(src, rng)
    out: list[Candidate] = []
    seen: set[str] = set()
    for k, (want, raw) in enumerate(zip(_allocate(n, sizes, rng), src.strata(), strict=True)):
        got = 0
        if raw <= _WALK_LIMIT:  # small stratum: shuffle its raw indices and take in order
            order: Iterable[int] = (int(i) for i in rng.permutation(raw))
        else:  # large: draw indices (rejection of filtered ones keeps the draw uniform)
            order = _distinct_draws(rng, raw)
        misses = 0
        for i in order:
            if got >= want or misses > 50 * max(raw, 1):
                break
            a = src.assignment_at(k, i)
            if a is None:
                misses += 1
                continue
            c = src.candidate(a)
            if c.id in seen or not ok(c):
                misses += 1
                continue
            seen.add(c.id)
            out.append(c)
            got += 1
    rng.shuffle(out)  # type: ignore[arg-type]
    return out


def smallest_cells(campaign, budget: int, keep=None) -> list[Candidate]:
    """Every ordering of an enumeration's smallest cells, whole cell sizes while ``budget`` holds them.

    Uniform draws (by stratum) almost never reach them: fcc Cu-Ag-Au-Pd has 16 of its
    1.19 M orderings under 3 atoms.  Yet they are the hull's corners and classic ground
    states (L1_0, L1_1), and a student that never saw them errs there (39 meV/atom on fcc
    Ag).  Other sources: none.  ``keep(candidate)`` may refuse some (held-out compositions).
    """
    if campaign.candidates.kind != "enumeration":
        return []
    from hts.candidates.enumeration import Ordering

    src = _open(campaign)
    strata = src.walk.strata
    sizes = sorted({st[0] for st in strata})
    out: list[Candidate] = []
    for n in sizes:
        mine = [k for k, st in enumerate(strata) if st[0] == n]
        if len(out) + sum(src._estimate(k) for k in mine) > 2 * budget:
            break  # listing a large cell size only to refuse it would cost minutes
        cands = [
            src.candidate(Ordering(k, i))
            for k in mine
            for i in range(len(src.walk.labelings(strata[k][1])[0]))
            if src.walk.accepted(k, i)
        ]
        if len(out) + len(cands) > budget:
            break
        out += cands
    return [c for c in out if _usable(c, campaign.limits) and (keep is None or keep(c))]


def _distinct_draws(rng: np.random.Generator, raw: int):
    drawn: set[int] = set()
    while len(drawn) < raw:
        i = int(rng.integers(0, raw))
        if i not in drawn:
            drawn.add(i)
            yield i


def _distinct(stream: Iterable[Candidate]):
    seen: set[str] = set()
    for c in stream:
        if not c.error and c.id not in seen:
            seen.add(c.id)
            yield c


def _reservoir(stream: Iterable[Candidate], n: int, rng: np.random.Generator) -> list[Candidate]:
    """Algorithm R: a uniform sample of ``n`` from a stream of unknown length, in one pass."""
    out: list[Candidate] = []
    for t, c in enumerate(stream):
        if t < n:
            out.append(c)
        else:
            j = int(rng.integers(0, t + 1))
            if j < n:
                out[j] = c
    return out


@dataclass
class SystemSample:
    """Whole groups of candidates drawn for calibration, and what else their hull needs.

    ``by`` says what a group is (:func:`grouping`): a chemical system
    (``"chemsys"``: every candidate of it, its subsystems' candidates in
    ``closure``, drawn with equal probability so every candidate is equally
    likely and ``weights`` stays empty), or a composition (``"formula"``:
    ``systems`` holds formulas, no closure, and ``weights`` gives each primary
    candidate its weight, ``cap / min(size, cap)`` for every draw that took
    it; see :func:`_compositions`).
    """

    systems: list[str] = field(default_factory=list)  # drawn, in draw order (or formulas)
    primary: list[Candidate] = field(default_factory=list)  # every candidate of a drawn system
    closure: list[Candidate] = field(default_factory=list)  # subsystems' candidates (hull only)
    by: str = "chemsys"
    weights: dict[str, float] = field(default_factory=dict)  # id -> weight; empty: all equal


def _subsystems(system: frozenset[str]) -> list[frozenset[str]]:
    return [
        frozenset(s)
        for k in range(2, len(system))
        for s in itertools.combinations(sorted(system), k)
    ]


def _raw_draws(src, rng: np.random.Generator):
    """Assignments drawn uniformly from the raw space, None where a raw index is filtered out.

    A raw index uniform over the whole raw space, rejected when filtered out,
    is a candidate uniform over the valid space.
    """
    raws = src.strata()
    weights = np.asarray(raws, dtype=float) / sum(raws)
    while True:
        k = int(rng.choice(len(raws), p=weights))
        yield src.assignment_at(k, int(rng.integers(0, raws[k])))


def systems(
    campaign, n_candidates: int, seed: int, keep=None, cap: int | None = None
) -> SystemSample:
    """Whole chemical systems (or compositions), drawn at random, until they hold ``n_candidates``.

    For a substitution space a system is drawn by drawing a candidate uniformly
    and accepting its system with probability 1/size (so every system is equally
    likely); its members are listed directly.  ``keep(system)`` may refuse a
    system.  Subsystems (the binaries of a ternary) come along in ``closure``
    unless drawn themselves.

    A space of one chemistry (:func:`grouping` is ``"formula"``) is drawn by
    composition instead, see :func:`_compositions`; ``keep(formula)`` may
    refuse one, and no composition gives more than ``cap`` candidates a draw
    (default: a tenth of ``n_candidates``, so it takes at least ten draws).
    """
    rng = np.random.default_rng(seed)
    src = _open(campaign)
    limits = campaign.limits
    if grouping(campaign) == "formula":
        return _compositions(
            src, limits, n_candidates, rng, keep, cap or max(1, n_candidates // 10)
        )
    out = SystemSample()
    members: dict[frozenset[str], list[Candidate]] = {}

    if hasattr(src, "system_assignments"):

        def of(system: frozenset[str]) -> list[Candidate]:
            if system not in members:
                cands = [src.candidate(a) for a in src.system_assignments(system)]
                members[system] = [c for c in _distinct(cands) if _usable(c, limits)]
            return members[system]

        draws = _raw_draws(src, rng)
        drawn: list[frozenset[str]] = []
        refused: set[frozenset[str]] = set()
        total = 0
        misses = 0
        while total < n_candidates and misses < 100_000:
            a = next(draws)
            if a is None:
                misses += 1
                continue
            system = frozenset(e for _, e in a.elements)
            if system in refused or system in drawn:
                misses += 1
                continue
            if keep is not None and not keep("-".join(sorted(system))):
                refused.add(system)
                continue
            mine = of(system)
            if mine and rng.random() < 1.0 / len(mine):
                drawn.append(system)
                total += len(mine)
                misses = 0
            else:
                misses += 1
    else:  # files: one pass to count systems, one to collect
        for c in _distinct(src):
            if _usable(c, limits):
                members.setdefault(frozenset(c.chemsys.split("-")), []).append(c)
        names = sorted(members, key=lambda s: "-".join(sorted(s)))
        drawn, total = [], 0
        for k in rng.permutation(len(names)):
            if total >= n_candidates:
                break
            system = names[int(k)]
            if keep is not None and not keep("-".join(sorted(system))):
                continue
            drawn.append(system)
            total += len(members[system])

        def of(system: frozenset[str]) -> list[Candidate]:
            return members.get(system, [])

    primary_ids: set[str] = set()
    for system in drawn:
        out.systems.append("-".join(sorted(system)))
        for c in of(system):
            primary_ids.add(c.id)
            out.primary.append(c)
    closure_ids: set[str] = set()
    for system in drawn:
        for sub in _subsystems(system):
            for c in of(sub):
                if c.id not in primary_ids and c.id not in closure_ids:
                    closure_ids.add(c.id)
                    out.closure.append(c)
    return out


def _compositions(src, limits, n: int, rng: np.random.Generator, keep, cap: int) -> SystemSample:
    """Compositions, each that of a candidate drawn uniformly; ``cap`` candidates of it per draw.

    A draw takes the composition of a uniformly drawn candidate (so a
    composition of ``s`` candidates comes with probability ``s / N``) and the
    next ``min(s, cap)`` of its candidates in a seeded shuffle: all of them
    when ``s <= cap`` (a whole composition: its lowest ordering, which is its
    hull point, is in the sample), else a uniform share (drawn again, it gives
    the next ``cap``).  Per draw a candidate is taken with probability
    ``min(s, cap) / N``: the same for every candidate of a composition larger
    than the cap, ``s / cap`` of that for a whole one.  So each draw adds
    ``cap / min(s, cap)`` to the weight of every candidate it takes, a whole
    composition drawn twice counting twice (Hansen–Hurwitz: weighted recall
    over the sample estimates recall over the space, without bias however
    many draws repeat).

    Why not draw compositions with equal probability (accepting a drawn
    candidate's with probability ``1/s``, as :func:`systems` accepts a chemical
    system): that needs the size of every composition a draw touches before
    accepting or refusing it, and an enumeration lists a composition by one
    pass over its labelings (17 s at fcc Cu-Ag-Au-Pd up to 10 atoms, 831
    compositions, hundreds touched).  Here every draw is taken, so only about
    ``n / cap`` compositions are listed (ten at the default cap).  And whole
    compositions cannot be the rule at that scale: the median one holds 304
    orderings, the largest 22,260.
    """
    out = SystemSample(by="formula")
    order: dict[str, list] = {}  # formula -> its assignments, in a seeded shuffle
    ids: dict[str, list] = {}  # formula -> the candidate id at each place built so far (or None)
    taken: dict[str, int] = {}  # formula -> places taken so far, counting around the list
    refused: set[str] = set()
    seen: set[str] = set()
    draws = _raw_draws(src, rng)
    total = 0
    misses = 0
    # a miss builds a candidate (to read its formula): give up sooner than systems() does
    while total < n and misses < 10_000:
        a = next(draws)
        c = None if a is None else src.candidate(a)
        if c is None or not _usable(c, limits) or c.formula in refused:
            misses += 1
            continue
        f = c.formula
        if keep is not None and not keep(f):
            refused.add(f)
            continue
        if f not in order:
            listed = list(src.formula_assignments(f))
            order[f] = [listed[int(i)] for i in rng.permutation(len(listed))]
            ids[f], taken[f] = [], 0
        size = len(order[f])
        weight = cap / min(size, cap)
        new = 0
        for _ in range(min(size, cap)):
            place = taken[f] % size
            taken[f] += 1
            if place == len(ids[f]):  # first time round: build it
                m = src.candidate(order[f][place])
                ok = m.id not in seen and _usable(m, limits)
                ids[f].append(m.id if ok else None)
                if ok:
                    seen.add(m.id)
                    out.primary.append(m)
                    new += 1
            cid = ids[f][place]
            if cid is not None:
                out.weights[cid] = out.weights.get(cid, 0.0) + weight
        if f not in out.systems and any(ids[f]):
            out.systems.append(f)
        total += new
        misses = 0 if new else misses + 1
    return out


def fraction_label(n: int | float, size: int) -> int:
    """A label budget given as a count (≥ 1) or a share of the space (< 1) → a count."""
    return int(n) if n >= 1 else max(1, math.ceil(n * size))
