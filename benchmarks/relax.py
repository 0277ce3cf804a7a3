"""Batched relaxation vs the one-by-one ASE loop: structures/s, side by side in one process.

For each cell size (8, 16 and 32 atoms: supercells of the demo campaign's
candidates, strained 3 % and rattled so every relaxation has work to do) and
each model (the distilled student, the SevenNet-0 teacher), the same structures
are relaxed twice with the same FIRE settings:

- one by one: ``FIRE(FrechetCellFilter(atoms)).run(fmax)`` with the model's ASE
  calculator (what a plain ASE script does);
- batched: :func:`hts.stages.relax.relax_batch`, the prefilter's relaxation.

The two runs alternate per size so machine noise hits both alike.  Energies of
converged structures must agree to the foundation issue's tolerance.

The student is ``benchmarks/models/mace-student`` (the MACE direct student the
demo shipped before trunk students, 115 k parameters): a direct student is
never relaxed in a campaign, but its energy gradients serve as a force field of
a relaxing student's size and cost, which is what the batching comparison
measures.  (The shipped trunk student carries SevenNet-0's whole trunk: its
forces cost what the teacher's do.)

A screen relaxes a stream of candidates, so the default set (128 student cells,
batches of 32) is four batches long: structures that converge leave the batch
and waiting ones take their places, as in the prefilter.  With ``--n`` no larger
than ``--batch`` only the draining batch is measured.  The teacher is slow one by
one, so it gets ``--n-teacher`` cells.

On a GPU the one-by-one loop is far slower than the batch, so ``--n-loop`` (and
``--loop-seconds``) time it on the first cells only, and the rates stay per structure;
the rows then also carry ``loop_structures``.  Each row gives atom-steps/s (atoms ×
FIRE steps per second) on both sides and, on CUDA, the batched run's peak GPU memory
(``torch.cuda.max_memory_allocated``).  ``--budget`` skips sizes that would not fit in
the seconds given (``benchmarks/gpu.sh`` runs this under a time limit).

    python benchmarks/relax.py                       # student and teacher, CPU, 1 thread
    python benchmarks/relax.py --models student --device cuda --n 1024 --batch 256 \
        --sizes 8 16 32 64 --n-loop 64 --loop-seconds 15
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import report  # noqa: E402

STUDENT = ROOT / "benchmarks" / "models" / "mace-student" / "student.model"


def structures(n_atoms: int, count: int, seed: int = 0):
    """``count`` cells of exactly ``n_atoms`` atoms from the demo's candidates."""
    import numpy as np

    from hts.candidates import open_source
    from hts.spec import load_campaign

    rng = np.random.default_rng(seed)
    c = load_campaign(ROOT / "workflows" / "demo.yaml")
    prims = []
    for cand in open_source(c):
        if cand.error:
            continue
        a = cand.to_atoms()
        if n_atoms % len(a) == 0:
            prims.append(a)
        if len(prims) == count:
            break
    if not prims:
        raise SystemExit(f"no demo candidate divides {n_atoms} atoms")
    out = []
    # the demo has ~600 cells of each size: past that, the same ones again, strained and
    # rattled anew (a fresh draw from the same generator)
    while len(out) < count:
        for a in prims:
            out.append(_strained(a, n_atoms, rng))
            if len(out) == count:
                break
    return out


def _strained(a, n_atoms: int, rng):
    """A supercell of ``a`` with ``n_atoms`` atoms, strained up to 3 % and rattled."""
    import numpy as np

    n = len(a)
    reps, k = [1, 1, 1], n_atoms // n
    axis = 0
    while k > 1:  # factor k over the axes, smallest first
        for f in (2, 3, 5, 7):
            if k % f == 0:
                reps[axis % 3] *= f
                k //= f
                axis += 1
                break
        else:
            reps[axis % 3] *= k
            k = 1
    s = a.repeat(reps)
    s.set_cell(s.cell[:] * (1 + rng.uniform(-0.03, 0.03, (3, 3)) * np.eye(3)), scale_atoms=True)
    s.positions += rng.normal(0, 0.05, s.positions.shape)
    return s


def load(name: str, device: str, threads: int, batch: int):
    from hts.models import load_model
    from hts.spec import ModelSpec

    common = dict(device=device, threads=threads, batch_size=batch)
    spec = (
        ModelSpec(name="mace", path=str(STUDENT), dtype="float32", **common)
        if name == "student"
        else ModelSpec(name="sevennet-0", **common)
    )
    return load_model(spec)


