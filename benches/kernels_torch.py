#!/usr/bin/env python3
"""PyTorch counterparts of `cargo run --release -p outpaint-diffusion --example kernels`:
the same SD 1.5 kernel shapes (512², batch 2), timed the same way (median of RUNS after one
warm-up), for side-by-side ratios.

  TORCH_THREADS=2 OMP_NUM_THREADS=2 python3 benches/kernels_torch.py [FILTER] [RUNS]
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass


def cases():
    g = torch.Generator().manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    for c, hw, n in [(320, 64, 2), (640, 32, 2), (1280, 16, 2), (1280, 8, 2), (128, 512, 1), (512, 128, 1)]:
        x, w, b = rn(n, c, hw, hw), rn(c, c, 3, 3) * 0.02, rn(c)
        vae = "vae " if n == 1 else ""
        yield f"{vae}conv3x3 {c}->{c} {hw}x{hw} b{n}", lambda x=x, w=w, b=b: F.conv2d(x, w, b, padding=1)
    for c_in, c_out in [(3, 128), (128, 3), (256, 128)]:
        x, w, b = rn(1, c_in, 512, 512), rn(c_out, c_in, 3, 3) * 0.02, rn(c_out)
        yield f"vae conv3x3 {c_in}->{c_out} 512x512 b1", lambda x=x, w=w, b=b: F.conv2d(x, w, b, padding=1)
    for c_in, c_out, hw in [(320, 320, 64), (640, 1280, 16)]:
        x, w, b = rn(2, c_in, hw, hw), rn(c_out, c_in, 1, 1) * 0.02, rn(c_out)
        yield f"conv1x1 {c_in}->{c_out} {hw}x{hw} b2", lambda x=x, w=w, b=b: F.conv2d(x, w, b)
    for name, n, lq, lk, d in [
        ("self-attn (16, 4096, 40)", 16, 4096, 4096, 40),
        ("self-attn (16, 1024, 80)", 16, 1024, 1024, 80),
        ("cross-attn (16, 4096, 40) lk 77", 16, 4096, 77, 40),
        ("vae attn (1, 4096, 512)", 1, 4096, 4096, 512),
    ]:
        q, k, v = rn(n, lq, d), rn(n, lk, d), rn(n, lk, d)
        yield name, lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)
    for l, k, n in [(4096, 320, 320), (4096, 320, 2560), (4096, 1280, 320), (1024, 640, 640),
                    (256, 1280, 1280), (256, 5120, 1280)]:
        x, w, b = rn(2, l, k), rn(n, k) * 0.02, rn(n)
        yield f"linear (2, {l}, {k})->{n}", lambda x=x, w=w, b=b: F.linear(x, w, b)
    a, b = rn(2048, 2048), rn(2048, 2048)
    yield "matmul 2048^3 (candle, gemm crate)", lambda: a @ b
    x = rn(2, 4096, 2 * 2560)

    def geglu(x=x):
        h, gate = x.chunk(2, dim=-1)
        return h * F.gelu(gate)

    yield "geglu (2, 4096, 2560)", geglu
    for silu, dims in [(False, [2, 320, 64, 64]), (True, [2, 320, 64, 64]), (True, [1, 128, 512, 512])]:
        x, w, b = rn(*dims), rn(dims[1]), rn(dims[1])
        if silu:
            f = lambda x=x, w=w, b=b: F.silu(F.group_norm(x, 32, w, b, 1e-5))  # noqa: E731
        else:
            f = lambda x=x, w=w, b=b: F.group_norm(x, 32, w, b, 1e-5)  # noqa: E731
        yield f"group norm{'+silu' if silu else ''} 32 groups {dims}", f


def main():
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, runs {runs}; median seconds (min)")
    with torch.inference_mode():
        for name, f in cases():
            if filt not in name:
                continue
            f()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            ts.sort()
            print(f"{name:<40} torch {ts[len(ts) // 2]:.4f} ({ts[0]:.4f})", flush=True)


if __name__ == "__main__":
    main()
