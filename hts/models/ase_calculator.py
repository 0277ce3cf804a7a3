"""Any ASE calculator as a model: ``{name: ase, calculator: "package.module:factory", kwargs: …}``.

A foundation model hts does not ship is usable as soon as its package offers
an ASE calculator: the campaign names the factory (a class or a function) and
its keyword arguments, and :func:`load_ase` wraps what it returns in
:class:`AseCalculatorModel`, one structure per call behind the same interface
as every other model.

Problems are found as early as they can be without loading a model:

* the form of the path when the campaign is parsed (:class:`hts.spec.ModelSpec`);
* :func:`check_calculator`, from ``hts validate`` and the start of a run: the
  module imports, the factory exists and is callable, it accepts the kwargs,
  and — where the class says so without being instantiated — it gives stress
  when the stage needs it.  Importing may import torch and the model's package:
  acceptable where a run is about to load the model anyway, not when a file is
  parsed;
* :func:`load_ase`, on the worker: the factory raises, returns something that
  is not an ASE calculator, or gives no stress where the cell relaxes
  (:func:`require_stress`).

Every one is a :class:`ModelSpecError` naming the field of the model section;
callers put the stage in front (``stages.rescore.model.calculator: …``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hts.models.base import CalculatorModel, Prediction

if TYPE_CHECKING:
    from ase import Atoms

__all__ = [
    "AseCalculatorModel",
    "ModelSpecError",
    "check_calculator",
    "load_ase",
    "require_stress",
]

log = logging.getLogger("hts.models")


class ModelSpecError(ValueError):
    """A model section that cannot give a model; ``field`` is the field at fault.

    Raised on a worker as well as in the driver, so it pickles (its arguments
    are its state) and carries no stage: :meth:`at` puts the stage's path in front.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def at(self, where: str) -> str:
        """The message under a path in the campaign file, e.g. ``stages.rescore.model``."""
        return f"{where}.{self.field}: {self.message}"

    def __str__(self) -> str:
        return self.at("model")


def import_factory(path: str):
    """The object ``package.module:attr.attr`` names; :class:`ModelSpecError` if there is none."""
    module_name, _, attrs = path.partition(":")
    if not module_name or not attrs:
        raise ModelSpecError("calculator", f"{path!r} is not 'package.module:factory'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSpecError("calculator", f"cannot import {module_name!r}: {err}") from None
    except Exception as err:  # the module itself is broken (a bad install, a failing import)
        raise ModelSpecError(
            "calculator", f"cannot import {module_name!r}: {type(err).__name__}: {err}"
        ) from None
    parts = attrs.split(".")
    for i, attr in enumerate(parts):
        if not hasattr(obj, attr):
            owner = ":".join([module_name, ".".join(parts[:i])]) if i else module_name
            raise ModelSpecError("calculator", f"{owner!r} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ModelSpecError(
            "calculator",
            f"{path!r} is a {type(obj).__name__}, not a class or function that returns a calculator",
        )
    return obj


def _is_calculator(obj) -> bool:
    from ase.calculators.calculator import BaseCalculator

    if isinstance(obj, BaseCalculator):
        return True
    # duck-typed, as ase.Atoms uses a calculator
    return callable(getattr(obj, "get_potential_energy", None)) and callable(
        getattr(obj, "get_forces", None)
    )


def gives_stress(calc) -> bool:
    """Whether an ASE calculator computes stress: ``stress`` in its ``implemented_properties``.

    A duck-typed calculator without that list is taken at its word by having ``get_stress``.
    """
    props = getattr(calc, "implemented_properties", None)
    if isinstance(props, list | tuple | set | frozenset):
        return "stress" in props
    return callable(getattr(calc, "get_stress", None))


def _static_properties(factory) -> list[str] | None:
    """The properties a calculator class declares without being built; None when it does not.

    Only a non-empty class-level list counts: many calculators (MACE's, for one)
    fill ``implemented_properties`` in ``__init__`` and leave ASE's empty default on the class.
    """
    if not inspect.isclass(factory):
        return None
    props = inspect.getattr_static(factory, "implemented_properties", None)
    if isinstance(props, list | tuple) and props:
        return [str(p) for p in props]
    return None


def _no_stress(path: str, props: Sequence[str], why: str) -> ModelSpecError:
    return ModelSpecError(
        "calculator",
        f"{path} gives no stress (implemented_properties: {', '.join(props) or 'none'}), which "
        f"relaxing the cell needs ({why}). Use a calculator with stress, or set relax.cell: false "
        "and hull.model_references: false (with hull.reference_entries): elemental references "
        "always relax their cell",
    )


def _bare(sig: inspect.Signature) -> inspect.Signature:
    """A signature without annotations, for messages: ``(checkpoint, device='cpu')``."""
    params = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=sig.empty)