def ase_loop(model, cells, fmax: float, steps: int, seconds: float | None = None):
    """One by one; with ``seconds``, stops starting new cells once that much time has passed
    (at least one is relaxed), so a slow loop is timed on the cells it got through."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    calc = model.calculator()
    energies = []
    t0 = time.perf_counter()
    for a in cells:
        if seconds is not None and energies and time.perf_counter() - t0 > seconds:
            break
        a = a.copy()
        a.calc = calc
        opt = FIRE(FrechetCellFilter(a), logfile=None)
        ok = opt.run(fmax=fmax, steps=steps)
        energies.append((a.get_potential_energy() / len(a), bool(ok), opt.nsteps))
    return energies


def batched(model, cells, fmax: float, steps: int, batch: int):
    from hts.stages.relax import relax_batch

    out = relax_batch(
        model, cells, fmax=fmax, max_steps=steps, max_step=0.2, cell=True, batch_size=batch
    )
    return [(o.energy / len(o.atoms), o.converged, o.n_steps) for o in out]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=["student", "teacher"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--n", type=int, default=128, help="student structures per size")
    ap.add_argument("--n-teacher", type=int, default=32, help="teacher structures per size")
    ap.add_argument("--batch", type=int, default=32, help="batched relaxation's batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--n-loop",
        type=int,
        default=None,
        help="time the one-by-one loop on the first N structures only (default: all); "
        "its rate is per structure, so the speedup compares like with like",
    )
    ap.add_argument(
        "--loop-seconds",
        type=float,
        default=None,
        help="stop the one-by-one loop after this many seconds per size (the cells it relaxed "
        "are timed)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run: a size that would not finish in what is left (judged "
        "from the last one, in proportion to atoms) is skipped and named in the JSON line",
    )
    args = ap.parse_args()
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import numpy as np

    t_start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    subset = args.n_loop is not None or args.loop_seconds is not None
    rows, skipped = [], []
    for name in args.models:
        model = load(name, args.device, args.threads, args.batch)
        last = None  # (atoms, seconds) of the last size of this model
        for size in args.sizes:
            if args.budget is not None and last is not None:
                left = args.budget - (time.perf_counter() - t_start)
                if last[1] * size / last[0] > left:
                    skipped.append(f"{name}:{size}")
                    print(f"skipping {name} at {size} atoms: {left:.0f} s left", flush=True)
                    continue
            t_size = time.perf_counter()
            cells = structures(size, args.n if name == "student" else args.n_teacher)
            batched(model, cells[:2], args.fmax, 3, args.batch)  # warm-up (compilation, caches)
            t0 = time.perf_counter()
            loop = ase_loop(model, cells[: args.n_loop], args.fmax, args.steps, args.loop_seconds)
            t_loop = time.perf_counter() - t0
            if cuda:
                import torch

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            bat = batched(model, cells, args.fmax, args.steps, args.batch)
            if cuda:
                torch.cuda.synchronize()
            t_bat = time.perf_counter() - t0
            both = [(a, b) for a, b in zip(loop, bat[: len(loop)], strict=True) if a[1] and b[1]]
            de = max((abs(a[0] - b[0]) for a, b in both), default=float("nan"))
            loop_rate, bat_rate = len(loop) / t_loop, len(cells) / t_bat
            row = {
                "model": name,
                "atoms": size,
                "structures": len(cells),
                **({"loop_structures": len(loop)} if subset else {}),
                "ase_loop_per_s": round(loop_rate, 2),
                "batched_per_s": round(bat_rate, 2),
                "speedup": round(bat_rate / loop_rate, 2),
                "max_dE_meV_per_atom": round(1000 * de, 3),
                "converged_loop": sum(a[1] for a in loop),
                "converged_batched": sum(b[1] for b in bat),
                "mean_steps": round(float(np.mean([b[2] for b in bat])), 1),
                # atoms × FIRE steps per second: the work rate, comparable across sizes
                "loop_atom_steps_per_s": round(size * sum(a[2] for a in loop) / t_loop),
                "batched_atom_steps_per_s": round(size * sum(b[2] for b in bat) / t_bat),
                **(
                    {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
                    if cuda
                    else {}
                ),
                "device": args.device,
            }
            rows.append(row)
            last = (size, time.perf_counter() - t_size)
            print(rows[-1], flush=True)
    extra = {"threads": args.threads, "fmax": args.fmax, "batch": args.batch}
    if cuda:
        import torch

        extra["gpu"] = torch.cuda.get_device_name()
    if skipped:
        extra["skipped_for_budget"] = skipped
    report(
        "batched vs one-by-one relaxation (structures/s)",
        list(rows[0]) if rows else ["model"],
        rows,
        extra,
    )


if __name__ == "__main__":
    main()
