#!/usr/bin/env python3
"""dcl's CPU training steps and counting against PyTorch's CPU eager mode, interleaved in one
run, same architecture, shapes and thread count.

For each case and round, `dcl bench step` (a subprocess, timing itself) runs, then PyTorch
(in this process) does the same work; rounds repeat the whole list, so both sides see the
same machine state. Reported per case: the best rep over all rounds on each side, and the
ratio ours/PyTorch (time; < 1 means dcl is faster). The machine's measured peaks (FMA GFLOP/s
of the instruction set dcl uses, copy GB/s; `dcl bench peaks`) and the load average are
printed first.

Cases (PyTorch side in brackets):
  counter    forward, count loss, backward, Adam  [counter.train(), same, torch.optim.Adam]
  localizer  the frozen counter's inference pass, then the UNet's forward, MSE, backward,
             Adam                                 [no_grad counter.eval() pass, then the same]
  count      the counter's inference pass         [torch.no_grad(), eval()]
  count-pair counter and localizer inference      [torch.no_grad(), eval()]
at width 1 (the paper's) 128x128 batch 2 and 256x256 batch 8, width 1/8 (UNet 8, what CPU
users train) 256x256 batch 8; counting at 256x256 batch 1 (one tile per image, as `dcl count`
runs a 256x256 image), width 1 and 1/8.

PyTorch comes from the virtual environment `.venv-torch` at the repository root, made on first
use when this interpreter has no torch: `pip install $DCL_TORCH_WHEEL` (a wheel file), or
`torch` from PyPI when that is unset. The networks are those of scripts/torch_parity.py (the
same modules the parity check loads dcl checkpoints into), at random initialisation.

  python3 scripts/torch_cpu_bench.py                       # everything, 2 rounds
  python3 scripts/torch_cpu_bench.py --only counter-w1-128-b2,localizer-w1-128-b2
  python3 scripts/torch_cpu_bench.py --list
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(ROOT, ".venv-torch")


def ensure_torch():
    """Re-executes this script under .venv-torch (made if absent) when torch is missing."""
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        raise SystemExit(f"{py} has no torch; remove {VENV} to rebuild it")
    if not os.path.exists(py):
        spec = os.environ.get("DCL_TORCH_WHEEL") or "torch"
        print(f"making {VENV} with {spec} (first run only)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", spec, "numpy"], check=True)
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


# (name, what, width_mult, size, batch)
CASES = [
    ("counter-w1-128-b2", "counter", 1.0, 128, 2),
    ("localizer-w1-128-b2", "localizer", 1.0, 128, 2),
    ("counter-w1-256-b8", "counter", 1.0, 256, 8),
    ("localizer-w1-256-b8", "localizer", 1.0, 256, 8),
    ("counter-w0.125-256-b8", "counter", 0.125, 256, 8),
    ("localizer-w0.125-256-b8", "localizer", 0.125, 256, 8),
    ("count-w1-256-b1", "count", 1.0, 256, 1),
    ("count-pair-w1-256-b1", "count-pair", 1.0, 256, 1),
    ("count-w0.125-256-b1", "count", 0.125, 256, 1),
    ("count-pair-w0.125-256-b1", "count-pair", 0.125, 256, 1),
]


def dcl_step(dcl, what, wm, size, batch, reps, warmup, threads):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        cmd = [dcl, "bench", "step", "--what", what, "--width-mult", str(wm), "--size",
               str(size), "--batch", str(batch), "--reps", str(reps), "--warmup", str(warmup),
               "--json", path]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


class TorchCase:
    """One case's PyTorch networks and data, built once, timed once per round."""

    def __init__(self, what, wm, size, batch):
        import torch
        import torch.nn.functional as F
        sys.path.insert(0, HERE)
        from torch_parity import CounterCkpt, LocalizerCkpt
        self.torch, self.F = torch, F
        torch.manual_seed(0)
        cfg = {"backbone": "vgg19_bn", "gmp_points": 8, "width_mult": wm, "unet_width": 64,
               "density_scale": 100.0}
        self.what = what
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, size, size, generator=gen)
        self.counts = torch.tensor([20.0 + 3.0 * i for i in range(batch)])
        self.density = torch.randn(batch, 1, size, size, generator=gen) * 0.01
        self.counter = CounterCkpt(cfg)
        self.loc = LocalizerCkpt(cfg) if what in ("localizer", "count-pair") else None
        if what == "counter":
            self.counter.train()
            self.opt = torch.optim.Adam(self.counter.parameters(), lr=1e-4)
        elif what == "localizer":
            self.counter.eval()
            self.loc.train()
            self.opt = torch.optim.Adam(self.loc.parameters(), lr=1e-4)
        else:
            self.counter.eval()
            if self.loc is not None:
                self.loc.eval()

    def rep(self):
        torch, F = self.torch, self.F
        if self.what == "counter":
            self.opt.zero_grad(set_to_none=True)
            z = self.counter(self.images)
            loss = (z.abs().sum(dim=(1, 2, 3)) - self.counts).abs().mean()
            loss.backward()
            self.opt.step()
            loss.item()
        elif self.what == "localizer":
            with torch.no_grad():
                z = self.counter(self.images)
            self.opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(self.loc(self.images, z), self.density)
            loss.backward()
            self.opt.step()
            loss.item()
        else:
            with torch.no_grad():
                z = self.counter(self.images)
                out = self.loc(self.images, z) if self.loc is not None else z
                out.sum().item()

    def time(self, reps, warmup):
        for _ in range(warmup):
            self.rep()
        ms = []
        for _ in range(reps):
            t = time.perf_counter()
            self.rep()
            ms.append(1e3 * (time.perf_counter() - t))
        return ms


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dcl", default=os.path.join(ROOT, "target", "release", "dcl"),
                   help="the dcl binary (a release build)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=2, help="timed reps per case and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed reps per case and round")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads on both sides (RAYON_NUM_THREADS, torch.set_num_threads)")
    p.add_argument("--only", help="comma-separated case names (see --list)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--json", help="write every measurement to this file")
    a = p.parse_args()
    if a.list:
        for c in CASES:
            print(c[0])
        return
    cases = CASES
    if a.only:
        names = a.only.split(",")
        unknown = [n for n in names if n not in {c[0] for c in CASES}]
        if unknown:
            raise SystemExit(f"unknown cases {unknown}; --list shows them")
        cases = [c for c in CASES if c[0] in names]
    if not os.path.exists(a.dcl):
        raise SystemExit(f"{a.dcl} not found: cargo build --release first")
    ensure_torch()
    import torch
    torch.set_num_threads(a.threads)
    r = subprocess.run([a.dcl, "bench", "peaks"], capture_output=True, text=True,
                       env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)))
    peaks = r.stdout.strip()
    print(f"machine: {peaks}")
    print(f"PyTorch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; dcl {a.dcl}, RAYON_NUM_THREADS={a.threads}")
    print(f"{a.rounds} rounds x ({a.warmup} warm-up + {a.reps} timed reps) per side and case; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    torch_cases = {}
    results = {c[0]: {"ours": [], "torch": []} for c in cases}
    for rnd in range(a.rounds):
        for name, what, wm, size, batch in cases:
            ours = dcl_step(a.dcl, what, wm, size, batch, a.reps, a.warmup, a.threads)
            if name not in torch_cases:
                torch_cases[name] = TorchCase(what, wm, size, batch)
            theirs = torch_cases[name].time(a.reps, a.warmup)
            results[name]["ours"] += ours["reps_ms"]
            results[name]["torch"] += theirs
            print(f"  round {rnd + 1} {name:26s} dcl {min(ours['reps_ms']):9.1f} ms  "
                  f"torch {min(theirs):9.1f} ms  (load {os.getloadavg()[0]:.2f})", flush=True)
    print()
    print(f"{'case':26s} {'dcl best ms':>12s} {'torch best ms':>14s} {'dcl/torch':>10s} "
          f"{'images/s dcl':>13s} {'torch':>8s}")
    rows = []
    for name, what, wm, size, batch in cases:
        o, t = min(results[name]["ours"]), min(results[name]["torch"])
        rows.append({"case": name, "what": what, "width_mult": wm, "size": size, "batch": batch,
                     "dcl_ms": results[name]["ours"], "torch_ms": results[name]["torch"],
                     "dcl_best_ms": o, "torch_best_ms": t, "ratio": o / t})
        print(f"{name:26s} {o:12.1f} {t:14.1f} {o / t:9.2f}x {1e3 * batch / o:13.2f} "
              f"{1e3 * batch / t:8.2f}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": peaks, "torch": torch.__version__, "threads": a.threads,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
