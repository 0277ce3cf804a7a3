"""Random samples of a candidate space: uniform, stratified, whole systems or compositions,
without walking it."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from scipy.stats import chisquare

from hts.candidates import chunks, open_source
from hts.candidates.sampling import grouping, space_size, systems, uniform
from hts.spec import parse_campaign
from tests.conftest import lj_campaign


def _campaign(tmp_path, **candidates):
    spec = {
        "kind": "substitution",
        "prototypes": ["rocksalt", "cscl", "fluorite", "perovskite", "spinel"],
        "elements": {
            "A": ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ti", "Al"],
            "B": ["Mg", "Ti", "Zr", "Al", "Ga", "Li"],
            "X": ["O", "F", "S", "Cl"],
        },
        **candidates,
    }
    return parse_campaign(lj_campaign(tmp_path, candidates=spec))


def _all(c) -> dict[str, object]:
    return {x.id: x for ch in chunks(open_source(c), 256) for x in ch.candidates if not x.error}


def test_index_decoding_is_the_enumeration_order(tmp_path):
    c = _campaign(tmp_path, charge_balance=False, distinct_elements=False)
    src = open_source(c)
    walked = list(src.assignments())
    decoded = [src.assignment_at(k, i) for k, raw in enumerate(src.strata()) for i in range(raw)]
    assert decoded == walked  # no filter: every raw index is an assignment, in order
    balanced = open_source(_campaign(tmp_path))
    kept = [
        a
        for k, raw in enumerate(balanced.strata())
        for i in range(raw)
        if (a := balanced.assignment_at(k, i)) is not None
    ]
    assert kept == list(balanced.assignments())


def test_uniform_sample_is_distinct_valid_stratified_and_seeded(tmp_path):
    c = _campaign(tmp_path)
    everything = _all(c)
    assert space_size(c) == sum(1 for _ in open_source(c).assignments())
    s = uniform(c, 60, seed=3)
    ids = [x.id for x in s]
    assert len(ids) == len(set(ids)) == 60 and set(ids) <= set(everything)
    assert [x.id for x in uniform(c, 60, seed=3)] == ids
    assert [x.id for x in uniform(c, 60, seed=4)] != ids
    # proportional allocation: each prototype gets its share of the 60, to rounding
    share = Counter(x.prototype for x in everything.values())
    got = Counter(x.prototype for x in s)
    for proto, n in share.items():
        assert abs(got[proto] - 60 * n / len(everything)) <= 1.0 + 1e-9, proto
    # excluded ids and refused candidates never come back
    again = uniform(c, 40, seed=3, exclude=set(ids[:30]), keep=lambda x: "O" not in x.chemsys)
    assert not {x.id for x in again} & set(ids[:30])
    assert all("O" not in x.chemsys.split("-") for x in again)
    # asking for more than there is returns everything once
    assert {x.id for x in uniform(c, 10**6, seed=0)} == set(everything)


def test_uniform_sample_is_uniform(tmp_path):
    c = parse_campaign(lj_campaign(tmp_path))  # 4 prototypes of one stoichiometry class
    everything = _all(c)
    hits: Counter = Counter()
    for seed in range(400):
        hits.update(x.id for x in uniform(c, 5, seed=seed))
    counts = np.array([hits[i] for i in everything])
    assert counts.sum() == 2000
    assert chisquare(counts).pvalue > 1e-4


def test_a_large_space_is_sampled_without_walking_it(tmp_path, monkeypatch):
    elements = [
        "Li",
        "Na",
        "K",
        "Rb",
        "Cs",
        "Be",
        "Mg",
        "Ca",
        "Sr",
        "Ba",
        "Sc",
        "Y",
        "La",
        "Ti",
        "Zr",
        "Hf",
        "V",
        "Nb",
        "Ta",
        "Cr",
        "Mo",
        "W",
        "Mn",
        "Fe",
        "Co",
        "Ni",
        "Cu",
        "Zn",
        "Cd",
        "Al",
        "Ga",
        "In",
        "Ge",
        "Sn",
        "Pb",
        "Bi",
    ]
    c = _campaign(
        tmp_path,
        prototypes=["perovskite", "spinel", "k2nif4"],
        elements={"A": elements, "B": elements, "X": ["O", "S", "Se", "Te", "F", "Cl", "Br", "I"]},
    )
    src = open_source(c)
    assert src.upper_bound() > 30_000  # beyond the exact-count walk

    def no_walk(self):
        raise AssertionError("walked the space")

    monkeypatch.setattr(type(src), "assignments", no_walk)
    s = uniform(c, 50, seed=1)
    assert len({x.id for x in s}) == 50 and {x.prototype for x in s} == {
        "perovskite",
        "spinel",
        "k2nif4",
    }


def test_system_sample_holds_whole_systems_and_their_subsystems(tmp_path):
    c = _campaign(tmp_path)
    everything = _all(c)
    by_system: dict[frozenset, set] = {}
    for x in everything.values():
        by_system.setdefault(frozenset(x.chemsys.split("-")), set()).add(x.id)
    s = systems(c, 25, seed=2)
    primary, closure = {x.id for x in s.primary}, {x.id for x in s.closure}
    assert len(primary) >= 25 and not primary & closure
    drawn = [frozenset(name.split("-")) for name in s.systems]
    assert primary == set().union(*(by_system[d] for d in drawn))  # every member, nothing else
    subs = {
        frozenset(sub)
        for d in drawn
        for k in range(2, len(d))
        for sub in itertools.combinations(sorted(d), k)
    }
    assert closure == set().union(*(by_system.get(x, set()) for x in subs)) - primary


def test_systems_are_drawn_with_equal_probability(tmp_path):
    c = _campaign(tmp_path, prototypes=["rocksalt", "cscl", "fluorite", "perovskite"])
    sizes = Counter(x.chemsys for x in _all(c).values())
    assert len(set(sizes.values())) > 1  # systems of different sizes
    hits: Counter = Counter()
    for seed in range(600):
        hits.update(systems(c, 1, seed=seed).systems)
    counts = np.array([hits[s] for s in sizes])
    assert chisquare(counts).pvalue > 1e-4  # uniform over systems, not over candidates


def _alloys(tmp_path):
    """One chemistry: every ordering of Cu, Au and Pd on fcc up to 6 atoms (1,081 of them)."""
    spec = {"kind": "enumeration", "lattice": "fcc", "species": ["Cu", "Au", "Pd"], "max_atoms": 6}
    return parse_campaign(lj_campaign(tmp_path, candidates=spec))


def _by_formula(c) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for x in _all(c).values():
        out.setdefault(x.formula, set()).add(x.id)
    return out


def test_one_chemistry_is_calibrated_by_composition_whole_up_to_the_cap(tmp_path):
    c = _alloys(tmp_path)
    members = _by_formula(c)
    assert sum(map(len, members.values())) == 1081 and len(members) == 55
    assert grouping(c) == "formula" and grouping(_campaign(tmp_path)) == "chemsys"
    s = systems(c, 150, seed=2)  # no composition gives more than 15 per draw
    ids = [x.id for x in s.primary]
    assert s.by == "formula" and not s.closure and len(ids) == len(set(ids)) >= 150
    assert {x.formula for x in s.primary} == set(s.systems)
    whole = [f for f in s.systems if len(members[f]) <= 15]
    split = [f for f in s.systems if len(members[f]) > 15]
    assert whole and split
    for f in whole:  # every ordering, each weighing 15 / its size per draw of the composition
        assert {x.id for x in s.primary if x.formula == f} == members[f]
        (times,) = {s.weights[i] * len(members[f]) / 15 for i in members[f]}
        assert times >= 1 and times == round(times)
    for f in split:  # 15 per draw (the last one takes what is left), each weighing 1 per draw
        mine = {x.id for x in s.primary if x.formula == f}
        assert mine <= members[f] and (len(mine) % 15 == 0 or mine == members[f])
        assert all(s.weights[i] >= 1 and s.weights[i] == round(s.weights[i]) for i in mine)
    assert set(s.weights) == set(ids)
    assert [x.id for x in systems(c, 150, seed=2).primary] == ids  # seeded
    kept = systems(c, 60, seed=3, keep=lambda f: "Pd" not in f)
    assert kept.systems and all("Pd" not in f for f in kept.systems)
    # asking for more than there is: every ordering, once
    assert {x.id for x in systems(c, 10**6, seed=0).primary} == set().union(*members.values())


def test_compositions_are_those_of_uniformly_drawn_candidates(tmp_path):
    """A composition comes with probability proportional to its size, and the weights make
    the sample stand for the space: checked against the exact sizes, with a test that fails
    for compositions drawn with equal probability (as chemical systems are)."""
    c = _alloys(tmp_path)
    size = {f: len(ids) for f, ids in _by_formula(c).items()}
    n = sum(size.values())
    # bins of compositions by size, each about an eighth of the space: >= 40 expected draws
    bins: list[list[str]] = [[]]
    for f in sorted(size, key=lambda f: (size[f], f)):
        if sum(size[g] for g in bins[-1]) >= n / 8:
            bins.append([])
        bins[-1].append(f)
    where = {f: k for k, fs in enumerate(bins) for f in fs}
    draws = 400
    hits = Counter(where[systems(c, 1, seed=seed, cap=1).systems[0]] for seed in range(draws))
    observed = np.array([hits[k] for k in range(len(bins))])
    per_candidate = np.array([sum(size[f] for f in fs) for fs in bins]) * draws / n
    per_composition = np.array([len(fs) for fs in bins]) * draws / len(size)
    assert chisquare(observed, per_candidate).pvalue > 1e-4
    assert chisquare(observed, per_composition).pvalue < 1e-6
    # the weights: orderings of compositions of <= 10 (taken whole, so per draw 1/3 as likely
    # or less as one of a composition above the cap of 30) weigh their share of the space
    small = {f for f in size if size[f] <= 10}
    rows = []  # per seed: weight on small compositions, all weight, their orderings, all
    for seed in range(300):
        s = systems(c, 30, seed=seed, cap=30)
        w = np.array([s.weights[x.id] for x in s.primary])
        is_small = np.array([x.formula in small for x in s.primary])
        rows.append((w[is_small].sum(), w.sum(), is_small.sum(), len(w)))
    a, b, a0, b0 = np.array(rows, dtype=float).T
    truth = sum(size[f] for f in small) / n  # 0.20

    def ratio(num, den):  # a ratio of sums over independent seeds, and its standard error
        r = num.sum() / den.sum()
        return r, np.sqrt(((num - r * den) ** 2).sum()) / den.sum()

    r, se = ratio(a, b)
    assert abs(r - truth) < 4 * se, (r, truth, se)
    r0, se0 = ratio(a0, b0)  # unweighted, the sample is not the space (0.06)
    assert r0 + 4 * se0 < truth, (r0, truth, se0)


def test_files_are_sampled_by_reservoir(tmp_path):
    from ase.build import bulk
    from ase.io import write

    folder = tmp_path / "cifs"
    folder.mkdir()
    for k, (f, a) in enumerate(
        [
            ("NaCl", 5.6),
            ("KCl", 6.3),
            ("LiF", 4.0),
            ("MgO", 4.2),
            ("CaO", 4.8),
            ("SrO", 5.2),
            ("BaO", 5.5),
            ("NaF", 4.6),
        ]
    ):
        write(folder / f"{k}.cif", bulk(f, "rocksalt", a=a))
    c = parse_campaign(lj_campaign(tmp_path, candidates={"kind": "files", "path": str(folder)}))
    s = uniform(c, 5, seed=0)
    assert len({x.id for x in s}) == 5
    assert {x.id for x in uniform(c, 50, seed=0)} == set(_all(c))
    sys_sample = systems(c, 3, seed=0)
    assert len(sys_sample.primary) >= 3 and not sys_sample.closure
    assert [x.id for x in uniform(c, 5, seed=0)] != [x.id for x in uniform(c, 5, seed=1)]


def test_an_enumeration_trains_on_its_smallest_cells_whole(tmp_path):
    """Uniform draws miss the one- and two-atom cells (the hull's corners, L1_0); they come
    whole cell size by cell size while the budget holds them, with the space's own ids."""
    from hts.candidates.sampling import smallest_cells

    c = _alloys(tmp_path)
    every = _all(c)
    n_of = {i: len(x.numbers) for i, x in every.items()}
    small = smallest_cells(c, 20)  # fcc Cu-Au-Pd: 3 one-atom cells and 6 of two atoms
    assert len(small) == len({x.id for x in small}) == 9
    assert {x.id for x in small} == {i for i, n in n_of.items() if n <= 2}
    assert sorted(x.formula for x in small if len(x.numbers) == 1) == ["Au", "Cu", "Pd"]
    assert {x.id for x in smallest_cells(c, 5)} == {i for i, n in n_of.items() if n == 1}
    assert smallest_cells(c, 2) == []  # not even the one-atom cells fit
    assert all(
        "Pd" not in x.formula for x in smallest_cells(c, 20, keep=lambda x: "Pd" not in x.formula)
    )
    assert smallest_cells(_campaign(tmp_path), 20) == []  # other sources have no cell sizes
