"""MACE forward + backward (energy, forces, stress) per structure: stock mace vs hts's swaps.

The same weights three ways, on the same batches, interleaved so machine noise
hits all alike:

- ``torchscript``: mace's compiled file (``student_compiled.model``), as mace
  runs it;
- ``eager``: mace's pickled module, unchanged;
- ``hts``: the pickled module after :func:`hts.models.mace_inference.optimize_for_inference`
  (what ``model: {name: mace}`` runs).

All three are fed the same input dict (built by hts), so only the model
differs.  Prints ms per structure and the speed-up of ``hts`` over the faster
stock variant.

    python benchmarks/mace_inference.py                       # the MACE direct student, CPU
    python benchmarks/mace_inference.py --model my.model --compiled my_compiled.model --device cuda
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
from relax import structures  # noqa: E402

STUDENT = ROOT / "benchmarks" / "models" / "mace-student"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=str(STUDENT / "student.model"))
    ap.add_argument("--compiled", default=str(STUDENT / "student_compiled.model"))
    ap.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch

    from hts.models.base import configure_threads
    from hts.models.batched import MaceModel, _load_mace_file
    from hts.models.tensor import TensorBatch

    configure_threads(args.threads)
    hts = MaceModel(args.model, args.device, 10**6, args.dtype)
    variants = {"hts": hts.model}
    for name, path in (("eager", args.model), ("torchscript", args.compiled)):
        if path:
            m = _load_mace_file(path, args.device)
            m = m.double() if args.dtype == "float64" else m.float()
            variants[name] = m.eval()

    def run(model, d):
        res = model(dict(d), compute_stress=True, training=False)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return res

    rows = []
    for size in args.sizes:
        for batch in args.batches:
            cells = structures(size, batch)
            d = hts._data(TensorBatch.from_atoms(cells, args.device))
            ref = run(variants["eager"], d)
            times = {name: 0.0 for name in variants}
            for model in variants.values():
                for _ in range(3):  # warm-up: TorchScript profiling runs, folded tensors
                    run(model, d)
            for _ in range(args.repeats):
                for name, model in variants.items():
                    t0 = time.perf_counter()
                    run(model, d)
                    times[name] += time.perf_counter() - t0
            err = float((run(variants["hts"], d)["forces"] - ref["forces"]).abs().max())
            row = {"atoms": size, "batch": batch}
            for name in variants:
                row[f"{name}_ms"] = round(1000 * times[name] / args.repeats / batch, 2)
            stock = min(row[f"{n}_ms"] for n in variants if n != "hts")
            row["speedup"] = round(stock / row["hts_ms"], 2)
            row["max_dF_eV_per_A"] = float(f"{err:.1e}")
            rows.append(row)
            print(row, flush=True)
    report(
        "MACE forward + backward, ms per structure (stock mace vs hts)",
        list(rows[0]),
        rows,
        {"model": args.model, "dtype": args.dtype, "device": args.device, "threads": args.threads},
    )


if __name__ == "__main__":
    main()
