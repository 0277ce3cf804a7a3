#!/usr/bin/env bash
# The GPU figures in one command, in at most 8 minutes on one CUDA GPU:
#
#   1. benchmarks/relax.py --device cuda, the student: 8/16/32/64-atom cells, 1,024 per size
#      batched, the one-by-one ASE loop timed on the first ones (rates per structure);
#   2. the same for the teacher (SevenNet-0);
#   3. the demo campaign (workflows/demo.yaml) on the GPU (model.device: auto picks cuda),
#      on a one-process site whose GPU stages run in GPU_WORKERS threads.
#
# Each step runs under its own time limit (and all of them under TOTAL seconds); a step
# that runs out keeps what it measured.  Tables and JSON lines go to OUTDIR (one log per
# step, summary.json), and a summary is printed at the end.
#
#   benchmarks/gpu.sh [OUTDIR]             # default OUTDIR: benchmarks/out/gpu
#   benchmarks/gpu.sh --smoke [OUTDIR]     # CPU, tiny sizes: checks the script end to end
#                                          # (default OUTDIR: benchmarks/out/gpu-smoke)
#
# Python: $PYTHON, else the checkout's .venv, else python3.  Where hts's dependencies are
# not importable (the GPU machine: no network, torch preinstalled), the wheels in
# $WHEELHOUSE (default: .whl, then wheelhouse) are installed with --no-index --no-deps into
# $SITE_DIR (default /tmp/hts-site) and put on PYTHONPATH after the checkout; build them on
# a machine with an index:
#
#   make wheelhouse PY=3.12 PLATFORM=manylinux_2_28_x86_64 OUT=.whl SKIP=@scripts/gpu-image.skip
#
# The limits (seconds): T_STUDENT=120 T_TEACHER=150 T_ALLOYS=0 T_DEMO=150, all steps started
# within TOTAL=455 (a step past its limit gets SIGTERM, then 15 s to stop), GPU_WORKERS=4; exit
# status 0 when every step finished in its time, 1 otherwise.  T_ALLOYS > 0 adds a step
# before the demo: benchmarks/million.py on the GPU site, fcc Cu-Ag-Au-Pd orderings up to
# ALLOYS_ATOMS=7 atoms (workflows/alloys.yaml: its student scoring every ordering, SevenNet-0
# the survivors) and a recall sample of ALLOYS_SAMPLE=300 orderings (it needs icet: a C++
# build from the wheelhouse's sdist, about a minute).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0
OUTDIR=""
for a in "$@"; do
  case "$a" in
    --smoke | --dry-run) SMOKE=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu.sh: unknown option $a" >&2; exit 2 ;;
    *) OUTDIR=$a ;;
  esac
done
[ "$SMOKE" = 1 ] && OUTDIR=${OUTDIR:-$ROOT/benchmarks/out/gpu-smoke}
OUTDIR=${OUTDIR:-$ROOT/benchmarks/out/gpu}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONUNBUFFERED=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

T_STUDENT=${T_STUDENT:-120}
T_TEACHER=${T_TEACHER:-150}
T_DEMO=${T_DEMO:-150}
T_ALLOYS=${T_ALLOYS:-0}
ALLOYS_ATOMS=${ALLOYS_ATOMS:-7}
ALLOYS_SAMPLE=${ALLOYS_SAMPLE:-300}
TOTAL=${TOTAL:-455}
GPU_WORKERS=${GPU_WORKERS:-4}
SECONDS=0
say() { echo "gpu.sh [$(printf '%3d' "$SECONDS") s] $*"; }

