"""Kill the driver again and again; the store it ends with must equal an uninterrupted run's.

One campaign (Lennard-Jones prefilter and teacher, so the rescore stage's
in-place updates are killed too) runs once without interruption, then again into
a second store under fire: each attempt is SIGKILLed (or Ctrl-C'd, ``--signal
INT``) at a random moment, ``--kills`` times, and finally left to finish.  The
two stores are then compared candidate by candidate (by id: row order follows
task completion and differs between any two runs): every id present once, the
same status, reason, energies, hull distances and keep flags of every stage,
the same relaxed structure.  Timing columns are not compared.

    python benchmarks/torture.py                       # 12 kills, 300 candidates
    python benchmarks/torture.py --kills 30 --signal INT --site workstation
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, wide_campaign  # noqa: E402

COMPARED = ["formula", "status", "reason", "energy_per_atom", "e_above_hull", "kept", "converged"]


def _campaign(folder: Path, name: str, n: int, chunk: int) -> Path:
    data = wide_campaign(
        str(folder / f"{name}.zarr"), n, {"name": "lennard-jones"}, chunk, max_steps=60
    )
    data["stages"]["rescore"] = {
        "model": {"name": "lennard-jones"},
        "relax": {"max_steps": 60},
        "keep": "e_above_hull <= 0.02",
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _hts(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hts.cli", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _by_id(path: Path) -> dict:
    from hts.store import open_dataset

    ds = open_dataset(path)
    ids = ds.id.values.astype(object)
    cols = {c: ds[c].values for c in COMPARED}
    pos = {}
    for i in range(ds.sizes["candidate"]):
        s, n = int(ds.atom_start.values[i]), int(ds.n_atoms.values[i])
        pos[ids[i]] = ds.positions.values[s : s + n]
    return {
        "ids": list(ids),
        "cols": cols,
        "positions": pos,
        "row": {c: i for i, c in enumerate(ids)},
    }


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for cid in set(a["row"]) & set(b["row"]):
        i, j = a["row"][cid], b["row"][cid]
        for name in COMPARED:
            x, y = a["cols"][name][i], b["cols"][name][j]
            same = (
                np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                if np.asarray(x).dtype.kind == "f"
                else np.array_equal(np.asarray(x, dtype=object), np.asarray(y, dtype=object))
            )
            if not same:
                out.append(f"{cid} {name}: {x} != {y}")
        if not np.array_equal(a["positions"][cid], b["positions"][cid]):
            out.append(f"{cid} positions differ")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--site", default="local")
    ap.add_argument("--signal", choices=["KILL", "INT", "TERM"], default="KILL")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sig = getattr(signal, f"SIG{args.signal}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref = _campaign(folder, "reference", args.candidates, args.chunk_size)
        t0 = time.time()
        p = _hts(["run", str(ref), "-q", "--site", args.site], folder)
        assert p.wait() == 0, p.stderr.read()
        uninterrupted_s = time.time() - t0

        tortured = _campaign(folder, "tortured", args.candidates, args.chunk_size)
        kills, attempts, exits = 0, 0, []
        while True:
            attempts += 1
            p = _hts(["run", str(tortured), "-q", "--site", args.site], folder)
            if kills < args.kills:
                # early enough that most attempts die before the work is done (a resume
                # starts up in a few seconds and gets a little further each time)
                time.sleep(rng.uniform(1.0, max(2.0, uninterrupted_s / 3)))
                if p.poll() is None:
                    p.send_signal(sig)
                    kills += 1
            rc = p.wait()
            exits.append(rc)
            if rc == 0:
                break
            if attempts > 4 * args.kills + 10:
                raise SystemExit(f"the run never finished; last stderr:\n{p.stderr.read()}")
        a, b = _by_id(folder / "reference.zarr"), _by_id(folder / "tortured.zarr")

    lost = sorted(set(a["ids"]) - set(b["ids"]))
    extra = sorted(set(b["ids"]) - set(a["ids"]))
    duplicated = len(b["ids"]) - len(set(b["ids"]))
    diffs = _differences(a, b)
    rows = [
        {"what": "signals sent", "value": f"{kills} × SIG{args.signal}"},
        {"what": "attempts (runs started)", "value": attempts},
        {"what": "candidates, uninterrupted", "value": len(a["ids"])},
        {"what": "candidates, tortured", "value": len(b["ids"])},
        {"what": "lost", "value": len(lost)},
        {"what": "extra", "value": len(extra)},
        {"what": "stored twice", "value": duplicated},
        {"what": "values that differ", "value": len(diffs)},
        {"what": "equal", "value": "yes" if not (lost or extra or duplicated or diffs) else "NO"},
    ]
    report(
        f"torture: {args.candidates} candidates, chunks of {args.chunk_size}, site {args.site}",
        ["what", "value"],
        rows,
        {"exit_codes": exits, "first_differences": diffs[:10], "lost": lost[:10]},
    )


if __name__ == "__main__":
    main()
