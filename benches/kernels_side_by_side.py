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

    # A pause before every run: the other side's idle threads may still be spinning (OpenMP's
    # wait policy, rayon's), which would otherwise slow down whichever runs next.
    pause = float(os.environ.get("PAUSE_S", "0.3"))

    def run_ours(name, repeats):
        time.sleep(pause)
        ours.stdin.write(f"{repeats} {name}\n")
        ours.stdin.flush()
        secs, _ = ours.stdout.readline().split(" ", 1)
        if secs == "unknown":
            raise SystemExit(f"our bench has no case {name!r}")
        return float(secs)

    def run_torch(f, repeats):
        time.sleep(pause)
        f()
        t0 = time.perf_counter()
        for _ in range(repeats):
            f()
        return (time.perf_counter() - t0) / repeats

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {runs} interleaved runs after a warm-up "
          "(each the mean of back-to-back calls); median seconds; ratio = median of ours/torch per pair")
    print(f"{'case':<46} {'torch':>8} {'ours':>8} {'ratio':>6}")
    with torch.inference_mode():
        for name, f in kernels_torch.cases():
            if filt not in name:
                continue
            # Each timed run: one untimed call, then the mean of enough back-to-back calls for
            # about 0.2 s (the op as it runs inside a model, threads awake).
            repeats = max(1, min(50, round(0.2 / max(run_torch(f, 1), 1e-4))))
            run_ours(name, 1)
            tt, to, ratios = [], [], []
            for _ in range(runs):
                a = run_torch(f, repeats)
                b = run_ours(name, repeats)
                tt.append(a)
                to.append(b)
                ratios.append(b / a)
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            print(f"{name:<46} {med(tt):8.4f} {med(to):8.4f} {med(ratios):6.2f}", flush=True)
    ours.stdin.write("\n")
    ours.stdin.flush()
    ours.wait()


if __name__ == "__main__":
    main()
