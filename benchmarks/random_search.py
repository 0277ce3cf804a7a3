"""Does a random structure search find the textbook ground states?  MgO and TiO2 from scratch.

Runs ``workflows/random-search.yaml`` (pyxtal random symmetric crystals of MgO and
TiO2, Z = 1-2 formula units per primitive cell, space groups 2-230; a loose
SevenNet-0 prefilter, a tight SevenNet-0 rescore) with ``hts run``'s own driver,
then, per composition, takes the teacher's (rescore stage's) lowest-energy relaxed
structure and asks pymatgen's ``StructureMatcher`` — default tolerances
(ltol 0.2, stol 0.3, angle_tol 5°, primitive cells, volumes scaled) — whether it
is the known ground state, built independently with ``Structure.from_spacegroup``
from experimental structures:

- rocksalt MgO, Fm-3m, a = 4.212 Å (Hazen, Am. Mineral. 61, 266 (1976));
- rutile TiO2, P4_2/mnm, a = 4.5937, c = 2.9587 Å, O at (x, x, 0), x = 0.3048
  (Abrahams & Bernstein, J. Chem. Phys. 55, 3206 (1971));
- anatase TiO2, I4_1/amd, a = 3.7842, c = 9.5146 Å, Ti at (0, 0, 0), O at (0, 0, z),
  z = 0.2081 — origin choice 1, the setting ``from_spacegroup`` uses (Horn,
  Schwerdtfeger & Meagher, Z. Kristallogr. 136, 273 (1972); COD 9008213).  In origin
  choice 2 the same O site is (0, 1/4, 0.0831); z = 0.2081 there puts atoms 0.4 Å apart.

Each reference is checked before use: its space group (spglib through
SpacegroupAnalyzer, symprec 0.1) and its cation-O bond lengths (MgO 6 × 2.106;
rutile 4 × 1.949 + 2 × 1.980; anatase 4 × 1.934 + 2 × 1.980 Å, as published).  The
teacher also relaxes each reference with the rescore stage's own settings (a
one-stage campaign of the three structures, in this process), which gives the
teacher's energy of each textbook phase: for TiO2 the table says which of rutile
and anatase the teacher puts lower, and by how much.  (PBE, the functional of
SevenNet-0's training data, is known to put anatase a few meV/atom below rutile;
experiment finds rutile the stable phase.)

Per composition and textbook phase the table gives: draws generated (compatible
strata × per_group), strata skipped (groups whose Wyckoff positions cannot hold the
composition at that Z), unique crystals (repeated draws are screened once), failed,
relaxed by the prefilter, relaxed by the teacher; the teacher's lowest energy per
atom, its space group and which textbook phase it matches; how many teacher-relaxed
crystals match the phase, and the first of them in draw order — the order a
search drawing one crystal per stratum in turn would reach them, (draw index, Z,
group) — with its draw index and the number of draws of that composition up to
and including it.  Wall time of the search and worker time per stage follow.

    python benchmarks/random_search.py [--per-group 2] [--site workstation] [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "workflows" / "random-search.yaml"
SYMPREC = 0.1
SOURCE = re.compile(r"^random:(?P<comp>[^:]+):Z=(?P<z>\d+):.*\((?P<group>\d+)\):(?P<index>\d+)$")


def textbook() -> dict[str, dict]:
    """The known phases, built from their published structures and checked."""
    from pymatgen.core import Lattice, Structure

    phases = {
        "rocksalt": {
            "formula": "MgO",
            "group": 225,
            "bonds": [2.106] * 6,
            "structure": Structure.from_spacegroup(
                "Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
            ),
            "ref": "Hazen, Am. Mineral. 61, 266 (1976)",
        },
        "rutile": {
            "formula": "TiO2",
            "group": 136,
            "bonds": [1.949] * 4 + [1.980] * 2,
            "structure": Structure.from_spacegroup(
                "P4_2/mnm",
                Lattice.tetragonal(4.5937, 2.9587),
                ["Ti", "O"],
                [[0, 0, 0], [0.3048, 0.3048, 0]],
            ),
            "ref": "Abrahams & Bernstein, J. Chem. Phys. 55, 3206 (1971)",
        },
        "anatase": {
            "formula": "TiO2",
            "group": 141,
            "bonds": [1.934] * 4 + [1.980] * 2,
            "structure": Structure.from_spacegroup(
                "I4_1/amd",
                Lattice.tetragonal(3.7842, 9.5146),
                ["Ti", "O"],
                [[0, 0, 0], [0, 0, 0.2081]],
            ),
            "ref": "Horn, Schwerdtfeger & Meagher, Z. Kristallogr. 136, 273 (1972)",
        },
    }
    for name, p in phases.items():
        s = p["structure"].get_primitive_structure()
        p["structure"] = s
        cation = next(site for site in s if site.specie.symbol != "O")
        bonds = sorted(n.nn_distance for n in s.get_neighbors(cation, 2.3))
        group = space_group(s)[1]
        if group != p["group"] or not np.allclose(bonds, p["bonds"], atol=0.003):
            raise SystemExit(
                f"reference {name} is not what the literature says: group {group}, "
                f"bonds {np.round(bonds, 3).tolist()}"
            )
    return phases


def space_group(structure) -> tuple[str, int]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=SYMPREC)
    return sga.get_space_group_symbol(), sga.get_space_group_number()


def _structure(ds, i: int):
    from pymatgen.io.ase import AseAtomsAdaptor

    from hts.store import structure_of

    return AseAtomsAdaptor.get_structure(structure_of(ds, i))


def _relax_references(phases: dict, rescore: dict, work: Path) -> dict[str, float]:
    """The teacher's energy per atom of each textbook phase, relaxed with the rescore's settings."""
    import hts

    data = {
        "name": "random-search-references",
        "candidates": {
            "kind": "structures",
            "structures": {name: p["structure"] for name, p in phases.items()},
        },
        "stages": {"prefilter": {k: rescore[k] for k in ("model", "relax")}},
        "site": "local",
    }
    ds = hts.run(data, store=work / "references.zarr", engine="serial", progress=False)
    out = {}
    for i in range(ds.sizes["candidate"]):
        name = str(ds.source.values[i])  # a given structure's source is its label
        if ds.status.values[i] != "ok" or name not in phases:
            raise SystemExit(f"reference {name}: {ds.status.values[i]} {ds.reason.values[i]}")
        out[name] = float(ds.energy_per_atom.values[i, 0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--campaign", type=Path, default=CAMPAIGN)
    ap.add_argument(
        "--per-group", type=int, default=None, help="Draws per stratum (default: the file's)."
    )
    ap.add_argument("--site", default="workstation")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Keep the stores in this folder (rerunning resumes).",
    )
    args = ap.parse_args()

    import yaml
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition

    import hts
    from hts.api import load
    from hts.candidates.random_crystals import RandomSpace

    base = yaml.safe_load(args.campaign.read_text())
    if args.per_group is not None:
        base["candidates"]["per_group"] = args.per_group
    work = args.keep or Path(tempfile.mkdtemp(prefix="hts-random-search-"))
    work.mkdir(parents=True, exist_ok=True)
    campaign = load(base, store=work / "search.zarr", site=args.site)
    space = RandomSpace(campaign.candidates, campaign.seed)
    spec = campaign.candidates
    phases = textbook()

    print(f"references: relaxing {', '.join(phases)} with the teacher ...", flush=True)
    energies = _relax_references(phases, base["stages"]["rescore"], work)

    print(
        f"searching: {space.count()} draws of {len(space.strata())} strata "
        f"({len(space.skipped())} skipped), site {args.site}, store {campaign.store}",
        flush=True,
    )
    t0 = time.perf_counter()
    ds = hts.run(campaign, progress=True)
    wall = time.perf_counter() - t0

    matcher = StructureMatcher()  # default tolerances: ltol 0.2, stol 0.3, angle_tol 5
    stage = list(ds.stage.values)
    pre, res = stage.index("prefilter"), stage.index("rescore")
    status = ds.status.values.astype(str)
    reached = ds.stage_reached.values.astype(str)
    energy = ds.energy_per_atom.values
    sources = ds.source.values.astype(str)
    rows, per_comp = [], {}
    for comp in spec.compositions:
        name = "".join(f"{el}{n if n > 1 else ''}" for el, n in comp.items())
        mine = np.flatnonzero(np.char.startswith(sources, f"random:{name}:"))
        # compatible strata of this composition in nesting order (Z, group): a draw's rank
        # in draw order is index × len(ok) + its stratum's place + 1
        skipped = {(z, g) for c, z, g in space.skipped() if c == dict(comp)}
        ok = [(z, g) for z in spec.units for g in spec.groups if (z, g) not in skipped]
        position = {zg: j for j, zg in enumerate(ok)}
        draws = {}
        for i in mine:
            m = SOURCE.match(sources[i])
            z, g, idx = int(m["z"]), int(m["group"]), int(m["index"])
            draws[i] = (idx, z, g, idx * len(ok) + position[(z, g)] + 1)
        relaxed = [i for i in mine if reached[i] == "rescore" and np.isfinite(energy[i, res])]
        relaxed.sort(key=lambda i: draws[i][3])
        best = min(relaxed, key=lambda i: energy[i, res]) if relaxed else None
        structures = {i: _structure(ds, i) for i in relaxed}
        reduced = Composition(comp).reduced_formula
        targets = [p for p, v in phases.items() if v["formula"] == reduced]
        fits = {
            p: [i for i in relaxed if matcher.fit(structures[i], phases[p]["structure"])]
            for p in targets
        }
        if best is not None:
            sg_symbol, sg_number = space_group(structures[best])
            best_is = [p for p in targets if best in fits[p]]
        else:
            sg_symbol, sg_number, best_is = "-", 0, []
        ground = min(targets, key=lambda p: energies[p]) if targets else None
        common = {
            "composition": name,
            "generated": len(ok) * spec.per_group,
            "skipped_strata": len(skipped),
            "unique": len(mine),
            "failed": int(np.sum(status[mine] != "ok")),
            "prefilter_relaxed": int(np.sum(np.isfinite(energy[mine, pre]))),
            "teacher_relaxed": len(relaxed),
            "E_min": float(energy[best, res]) if best is not None else float("nan"),
            "sg_min": f"{sg_symbol}({sg_number})",
            "min_is": "+".join(best_is) or "other",
            "teacher_gs": ground,
        }
        per_comp[name] = {
            **common,
            "best_source": sources[best] if best is not None else None,
            "failed_reasons": sorted({str(ds.reason.values[i]) for i in mine if status[i] != "ok"})[
                :5
            ],
        }
        for p in targets:
            first = fits[p][0] if fits[p] else None
            found = [energy[i, res] for i in fits[p]]
            rows.append(
                {
                    **common,
                    "phase": p,
                    "E_phase": energies[p],
                    "E_min-E_phase_meV": 1000 * (common["E_min"] - energies[p]),
                    "matches": len(fits[p]),
                    "first_draw": draws[first][0] if first is not None else None,
                    "first_stratum": f"Z={draws[first][1]} sg{draws[first][2]}"
                    if first is not None
                    else None,
                    "draws_to_first": draws[first][3] if first is not None else None,
                    "E_found_min": float(min(found)) if found else float("nan"),
                }
            )

    ti = {p: energies[p] for p in ("rutile", "anatase")}
    time_s = ds.time_s.values
    extra = {
        "campaign": str(args.campaign),
        "site": args.site,
        "per_group": spec.per_group,
        "draws": space.count(),
        "strata": len(space.strata()),
        "skipped_strata": len(space.skipped()),
        "unique": int(ds.sizes["candidate"]),
        "wall_s": wall,
        "worker_s": {
            "prefilter": float(np.nansum(time_s[:, pre])),
            "rescore": float(np.nansum(time_s[:, res])),
        },
        "teacher_E_anatase_minus_rutile_meV": 1000 * (ti["anatase"] - ti["rutile"]),
        "teacher_E_textbook": energies,
        "matcher": "pymatgen StructureMatcher() defaults: ltol 0.2, stol 0.3, angle_tol 5",
        "symprec": SYMPREC,
        "references": {p: v["ref"] for p, v in phases.items()},
        "compositions": per_comp,
        "store": str(campaign.store),
    }
    report(
        f"random search vs textbook ground states ({space.count()} draws, {args.site})",
        [
            "composition",
            "phase",
            "generated",
            "skipped_strata",
            "unique",
            "failed",
            "prefilter_relaxed",
            "teacher_relaxed",
            "E_min",
            "sg_min",
            "min_is",
            "teacher_gs",
            "E_phase",
            "E_min-E_phase_meV",
            "matches",
            "first_draw",
            "first_stratum",
            "draws_to_first",
        ],
        rows,
        extra,
    )
    print(
        f"wall {wall:.0f} s; teacher: anatase - rutile = "
        f"{extra['teacher_E_anatase_minus_rutile_meV']:+.1f} meV/atom (textbook structures relaxed)"
    )
    if args.keep is None:
        print(f"stores kept in {work}")


if __name__ == "__main__":
    main()