# --- set-up: hts from this checkout, its dependencies from the wheelhouse if missing ---------
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DEPS="import sevenn, mace, pymatgen.core, parsl, zarr, ase, spglib, e3nn, typer, hts.cli"
if ! "$PY" -c "$DEPS" 2>/dev/null; then
  WH=${WHEELHOUSE:-}
  if [ -z "$WH" ]; then
    for d in "$ROOT/.whl" "$ROOT/wheelhouse"; do [ -d "$d" ] && WH=$d && break; done
  fi
  [ -n "$WH" ] && [ -d "$WH" ] || { echo "gpu.sh: hts's dependencies are missing and no wheelhouse (.whl, wheelhouse, \$WHEELHOUSE)" >&2; exit 2; }
  SITE_DIR=${SITE_DIR:-/tmp/hts-site}
  say "installing $(ls "$WH"/*.whl | grep -vc '/hts-') wheels from $WH into $SITE_DIR"
  # hts itself comes from the checkout (first on PYTHONPATH), so its wheel is not installed
  ls "$WH"/*.whl | grep -v '/hts-[0-9]' | xargs "$PY" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$SITE_DIR" || { echo "gpu.sh: installing the wheels failed" >&2; exit 2; }
  # sdists with compiled parts (icet) are built here, their build requirements from the folder;
  # one that fails to build only costs the steps that need it
  for sd in "$WH"/*.tar.gz; do
    [ -e "$sd" ] || continue
    say "building $(basename "$sd")"
    "$PY" -m pip install -q --no-index --find-links "$WH" --no-deps --no-cache-dir --upgrade \
      --target "$SITE_DIR" "$sd" > "$OUTDIR/build-$(basename "$sd" .tar.gz).txt" 2>&1 \
      || { echo "gpu.sh: building $(basename "$sd") failed:" >&2; tail -n 20 "$OUTDIR/build-$(basename "$sd" .tar.gz).txt" >&2; }
  done
  export PYTHONPATH="$ROOT:$SITE_DIR${PYTHONPATH#"$ROOT"}"
  export PATH="$SITE_DIR/bin:$PATH"
  "$PY" -c "$DEPS" || { echo "gpu.sh: hts does not import after installing the wheels" >&2; exit 2; }
fi

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  STUDENT_ARGS=(--sizes 8 16 --n 6 --batch 4 --n-loop 2 --steps 15)
  TEACHER_ARGS=(--sizes 8 --n-teacher 3 --batch 4 --n-loop 1 --steps 10)
else
  DEVICE=cuda
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu.sh: torch sees no CUDA device (--smoke runs on the CPU)" >&2
    exit 2
  fi
  STUDENT_ARGS=(--sizes 8 16 32 64 --n 1024 --batch 256 --n-loop 64 --loop-seconds 10)
  TEACHER_ARGS=(--sizes 8 16 32 64 --n-teacher 1024 --batch 256 --n-loop 16 --loop-seconds 15)
fi
"$PY" - "$OUTDIR/environment.json" <<'EOF'
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
from hts.models.base import resolve_device
info["demo_device"] = resolve_device("auto")  # what the demo's model.device: auto picks
json.dump(info, open(sys.argv[1], "w"))
print(json.dumps(info))
EOF
say "python $PY, device $DEVICE, figures in $OUTDIR"

# --- the steps -------------------------------------------------------------------------------
declare -A STATUS TIME
cap() { # a step's limit: its own, or what TOTAL leaves if that is less
  local left=$((TOTAL - SECONDS))
  echo $(($1 < left ? $1 : left))
}
step() { # name limit command...: run it under the limit, its output in OUTDIR/name.txt
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if [ "$limit" -le 5 ]; then STATUS[$name]="skipped (no time left)"; TIME[$name]=0; say "$name: skipped"; return; fi
  say "$name: up to $limit s"
  timeout -k 15 "$limit" "$@" > "$OUTDIR/$name.txt" 2>&1
  rc=$?
  TIME[$name]=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]=ok ;;
    124 | 137) STATUS[$name]="timed out after $limit s (partial)" ;;
    *) STATUS[$name]="failed (exit $rc)"; tail -n 15 "$OUTDIR/$name.txt" | sed 's/^/    /' ;;
  esac
  say "$name: ${STATUS[$name]} in ${TIME[$name]} s"
}
budget() { echo $(($1 - 30 > 10 ? $1 - 30 : 10)); } # relax.py's, inside its step's limit

# the relaxations: relax.py skips a size that would not fit its budget and still writes its
# table; the hard limit only catches a size that overruns
lim=$(cap "$T_STUDENT")
step relax-student "$lim" "$PY" "$ROOT/benchmarks/relax.py" --models student --device "$DEVICE" \
  --budget "$(budget "$lim")" "${STUDENT_ARGS[@]}"
lim=$(cap "$T_TEACHER")
step relax-teacher "$lim" "$PY" "$ROOT/benchmarks/relax.py" --models teacher --device "$DEVICE" \
  --budget "$(budget "$lim")" "${TEACHER_ARGS[@]}"

# the demo campaign: its own store in OUTDIR, a site with a GPU executor of GPU_WORKERS threads
cat > "$OUTDIR/gpu-site.yaml" <<EOF
# written by benchmarks/gpu.sh: the driver's thread pool; the GPU stages on $GPU_WORKERS threads
name: gpu-bench
description: one process, one GPU (model.device auto picks cuda)
executors:
  cpu:
    kind: threads
    workers: auto
    threads_per_worker: 1
  gpu:
    kind: threads
    workers: $GPU_WORKERS
    threads_per_worker: 1
EOF
if [ "$T_ALLOYS" -gt 0 ]; then
  if [ "$SMOKE" = 1 ]; then ALLOYS_ATOMS=2; ALLOYS_SAMPLE=4; fi
  step alloys "$(cap "$T_ALLOYS")" "$PY" "$ROOT/benchmarks/million.py" --max-atoms "$ALLOYS_ATOMS" \
    --sample "$ALLOYS_SAMPLE" --site "$OUTDIR/gpu-site.yaml" --keep "$OUTDIR/alloys"
fi

CAMPAIGN=$ROOT/workflows/demo.yaml
if [ "$SMOKE" = 1 ]; then # the demo's first candidates, few teacher steps
  CAMPAIGN=$OUTDIR/demo-smoke.yaml
  "$PY" - "$ROOT/workflows/demo.yaml" "$CAMPAIGN" <<'EOF'
import sys
from pathlib import Path
import yaml
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
c = yaml.safe_load(src.read_text())
pre = c["stages"]["prefilter"]
pre["model"]["path"] = str((src.parent / pre["model"]["path"]).resolve())
pre["distillation"]["report"] = str((src.parent / pre["distillation"]["report"]).resolve())
c["stages"]["rescore"]["relax"]["max_steps"] = 10
c["limits"] = {**c.get("limits", {}), "max_candidates": 24}
c["chunk_size"] = 8
dst.write_text(yaml.safe_dump(c, sort_keys=False))
EOF
fi
rm -rf "$OUTDIR/demo.zarr" "$OUTDIR/demo.zarr."*
step demo "$(cap "$T_DEMO")" "$PY" -m hts.cli run "$CAMPAIGN" --store "$OUTDIR/demo.zarr" \
  --site "$OUTDIR/gpu-site.yaml" --quiet --top 5

# --- summary ---------------------------------------------------------------------------------
STEPS_JSON=$(for s in relax-student relax-teacher alloys demo; do
  [ "$s" = alloys ] && [ "$T_ALLOYS" -le 0 ] && continue
  printf '%s\t%s\t%s\n' "$s" "${STATUS[$s]:-not run}" "${TIME[$s]:-0}"; done)
export STEPS_JSON
"$PY" - "$OUTDIR" "$DEVICE" "$SECONDS" <<'EOF'
import json, math, os, sys
from pathlib import Path

out, device, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
steps = {}
for line in os.environ["STEPS_JSON"].splitlines():
    name, status, secs = line.split("\t")
    steps[name] = {"status": status, "seconds": int(secs)}


def relax_rows(name):
    """The JSON line's rows, or (a step cut short) the rows it printed as it went."""
    p = out / f"{name}.txt"
    if not p.exists():
        return [], {}
    rows, extra = [], {}
    for line in p.read_text().splitlines():
        if line.startswith('{"benchmark"'):
            d = json.loads(line)
            rows = d.pop("rows")
            extra = {k: v for k, v in d.items() if k != "benchmark"}
            break
        if line.startswith("{'model'"):
            # a row as relax.py prints it (a dict's repr; nan where nothing converged)
            rows.append(eval(line, {"__builtins__": {}}, {"nan": math.nan, "inf": math.inf}))
    return rows, extra


summary = {"benchmark": "gpu figures", "device": device, "seconds": total, "steps": steps}
env = out / "environment.json"
if env.exists():
    summary["environment"] = json.loads(env.read_text())
relax = []
for name in ("relax-student", "relax-teacher"):
    rows, extra = relax_rows(name)
    relax += rows
    if extra.get("skipped_for_budget"):
        steps[name]["skipped_for_budget"] = extra["skipped_for_budget"]
summary["relax"] = relax

demo = None
store = out / "demo.zarr"
if store.exists():
    try:
        from hts.report import summarize

        s = summarize(store, top=3)
        wall = s["wall_s"] or steps["demo"]["seconds"]  # a run cut short: the step's time
        demo = {
            "finalized": s["finalized"],
            "rows": s["rows"],
            "wall_s": round(wall, 1),
            "stages": s["stages"],
            "candidates_per_s": round(s["rows"] / wall, 2) if wall else None,
        }
    except Exception as err:  # a store cut short before its first commit
        demo = {"error": f"{type(err).__name__}: {err}"}
summary["demo"] = demo
alloys = None
if (out / "alloys.txt").exists():
    for line in (out / "alloys.txt").read_text().splitlines():
        if line.startswith('{"benchmark"'):
            alloys = json.loads(line).get("summary")
summary["alloys"] = alloys
(out / "summary.json").write_text(json.dumps(summary, indent=1))

print(f"\nGPU figures ({device}; {total} s in all) in {out}")
for name, st in steps.items():
    print(f"  {name:14s} {st['status']} ({st['seconds']} s)"
          + (f", skipped for time: {' '.join(st['skipped_for_budget'])}" if st.get("skipped_for_budget") else ""))
cols = [("model", "model"), ("atoms", "atoms"), ("structures", "n"),
        ("batched_per_s", "batched/s"), ("ase_loop_per_s", "loop/s"), ("speedup", "speedup"),
        ("batched_atom_steps_per_s", "atom-steps/s"), ("peak_gpu_mb", "peak MiB"),
        ("max_dE_meV_per_atom", "dE meV/at")]
if relax:
    w = [max(len(h), *(len(str(r.get(k, ""))) for r in relax)) for k, h in cols]
    print("  " + "  ".join(h.rjust(x) for (k, h), x in zip(cols, w)))
    for r in relax:
        print("  " + "  ".join(str(r.get(k, "")).rjust(x) for (k, _), x in zip(cols, w)))
if demo and "stages" in demo:
    f = ", ".join(f"{s['stage']} {s['in']}→{s['kept']}" for s in demo["stages"])
    print(f"  demo: {demo['rows']} candidates in {demo['wall_s']} s"
          f" ({demo['candidates_per_s']}/s), {f}, finalized: {demo['finalized']}")
elif demo:
    print(f"  demo: {demo['error']}")
for k, v in (alloys or {}).items():
    print(f"  alloys: {k}: {v}")
print(json.dumps(summary))
EOF
[ $? = 0 ] || { echo "gpu.sh: the summary failed" >&2; exit 1; }
for s in relax-student relax-teacher alloys demo; do
  [ "$s" = alloys ] && [ "$T_ALLOYS" -le 0 ] && continue
  [ "${STATUS[$s]:-}" = ok ] || exit 1
done
exit 0
