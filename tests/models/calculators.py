"""Calculator factories a campaign names as ``tests.models.calculators:…`` (``name: ase``).

They stand in for the factories of model packages hts does not ship, in the
ways those go wrong; each returns a real ASE calculator (EMT) or fails as a
real package would.
"""

from __future__ import annotations


def missing_weights(**kwargs):
    """A foundation model's loader whose checkpoint was never downloaded."""
    raise FileNotFoundError("checkpoint uma-s-1.pt not found; run the package's download first")


def emt_without_stress():
    """EMT that declares no stress, from a function (so only loading it can tell)."""
    from ase.calculators.emt import EMT

    calc = EMT()
    calc.implemented_properties = ["energy", "free_energy", "forces"]
    return calc


def from_checkpoint(checkpoint: str, device: str = "cpu"):
    """A loader with named arguments only, as many packages' ``load_model`` functions are."""
    from ase.calculators.emt import EMT

    return EMT()
