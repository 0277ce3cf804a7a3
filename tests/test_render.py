"""Terminal output (:mod:`hts.render`)."""

from hts.render import energy


def test_energies_on_the_hull_print_as_zero_not_minus_zero():
    assert energy(-0.0) == "0.000" and energy(-4e-5) == "0.000" and energy(4e-5) == "0.000"
    assert energy(-0.0006) == "-0.001" and energy(1.23456) == "1.235"
    assert energy(None) == ""
