#!/usr/bin/env python3
"""Alternating side-by-side timing of one diffusion component: PyTorch (diffusers, from
shared/perf/torch_reference.py) against `outpaint bench` (candle, this repository).

Both processes load their component once (random weights of the real architecture) and stay
up; the driver then asks each for one forward at a time, alternating which goes first each
round, so that the noise of a shared machine falls on both alike. Prints one JSON line per
run and a Markdown table: median, min and max seconds, the ratio of medians, peak RSS.

    benches/side_by_side.py unet --rounds 3
    benches/side_by_side.py sdxl_unet --rounds 2 --warmup 1
    benches/side_by_side.py vae_dec --outpaint target/release/outpaint \
        --torch-python /path/to/venv/bin/python --reference ../shared/perf/torch_reference.py

Threads: 2 each by default (TORCH_THREADS / RAYON_NUM_THREADS), as the issue's figures.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

# Our bench's component and model for each of torch_reference.py's components.
COMPONENTS = {
    "unet": ("unet", "sd15-inpaint"),
    "sdxl_unet": ("unet", "sdxl-inpaint"),
    "vae_enc": ("vae_enc", "sd15-inpaint"),
    "vae_dec": ("vae_dec", "sd15-inpaint"),
    "clip": ("clip", "sd15-inpaint"),
}


class Worker:
    """A benchmark process speaking the run/warmup/quit line protocol."""

    def __init__(self, name, cmd, env):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self.ready = self.read_event("ready")

    def read_event(self, want):
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("event") == want:
                return event
        raise RuntimeError(f"{self.name} exited before sending {want!r}")

    def run(self, cmd="run"):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read_event(cmd)

    def peak_rss_gib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=120)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("component", choices=sorted(COMPONENTS))
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--outpaint", default=os.path.join(repo, "target/release/outpaint"))
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--reference",
                    default=os.path.join(repo, "..", "shared", "perf", "torch_reference.py"))
    args = ap.parse_args()

    ours_component, model = COMPONENTS[args.component]
    env = dict(os.environ, TORCH_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    workers = [
        Worker("torch", [args.torch_python, args.reference, "serve", args.component], env),
        Worker("candle", [args.outpaint, "bench", ours_component, "--model", model,
                          "--random-weights", "--serve"], env),
    ]
    for w in workers:
        print(json.dumps(dict(w.ready, fw=w.name)), flush=True)
    try:
        for _ in range(args.warmup):
            for w in workers:
                w.run("warmup")
        times = {w.name: [] for w in workers}
        for r in range(args.rounds):
            for w in (workers if r % 2 == 0 else workers[::-1]):
                e = w.run()
                times[w.name].append(e["seconds"])
                print(json.dumps({"event": "run", "fw": w.name, "round": r,
                                  "seconds": e["seconds"], "out_mean_abs": e.get("out_mean_abs")}),
                      flush=True)
        rss = {w.name: w.peak_rss_gib() for w in workers}
    finally:
        for w in workers:
            w.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.component}, {args.threads} threads each, {args.rounds} alternating rounds\n")
    print("| framework | median s | min s | max s | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {max(v):.2f} | {rss[k]:.2f} |")
    print(f"\nratio candle / torch (medians): {med['candle'] / med['torch']:.2f}")


if __name__ == "__main__":
    main()
