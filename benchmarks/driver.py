"""The driver's own ceiling: candidates/s one driver sustains when the model costs nothing.

Everything the driver does per candidate — handing out work, scoring each
result against the running hull, appending it to the store, bookkeeping, the
final hull pass — measured with the work of the model taken out.  Two sources
side by side: an enumeration space (fcc Cu-Ag-Au-Pd orderings up to 8 atoms,
79,185 candidates), whose candidates the tasks generate themselves (the driver
hands out units of the space), and the substitution space, which the driver
generates, ids and checks itself.  Tasks run inline on the serial
engine with a zero-step analytic potential (one Lennard-Jones single point per
candidate), and their time is clocked and subtracted: what is left is the
driver's time, so ``candidates / driver time`` says how many candidates per
second one driver can hand to workers, i.e. how many GPUs it can feed
(a GPU running the student at R candidates/s needs ``R`` of it).

A second, profiled run splits the driver's time into its parts (cProfile's
overhead inflates every part alike, so the shares are what to read from it).

    python benchmarks/driver.py                  # both sources, chunks of 4,096
    python benchmarks/driver.py --max-atoms 7    # a smaller enumeration (13,225)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, wide_campaign  # noqa: E402


class ClockedSerial:
    """The serial engine, with the time spent inside tasks added up (the model's share)."""

    def __init__(self) -> None:
        from hts.execution.engine import SerialEngine

        self.inner = SerialEngine()
        self.task_s = 0.0

    def submit(self, label, fn, *args):
        def clocked(*a):
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                self.task_s += time.perf_counter() - t0

        return self.inner.submit(label, clocked, *args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# parts of the driver's time, by the functions that own them (cumulative time in cProfile)
_PARTS = {
    "generation, ids, checks": [("hts/candidates/__init__.py", "chunks")],
    "handing out units": [("hts/campaign/feed.py", "unit_tasks")],
    "streaming hull + keep rule": [
        ("hts/campaign/driver.py", "_prefilter_rows"),
    ],
    "store append": [("hts/store/writer.py", "append")],
    "final hull pass": [("hts/campaign/driver.py", "_finalize")],
}


def enumeration_campaign(store: str, max_atoms: int, chunk_size: int) -> dict:
    return {
        "name": f"driver-enumeration-{max_atoms}",
        "candidates": {
            "kind": "enumeration",
            "lattice": "fcc",
            "species": ["Cu", "Ag", "Au", "Pd"],
            "max_atoms": max_atoms,
        },
        "stages": {
            "prefilter": {
                "model": {"name": "lennard-jones"},
                "relax": {"max_steps": 0},
                "keep": "e_above_hull <= 0.05",
            }
        },
        "store": store,
        "chunk_size": chunk_size,
    }


def _run(source: str, n: int, max_atoms: int, chunk_size: int, profile: bool) -> dict:
    from hts.campaign import run_campaign
    from hts.spec import parse_campaign

    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "run.zarr")
        if source == "enumeration":
            data = enumeration_campaign(store, max_atoms, chunk_size)
        else:
            data = wide_campaign(store, n, {"name": "lennard-jones"}, chunk_size, max_steps=0)
        data["hull"] = {"model_references": True}
        campaign = parse_campaign(data, base_dir=tmp)
        engine = ClockedSerial()
        # what a process builds once (the prototypes' primitive cells from pymatgen's space
        # groups, ~3 s; the parent lattice and its symmetry; the store's libraries): a
        # start-up cost, not part of the rate a driver sustains
        import hts.store  # noqa: F401
        from hts.candidates import open_source
        from hts.candidates.prototypes import prototype_cell

        t_start = time.perf_counter()
        if source == "enumeration":
            open_source(campaign).units(chunk_size)
        else:
            for p in campaign.candidates.prototypes:
                prototype_cell(p.name)
        startup_s = time.perf_counter() - t_start
        prof = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        stats = run_campaign(campaign, engine)
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
    driver_s = wall - engine.task_s
    out = {
        "source": source,
        "candidates": stats.done,
        "wall_s": round(wall, 2),
        "task_s": round(engine.task_s, 2),
        "driver_s": round(driver_s, 2),
        "driver_cand_per_s": round(stats.done / driver_s, 1),
        "startup_s": round(startup_s, 2),
    }
    if prof is not None:
        st = pstats.Stats(prof)
        for part, keys in _PARTS.items():
            ct = 0.0
            for (file, _line, func), (_cc, _nc, _tt, cum, _callers) in st.stats.items():
                if any(file.endswith(f) and func == fn for f, fn in keys):
                    ct += cum
            out[part] = ct
        # tasks run inside the loop: the parts above exclude them except where noted
        out["profiled_driver_s"] = wall - engine.task_s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=20_000, help="substitution candidates")
    ap.add_argument("--max-atoms", type=int, default=8, help="enumeration's largest cell")
    ap.add_argument("--chunk-size", type=int, default=4096)
    args = ap.parse_args()

    plain = {
        src: _run(src, args.candidates, args.max_atoms, args.chunk_size, profile=False)
        for src in ("enumeration", "substitution")
    }
    prof = _run("enumeration", args.candidates, args.max_atoms, args.chunk_size, profile=True)
    base = plain["enumeration"]
    total = prof["profiled_driver_s"]
    rows = [
        {
            "part": part,
            "share_of_driver_%": round(100 * prof[part] / total, 1),
            "us_per_candidate": round(
                1e6 * prof[part] / prof["candidates"] * base["driver_s"] / total, 1
            ),
        }
        for part in _PARTS
    ]
    accounted = sum(prof[p] for p in _PARTS)
    rows.append(
        {
            "part": "other (loop, references, bookkeeping)",
            "share_of_driver_%": round(100 * (total - accounted) / total, 1),
            "us_per_candidate": round(
                1e6 * (total - accounted) / prof["candidates"] * base["driver_s"] / total, 1
            ),
        }
    )
    columns = ["source", "candidates", "driver_cand_per_s", "driver_s", "task_s", "wall_s"]
    report(
        f"driver ceiling, chunks of {args.chunk_size}: enumeration (generated on the workers) vs "
        "substitution (generated by the driver)",
        columns,
        list(plain.values()),
        {"summary": plain},
    )
    report(
        f"where the enumeration driver's time goes ({base['candidates']} candidates; "
        f"start-up {base['startup_s']} s before)",
        ["part", "share_of_driver_%", "us_per_candidate"],
        rows,
    )


if __name__ == "__main__":
    main()
