"""The DFT codes behind one interface: a jobflow flow per structure.

``flow(request)`` turns a job request (plain JSON: code, workflow, settings,
the structure, the attempt's adjustments) into the atomate2 jobs that compute
it.  GPAW runs through a subclass of atomate2's ASE relax maker (a static is
the same maker with ``steps=1``, which atomate2 treats as a single point);
VASP runs through atomate2's own VASP makers and input sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atomate2.ase.jobs import AseRelaxMaker

__all__ = ["GpawRelaxMaker", "adjusted_gpaw", "flow", "vasp_makers", "write_vasp_inputs"]


@dataclass
class GpawRelaxMaker(AseRelaxMaker):
    """GPAW in plane-wave mode; ``calculator_kwargs`` holds plain JSON values only.

    The maker is serialised into the job documents, so GPAW's objects
    (``PW``, ``FermiDirac``, ``Mixer``) are built from those values in the
    job process, not stored.
    """

    name: str = "GPAW relax"

    def _get_calculator(self):
        from gpaw import GPAW, PW, FermiDirac, Mixer

        kw = dict(self.calculator_kwargs)
        mode = PW(kw.pop("ecut"))
        occupations = FermiDirac(kw.pop("smearing"))
        mixer = kw.pop("mixer", None)
        extra = {"mixer": Mixer(**mixer)} if mixer else {}
        return GPAW(mode=mode, occupations=occupations, txt="gpaw.txt", **extra, **kw)


def adjusted_gpaw(settings: dict, attempt: int) -> dict:
    """GPAW settings for retry ``attempt`` (0 = as given), custodian-style.

    A failed SCF is first retried with a gentler density mixer and twice the
    iterations, then also with twice the smearing (metals and small gaps
    converge slowly with a sharp Fermi level).
    """
    s = dict(settings)
    if attempt >= 1:
        s["mixer"] = {"beta": 0.05, "nmaxold": 5, "weight": 50.0}
        s["maxiter"] = settings["maxiter"] * 2
    if attempt >= 2:
        s["smearing"] = max(2 * settings["smearing"], 0.1)
        s["maxiter"] = settings["maxiter"] * 4
    return s


def _gpaw_kwargs(settings: dict, spinpol: bool) -> dict:
    return {
        "ecut": settings["ecut"],
        "smearing": settings["smearing"],
        "xc": settings["xc"],
        "kpts": {"density": settings["kpoint_density"], "gamma": True},
        "spinpol": spinpol,
        "maxiter": settings["maxiter"],
        **({"mixer": settings["mixer"]} if "mixer" in settings else {}),
    }


def vasp_makers(settings: dict, relax: dict | None):
    """atomate2's VASP makers for the campaign's input set: (relax or None, static)."""
    updates = dict(settings.get("incar_updates", {}))
    if settings.get("input_set", "mp-gga") == "mp-gga":
        from atomate2.vasp.jobs.mp import MPGGARelaxMaker as Relax
        from atomate2.vasp.jobs.mp import MPGGAStaticMaker as Static
    else:
        from atomate2.vasp.jobs.core import RelaxMaker as Relax
        from atomate2.vasp.jobs.core import StaticMaker as Static
    static = Static()
    static.input_set_generator.user_incar_settings = {
        **static.input_set_generator.user_incar_settings,
        **updates,
    }
    if relax is None:
        return None, static
    r = Relax()
    r.input_set_generator.user_incar_settings = {
        **r.input_set_generator.user_incar_settings,
        "EDIFFG": -abs(relax["fmax"]),
        "NSW": relax["max_steps"],
        "ISIF": 3 if relax["cell"] else 2,
        **updates,
    }
    return r, static


def write_vasp_inputs(structure, settings: dict, directory: str | Path, relax: dict | None = None):
    """Write the VASP inputs hts would run (POTCAR as POTCAR.spec: symbols only).

    The static's inputs, or the relaxation's when ``relax`` is given: what a
    user checks before spending an allocation.
    """
    from atomate2.vasp.files import write_vasp_input_set

    r, static = vasp_makers(settings, relax)
    maker = r if r is not None else static
    write_vasp_input_set(structure, maker.input_set_generator, directory, potcar_spec=True)


def flow(request: dict):
    """The jobflow Flow for one request; its last job's output is the result."""
    from jobflow import Flow
    from pymatgen.core import Structure

    structure = Structure.from_dict(request["structure"])
    # properties of an earlier run (forces, magmoms) break ase's extxyz writer when chaining
    for key in list(structure.site_properties):
        structure.remove_site_property(key)
    spin = bool(request.get("spinpol"))
    if spin and request.get("magmoms"):
        structure.add_site_property("magmom", list(request["magmoms"]))
    relax = request.get("relax") if request["workflow"] == "relax_static" else None
    if request["code"] == "vasp":
        r, static = vasp_makers(request["settings"], relax)
    else:
        kwargs = _gpaw_kwargs(request["settings"], spin)
        static = GpawRelaxMaker(name="GPAW static", calculator_kwargs=kwargs, steps=1)
        r = None
        if relax is not None:
            r = GpawRelaxMaker(
                calculator_kwargs=kwargs,
                steps=relax["max_steps"],
                relax_cell=relax["cell"],
                relax_kwargs={"fmax": relax["fmax"]},
            )
    jobs = []
    if r is not None:
        jobs.append(r.make(structure))
        jobs.append(static.make(jobs[0].output.structure))
    else:
        jobs.append(static.make(structure))
    return Flow(jobs, name=request.get("label", "hts validate"))
