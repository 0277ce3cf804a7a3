"""The streaming hull equals one PhaseDiagram over every entry, whatever the order."""

from __future__ import annotations

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from hts.stages.hull import HullTracker, MissingReferenceError


def _random_entries(seed: int, n: int = 120):
    rng = np.random.default_rng(seed)
    formulas = [
        "NaCl",
        "Na2O",
        "NaO2",
        "Na3Cl",
        "ClO2",
        "Cl2O",
        "NaClO",
        "NaClO3",
        "Na3ClO",
        "NaCl3O2",
    ]
    return [(f, float(rng.normal(-1.0, 0.4))) for f in rng.choice(formulas, size=n)]


def _both(refs: dict, data: list, chunk: int):
    """One PhaseDiagram over everything, and the streaming tracker fed ``chunk`` at a time."""
    full = PhaseDiagram(
        [PDEntry(Composition(el), e) for el, e in refs.items()]
        + [PDEntry(Composition(f), e * Composition(f).num_atoms) for f, e in data]
    )
    tracker = HullTracker()
    for el, e in refs.items():
        tracker.add_reference(el, e)
    for start in range(0, len(data), chunk):
        tracker.add(data[start : start + chunk])
    return full, tracker


def test_streaming_hull_matches_full_phase_diagram():
    refs = {"Na": -1.3, "Cl": -1.8, "O": -4.9}
    data = _random_entries(0)
    full, tracker = _both(refs, data, chunk=7)  # arrive in chunks
    assert tracker.stable_count() == len(full.stable_entries)
    for f, e in data:
        expected = full.get_e_above_hull(
            PDEntry(Composition(f), e * Composition(f).num_atoms), allow_negative=True
        )
        assert abs(tracker.e_above_hull(f, e) - expected) < 1e-9


def test_missing_reference_is_reported():
    tracker = HullTracker()
    tracker.add_reference("Na", -1.3)
    tracker.add([("NaCl", -2.0)])  # kept until Cl's reference arrives
    try:
        tracker.e_above_hull("NaCl", -2.0)
    except MissingReferenceError as err:
        assert "Cl" in str(err)
    else:
        raise AssertionError("expected MissingReferenceError")
    tracker.add_reference("Cl", -1.8)
    assert tracker.e_above_hull("NaCl", -2.0) == 0.0


def test_qhull_planes_match_pymatgen_on_random_systems():
    """Quaternary systems, duplicates, points exactly on the hull, queries below it: the plane
    form of the hull gives pymatgen's e_above_hull and its stable set, to 1e-9 eV/atom."""
    rng = np.random.default_rng(7)
    elements = ["Li", "Fe", "P", "O"]
    for trial in range(6):
        refs = {el: float(rng.normal(-3, 1)) for el in elements}
        data = []
        for _ in range(60):
            counts = rng.integers(0, 4, size=len(elements))
            if counts.sum() < 2 or (counts > 0).sum() < 2:
                continue
            f = "".join(f"{el}{c}" for el, c in zip(elements, counts, strict=True) if c)
            data.append((f, float(rng.normal(-3, 0.8))))
        data += data[:3]  # duplicates
        full, tracker = _both(refs, data, chunk=len(data))
        assert tracker.stable_count() == len(full.stable_entries), trial
        queries = data + [(f, e - 0.5) for f, e in data[:10]]  # below the hull: negative
        for f, e in queries:
            c = Composition(f)
            want = full.get_e_above_hull(PDEntry(c, e * c.num_atoms), allow_negative=True)
            assert abs(tracker.e_above_hull(f, e) - want) < 1e-9, (trial, f)
        # a point exactly on a hull facet (the midpoint of two stable entries) is on the hull
        on = full.get_hull_energy_per_atom(Composition("LiFeO2"))
        assert abs(tracker.e_above_hull("LiFeO2", on)) < 1e-9


def test_absurd_energies_from_a_broken_model_do_not_crash_the_hull():
    """A student relaxing into -10⁹ eV/atom must fail its own candidates, not the scoring."""
    h = HullTracker()
    for el, e in {"Na": -1.3, "Cl": -1.8, "O": -4.9}.items():
        h.add_reference(el, e)
    h.add([("NaCl", -3.0), ("Na2O", -1e9), ("ClNaO3", -4.0)])
    assert h.e_above_hull("NaCl", -3.0) == 0.0
    assert h.e_above_hull("ClNaO3", -4.0) > 1e8


def test_a_small_cache_evicts_old_hulls_and_never_serves_a_stale_one():
    """Queries interleaved with arrivals, with a cache far smaller than the systems: equal to PhaseDiagram."""
    refs = {"Na": -1.3, "Cl": -1.8, "O": -4.9}
    data = _random_entries(3, n=90)
    full, _ = _both(refs, data, chunk=90)
    tracker = HullTracker()
    tracker.max_cached = 2
    for el, e in refs.items():
        tracker.add_reference(el, e)
    for start in range(0, len(data), 5):
        tracker.add(data[start : start + 5])
        for f, e in data[: start + 5]:  # query everything seen: fills and evicts the cache
            tracker.e_above_hull(f, e)
        assert len(tracker._diagrams) <= 2
        # every cached hull is indexed under each of its subsystems, and nothing else is
        indexed = {k for holders in tracker._containing.values() for k in holders}
        assert indexed == set(tracker._diagrams)
    for f, e in data:
        expected = full.get_e_above_hull(
            PDEntry(Composition(f), e * Composition(f).num_atoms), allow_negative=True
        )
        assert abs(tracker.e_above_hull(f, e) - expected) < 1e-9


def test_the_energies_of_random_search_model_holes_do_not_crash_the_hull():
    """Energies of 1e16 beside -5 eV/atom (a relaxation collapsed in a model's hole) once made
    qhull's initial simplex flat and stopped a random search; the hull now joggles instead."""
    h = HullTracker()
    h.add_reference("Mg", -1.6)
    h.add_reference("O", -4.9)
    h.add([("MgO", -5.98), ("MgO2", 2e16), ("Mg2O", -1.995e15), ("MgO", -4.0)])
    assert np.isfinite(h.e_above_hull("MgO", -5.0))


def test_results_below_any_crystals_formation_energy_fail_before_the_hull_sees_them():
    from hts.campaign.scoring import FORMATION_FLOOR, StageScorer
    from hts.spec import KeepRule
    from hts.stages.screen import StageRecord

    t = StageScorer("prefilter", 0, KeepRule.parse("e_above_hull <= 0.1"))
    t.add_references({"Mg": {"energy_per_atom": -1.6}, "O": {"energy_per_atom": -4.9}})
    sane = StageRecord("a", "ok", energy_per_atom=-5.98, n_steps=40)
    hole = StageRecord("b", "ok", energy_per_atom=-16.6, n_steps=50)
    unknown = StageRecord("c", "ok", energy_per_atom=-99.0)
    t.reject_implausible([("MgO", sane), ("MgO", hole), ("CuO", unknown)])
    assert sane.status == "ok" and unknown.status == "ok"  # no Cu reference: columns() says why
    assert hole.status == "failed"
    assert f"below any crystal's ({FORMATION_FLOOR} eV/atom)" in hole.reason
    assert "relaxed into a hole" in hole.reason
