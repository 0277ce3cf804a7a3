from __future__ import annotations

import numpy as np
import pytest

from hts.distill.evaluate import ReportError, auto_keep_rule, hull_energies, screening_metrics


def test_screening_metrics_recall_and_discard():
    teacher = np.array([0.0, 0.01, 0.02, 0.2, 0.3, 0.5, np.nan])
    student = np.array([0.0, 0.05, 0.12, 0.1, 0.4, 0.6, 0.0])
    m = screening_metrics(teacher, student, stable_threshold=0.02, target_recall=0.95)
    assert m["n_candidates"] == 6 and m["n_teacher_stable"] == 3
    # three stable candidates can never show 95 % at 95 % confidence: no threshold
    assert m["threshold"] is None and m["stable_needed"] == 59
    c = m["curve"]
    k = c["threshold"].index(0.12)
    assert c["recall"][k] == 1.0 and c["discarded"][k] == pytest.approx(2 / 6)
    assert c["recall_lower_bound"][k] == pytest.approx(0.05 ** (1 / 3))
    assert 0 < m["spearman_e_above_hull"] <= 1
    loose = screening_metrics(teacher, student, 0.02, 0.1)
    assert loose["threshold"] == pytest.approx(0.05)  # 2 of 3 found: bound 0.135…, 1 of 3: 0.017
    assert loose["recall_at_threshold"] == pytest.approx(2 / 3)
    assert screening_metrics(teacher, student, 0.02, 0.3)["threshold"] == pytest.approx(0.12)


def test_clopper_pearson_bound_against_the_closed_forms():
    from scipy.stats import binomtest

    from hts.distill.evaluate import recall_bound, stable_needed

    # none missed: the bound solves p^n = 1 - confidence
    assert recall_bound(150, 150, 0.95) == pytest.approx(0.05 ** (1 / 150))
    assert stable_needed(0.98, 0.95) == 149 and recall_bound(149, 149, 0.95) >= 0.98
    assert recall_bound(148, 148, 0.95) < 0.98
    # one miss: scipy's exact binomial interval (two-sided 90 % = one-sided 95 % lower end)
    ci = binomtest(199, 200).proportion_ci(confidence_level=0.90, method="exact")
    assert recall_bound(199, 200, 0.95) == pytest.approx(ci.low)
    assert recall_bound(0, 10, 0.95) == 0.0


def test_auto_keep_rule_needs_enough_stable_candidates(tmp_path):
    curve = {
        "threshold": [0.0, 0.1],
        "recall": [0.9, 1.0],
        "recall_lower_bound": [0.7, 0.9],
        "discarded": [0.9, 0.8],
    }
    p = tmp_path / "report.json"
    p.write_text(
        '{"screening": {"calibration": {"n_teacher_stable": 30, "confidence": 0.95, "curve": '
        + __import__("json").dumps(curve)
        + "}}}"
    )
    with pytest.raises(
        ReportError, match=r"30 teacher-stable .* at least 59 .* sampling.calibration"
    ):
        auto_keep_rule(p, 0.95)
    assert auto_keep_rule(p, 0.9).text == "e_above_hull <= 0.1"


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


def test_error_decomposition_splits_where_the_error_is():
    from hts.distill.evaluate import error_decomposition

    formulas = ["NaCl", "NaCl", "KCl", "KCl", "MgO"]
    teacher = np.array([-3.40, -3.30, -3.45, -3.35, -5.9])
    # right at the teacher's minima but 50 meV/atom deeper after relaxing on its own
    at_teacher = teacher + 0.010
    own = at_teacher - 0.050
    own[1] = np.nan  # a candidate the student failed on
    t_eh = np.array([0.0, 0.1, 0.0, 0.1, 0.0])
    s_eh = np.array([0.0, np.nan, 0.02, 0.1, 0.05])
    d = error_decomposition(formulas, teacher, at_teacher, own, t_eh, s_eh)
    assert d["n_candidates"] == 4
    assert d["energy_mae_at_teacher_minimum_mev"] == pytest.approx(10.0)
    assert d["own_minus_at_teacher_mean_mev"] == pytest.approx(-50.0)
    assert d["own_energy_mae_mev"] == pytest.approx(40.0)
    assert d["own_within_20_mev"] == 0.0
    # one pair left (KCl, KCl): a uniform shift cancels in the difference
    assert d["n_pairs"] == 1 and d["pair_difference_mae_own_mev"] == pytest.approx(0.0)
    assert d["ehull_mae_mev"] == pytest.approx(1000 * (0.02 + 0.05) / 4)
