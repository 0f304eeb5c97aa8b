#!/usr/bin/env bash
# The one prepared GPU run (issues: scale-up, paper-scale reproductions). On a GPU machine:
#   OUT=/some/dir bash benchmarks/gpu/run.sh            # at most BUDGET seconds (default 480)
#   bash benchmarks/gpu/run.sh --dry-run                # rehearsal on a CPU machine: every step
#                                                       # runs, on the CPU, at small sizes
# Steps: (1) make the package importable without network (PYTHONPATH=src plus the wheels in
# .whl/, if the machine lacks pydantic, mlxtend or cvxpy); (2) pytest -m gpu (GPU == CPU, float64,
# 20 steps of every rule); (3) the batching benchmark at K = 1, 16, 256, 1024 and the syncs per
# step; (4) full-size training estimates measured on this device (FLOPs and s/step); (5) as many
# `steepest reproduce NAME --size full` as fit in the time left; (6) everything into
# $OUT/results.tar.gz plus $OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-/tmp/steepest-gpu-out}
BUDGET=${BUDGET:-480}
WORK=${WORK:-/tmp/steepest-gpu-work}
mkdir -p "$OUT" "$WORK/results"
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[run.sh +$(( $(date +%s) - T0 ))s] $*"; }
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# (1) set-up: no network there, so missing packages come as wheels carried in .whl/
if ! python3 -c "import pydantic, mlxtend, cvxpy" 2>/dev/null; then
  if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
      || { say "wheel install failed"; exit 1; }
    export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
  fi
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
python3 - <<'PY' || { say "the package does not import"; exit 1; }
import torch, steepest, pydantic, mlxtend
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-", "pydantic", pydantic.VERSION)
PY
if [[ $DRY == 1 ]]; then  # the rehearsal: full-size estimates of one experiment, smoke-size reproductions
  DEV=cpu; KS=1,16; BSTEPS=20; EST_ONLY=--only=flavors-f2; SIZE=smoke; RF_EXTRA="--safety 0 --overhead 0"
else
  DEV=cuda; KS=1,16,256,1024; BSTEPS=200; EST_ONLY=; SIZE=full; RF_EXTRA=
fi
say "device $DEV, budget ${BUDGET}s"

# (2) GPU == CPU for every rule (skips without CUDA)
say "pytest -m gpu"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25

# (3) batching throughput and syncs per step
say "batching benchmark"
timeout 120 python3 benchmarks/gpu/bench_gpu_batching.py --device $DEV --steps $BSTEPS --ks $KS

# (4) full-size estimates on this device
say "full-size estimates"
timeout 150 python3 benchmarks/estimate_full_size.py --device $DEV --steps 3 $EST_ONLY --json "$WORK/results/estimates.json"

# (5) reproductions that fit in the time left (30 s kept for packing)
BUD=$(( $(left) - 30 ))
say "reproductions, ${BUD}s left for them"
if [[ $BUD -gt 30 && -f "$WORK/results/estimates.json" ]]; then
  python3 benchmarks/gpu/run_full.py --estimates "$WORK/results/estimates.json" --out "$WORK/results/reproduce" \
    --work "$WORK/full-work" --budget $BUD --device $DEV --size $SIZE $RF_EXTRA
fi

# (6) pack (the device tool brings back at most 8 files)
cp "$OUT/log.txt" "$WORK/results/log.txt" 2>/dev/null
tar -C "$WORK" -czf "$OUT/results.tar.gz" results
say "done; $(du -h "$OUT/results.tar.gz" | cut -f1) in $OUT/results.tar.gz"