def _check_kwargs(path: str, factory, kwargs: dict) -> None:
    """The kwargs bind to the factory's signature; ASE calculators also know their parameters.

    ASE's ``Calculator.__init__`` takes ``**kwargs`` and keeps unknown ones in
    ``parameters`` without using them, so a misspelt ``sigm: 2.5`` would be
    silently ignored; for such a class with declared ``default_parameters``, a
    keyword that is neither one of them nor a named argument is refused.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): the call will tell
        return
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        raise ModelSpecError("kwargs", f"do not fit {path}{_bare(sig)}: {err}") from None
    if not inspect.isclass(factory):
        return
    from ase.calculators.calculator import Calculator

    defaults = inspect.getattr_static(factory, "default_parameters", None)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if not (issubclass(factory, Calculator) and isinstance(defaults, dict) and defaults):
        return
    if not takes_any:
        return
    named = {
        n
        for f in (factory, Calculator)
        for n, p in inspect.signature(f).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    unknown = sorted(set(kwargs) - set(defaults) - named)
    if unknown:
        raise ModelSpecError(
            "kwargs",
            f"{path} has no parameter {', '.join(map(repr, unknown))} (its parameters: "
            f"{', '.join(sorted(defaults))}); an ASE calculator would keep it unused",
        )


def check_calculator(spec, needs_stress: str | None = None) -> None:
    """Everything about an ``ase`` model that can be checked without building it.

    Imports the factory (which may import torch and the model's package) and
    binds the kwargs to its signature.  ``needs_stress`` says what relaxes the
    cell (``"stages.rescore.relax.cell is true"``), or None when nothing does; a
    calculator class that declares its properties without stress is then refused.
    Raises :class:`ModelSpecError`.
    """
    if spec.name != "ase":
        return
    factory = import_factory(spec.calculator)
    _check_kwargs(spec.calculator, factory, dict(spec.kwargs))
    props = _static_properties(factory)
    if needs_stress and props is not None and "stress" not in props:
        raise _no_stress(spec.calculator, props, needs_stress)


def require_stress(model, why: str) -> None:
    """Refuse a model without stress where something relaxes the cell (``why`` names it).

    Models that do not say (every shipped one gives stress) pass.
    """
    if getattr(model, "has_stress", True):
        return
    raise _no_stress(model.calculator_path, model.properties, why)


def _package_version(module_name: str) -> str:
    """``distribution X.Y`` of the package a module belongs to, for the store's version string."""
    from importlib import metadata

    top = module_name.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    version = getattr(sys.modules.get(top), "__version__", None)
    return f"{top} {version}" if version else top


def version_string(spec) -> str:
    """What the store records as the model's version: the factory, its kwargs, its package."""
    kw = ", ".join(f"{k}={v!r}" for k, v in sorted(spec.kwargs.items()))
    call = f"{spec.calculator}({kw})" if kw else spec.calculator
    return f"{call} ({_package_version(spec.calculator.partition(':')[0])})"


class AseCalculatorModel(CalculatorModel):
    """A user's ASE calculator behind the model interface, one structure per call.

    Not thread-safe, as every ASE calculator (it keeps the last atoms and
    results on itself): :func:`hts.models.get_model` gives each thread its own.
    A calculator without stress gives NaN stress (unknown, never zero), which
    a relaxation of the cell refuses up front (:func:`require_stress`).
    """

    def __init__(self, spec, calc, version: str) -> None:
        elements = set(spec.elements) if spec.elements is not None else None
        device = getattr(calc, "device", "cpu")
        super().__init__("ase", version, lambda: calc, elements, str(device))
        self._calc = calc
        self.calculator_path = spec.calculator
        props = getattr(calc, "implemented_properties", None)
        self.properties = [str(p) for p in props] if isinstance(props, list | tuple) else []
        self.has_stress = gives_stress(calc)

    def unsupported(self, numbers: Sequence[int]) -> str | None:
        from hts.models.base import not_covered

        return not_covered(numbers, self.elements, f"ase ({self.calculator_path})")

    def predict(self, batch: Sequence[Atoms]) -> list[Prediction]:
        if self.has_stress:
            return super().predict(batch)
        out = []
        for atoms in batch:
            a = atoms.copy()
            a.calc = self._calc
            out.append(
                Prediction(
                    energy=float(a.get_potential_energy()),
                    forces=np.array(a.get_forces(), dtype=float),
                    stress=np.full(6, np.nan),
                )
            )
        return out


def load_ase(spec) -> AseCalculatorModel:
    """Build the calculator a ``name: ase`` spec names, checked; :class:`ModelSpecError` if it fails.

    The factory is called here, once per model instance, so a factory that
    raises or returns the wrong thing fails the model's load, naming the
    field, rather than every structure's relaxation.
    """
    factory = import_factory(spec.calculator)
    kwargs = dict(spec.kwargs)
    _check_kwargs(spec.calculator, factory, kwargs)
    try:
        calc = factory(**kwargs)
    except Exception as err:
        field = "kwargs" if kwargs and isinstance(err, TypeError) else "calculator"
        what = f"{spec.calculator}(**kwargs)" if kwargs else f"{spec.calculator}()"
        raise ModelSpecError(
            field, f"{what} raised {type(err).__name__}: {err}".replace("\n", " ")[:500]
        ) from None
    if not _is_calculator(calc):
        raise ModelSpecError(
            "calculator",
            f"{spec.calculator} returned a {type(calc).__module__}.{type(calc).__qualname__}, "
            "not an ASE calculator (an ase.calculators.calculator.Calculator, or an object with "
            "get_potential_energy and get_forces)",
        )
    return AseCalculatorModel(spec, calc, version_string(spec))
