#!/usr/bin/env bash
# Alternates our kernels (release example, RAYON_NUM_THREADS=2) and PyTorch's (2 threads),
# case by case, REPS times, for ratios on a noisy machine.
#   benches/kernels_side_by_side.sh [REPS] [RUNS] [FILTER...]
# Env: PYTHON (default /work/venv-diffusion/bin/python), KERNELS (the built example).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-2}; runs=${2:-3}; shift 2 || true
py=${PYTHON:-/work/venv-diffusion/bin/python}
bin=${KERNELS:-${CARGO_TARGET_DIR:-target}/release/examples/kernels}
filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
  filters=("conv3x3 320" "conv3x3 640" "1280 16x16" "1280 8x8" "(16, 4096, 40)" "(16, 1024, 80)"
           "lk 77" "geglu" "group norm 32" "group norm+silu" "4096, 320)->320" "4096, 320)->2560"
           "4096, 1280)->320" "1024, 640)->640" "256, 1280)->1280" "256, 5120)->1280")
fi
for f in "${filters[@]}"; do
  for _ in $(seq "$reps"); do
    RAYON_NUM_THREADS=2 SKIP_CANDLE=${SKIP_CANDLE:-1} "$bin" "$f" "$runs" | tail -n +2
    TORCH_THREADS=2 OMP_NUM_THREADS=2 "$py" benches/kernels_torch.py "$f" "$runs" | tail -n +2
  done
done
