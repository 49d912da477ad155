#!/usr/bin/env bash
# SDXL inpainting at 1024², 30 steps: ours (candle, CUDA, f16) against diffusers fp16 on the
# same GPU, one after the other, random weights of the real architecture on both sides (no
# download). Run from the repository root on the GPU machine:
#
#   benches/gpu/run.sh [path/to/outpaint built with --features cuda]
#
# Building: `cargo build --release --features cuda` needs nvcc and the CUDA headers at build
# time only (candle compiles its kernels to PTX); the binary loads libcuda/cuBLAS at run time.
# Without a system toolkit, PyPI's wheels work:
#   pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-curand-cu12
#   export PATH=$VENV/lib/python3*/site-packages/nvidia/cuda_nvcc/bin:$PATH CUDA_COMPUTE_CAP=90
#   cargo build --release --features cuda
# (and LD_LIBRARY_PATH to the wheels' lib folders when running). Add `flash-attn` for
# FlashAttention-2 (a long build).
set -euo pipefail
OUTPAINT=${1:-target/release/outpaint}
PY=${PYTHON:-python3}
STEPS=${STEPS:-30}
RUNS=${RUNS:-3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== diffusers fp16"
"$PY" benches/gpu/sdxl_diffusers.py --steps "$STEPS" --runs "$RUNS" --warmup 1
echo "== outpaint (candle, CUDA f16)"
"$OUTPAINT" bench pipeline --model sdxl-inpaint --random-weights --steps "$STEPS" --runs "$RUNS" --warmup 1
