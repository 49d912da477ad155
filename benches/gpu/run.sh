#!/usr/bin/env bash
# SDXL inpainting at 1024², 30 steps: ours (candle, CUDA, f16) against diffusers fp16 on the
# same GPU, one after the other, random weights of the real architecture on both sides (no
# download). Run from the repository root on the GPU machine:
#
#   benches/gpu/run.sh [path/to/outpaint built with --features cuda]
#
# Building: candle compiles its kernels to PTX with nvcc at build time and links libcuda,
# cuBLAS, cuRAND and NVRTC dynamically; the binary then needs the NVIDIA driver (libcuda.so.1)
# and those libraries at run time. Without a system toolkit, what worked here (1 December 2026,
# no GPU on the build machine) is PyPI's CUDA 13.4 wheels (cudarc 0.19.10 knows CUDA <= 13.4):
#   python3 -m venv cu && cu/bin/pip install nvidia-cuda-nvcc==13.4.92 'nvidia-cuda-crt==13.4.*' \
#       'nvidia-cuda-runtime==13.4.*' 'nvidia-nvvm==13.4.*' 'nvidia-cuda-nvrtc==13.4.*' \
#       nvidia-cuda-cccl==13.3.5.0.6 nvidia-cublas nvidia-curand
#   CU=$PWD/cu/lib/python3.11/site-packages/nvidia/cu13
#   (cd $CU/lib && for l in cublas cublasLt cudart nvrtc; do ln -sf lib$l.so.13 lib$l.so; done \
#       && ln -sf libcurand.so.10 libcurand.so)
# plus, on a machine without the driver, a link-time stub libcuda.so in $CU/lib (any shared
# object with soname libcuda.so.1 defining the cu* symbols cudarc declares; the driver's real
# library replaces it at run time), then
#   PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
# and LD_LIBRARY_PATH=$CU/lib when running. Add `flash-attn` for FlashAttention-2 (a long build).
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
