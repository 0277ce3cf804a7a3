from __future__ import annotations

import numpy as np
import pytest

from hts.distill.evaluate import ReportError, auto_keep_rule, hull_energies, screening_metrics


def test_screening_metrics_recall_and_discard():
    teacher = np.array([0.0, 0.01, 0.02, 0.2, 0.3, 0.5, np.nan])
    student = np.array([0.0, 0.05, 0.12, 0.1, 0.4, 0.6, 0.0])
    m = screening_metrics(teacher, student, stable_threshold=0.02, target_recall=0.95)
    assert m["n_candidates"] == 6 and m["n_teacher_stable"] == 3
    # all three teacher-stable kept once the threshold reaches 0.12; 2 of 6 discarded there
    assert m["threshold"] == pytest.approx(0.12)
    assert m["recall_at_threshold"] == 1.0
    assert m["discarded_at_threshold"] == pytest.approx(2 / 6)
    assert 0 < m["spearman_e_above_hull"] <= 1
    two_thirds = screening_metrics(teacher, student, 0.02, 0.6)
    assert two_thirds["threshold"] == pytest.approx(0.05)


def test_hull_energies_against_references_and_each_other():
    refs = {"Na": -1.0, "Cl": -1.5}
    items = [("ClNa", -2.0), ("ClNa", -1.9), ("Cl3Na", -1.6)]
    e = hull_energies(items, refs)
    assert e[0] == pytest.approx(0.0)
    assert e[1] == pytest.approx(0.1)
    assert e[2] > 0


def test_auto_keep_rule_errors_name_the_file(tmp_path):
    with pytest.raises(ReportError, match="missing.json"):
        auto_keep_rule(tmp_path / "missing.json", 0.95)
    bad = tmp_path / "bad.json"
    bad.write_text('{"screening": {}}')
    with pytest.raises(ReportError, match="bad.json: not a readable"):
        auto_keep_rule(bad, 0.95)


def test_fitted_references_absorb_per_element_errors():
    from hts.distill.evaluate import fit_references, formation_energies

    teacher_refs = {"Na": -1.3, "Cl": -1.8, "K": -1.1, "O": -4.9}
    items = [("ClNa", -3.4), ("ClK", -3.5), ("Na2O", -3.8), ("K2O", -3.6), ("KNaO", -3.7)]
    t_form = formation_energies(items, teacher_refs)
    # a student with a systematic error per element: +0.2 eV per Na, -0.1 per O, ...
    offset = {"Na": 0.2, "Cl": -0.05, "K": 0.1, "O": -0.1}
    from pymatgen.core import Composition

    student = [
        e + sum(x * offset[el.symbol] for el, x in Composition(f).fractional_composition.items())
        for f, e in items
    ]
    refs = fit_references([f for f, _ in items], student, t_form, teacher_refs, ridge=1e-8)
    s_form = formation_energies(list(zip([f for f, _ in items], student, strict=True)), refs)
    np.testing.assert_allclose(s_form, t_form, atol=1e-5)
    # an element no training compound contains keeps the prior: the teacher's reference
    refs = fit_references(["ClNa"], [student[0]], t_form[:1], {**teacher_refs, "Li": -1.9})
    assert refs["Li"] == -1.9 and refs["Na"] != teacher_refs["Na"]
