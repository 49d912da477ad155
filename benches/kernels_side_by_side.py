#!/usr/bin/env python3
"""Interleaves PyTorch and our kernels run by run (torch, ours, torch, ours, ...) on the shapes of
`benches/kernels_torch.py`, so that both see the same load on a shared machine, and prints the
medians and the median of the per-pair ratios (ours / torch: below 1 means ours is faster).

  TORCH_THREADS=2 OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2 \\
    python3 benches/kernels_side_by_side.py path/to/release/examples/kernels [RUNS] [FILTER]
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import kernels_torch  # noqa: E402


def main():
    binary = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    filt = sys.argv[3] if len(sys.argv) > 3 else ""
    env = dict(os.environ, RAYON_NUM_THREADS=os.environ.get("RAYON_NUM_THREADS", "2"))
    ours = subprocess.Popen([binary, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run_ours(name):
        ours.stdin.write(name + "\n")
        ours.stdin.flush()
        secs, got = ours.stdout.readline().split(" ", 1)
        if secs == "unknown":
            raise SystemExit(f"our bench has no case {name!r}")
        return float(secs)

    def run_torch(f):
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {runs} interleaved runs after a warm-up; "
          "median seconds; ratio = median of ours/torch per pair")
    print(f"{'case':<46} {'torch':>8} {'ours':>8} {'ratio':>6}")
    with torch.inference_mode():
        for name, f in kernels_torch.cases():
            if filt not in name:
                continue
            run_torch(f)
            run_ours(name)
            tt, to, ratios = [], [], []
            for _ in range(runs):
                a = run_torch(f)
                b = run_ours(name)
                tt.append(a)
                to.append(b)
                ratios.append(b / a)
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            print(f"{name:<46} {med(tt):8.4f} {med(to):8.4f} {med(ratios):6.2f}", flush=True)
    ours.stdin.write("quit\n")
    ours.stdin.flush()
    ours.wait()


if __name__ == "__main__":
    main()
