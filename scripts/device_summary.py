#!/usr/bin/env python3
"""One-line summaries for scripts/device-run.sh, from the files its parts write.

Standard library only (runs on the GPU machine and in CI's dry run alike).

  bench FILE                    `dcl bench kernels --json` -> ceilings, the two training steps,
                                the conv versions against plain GEMMs and the GMP layer op's
                                versions (fwd+bwd, share of the bandwidth floor)
  parity FILE                   `torch_parity.py compare --json` -> the errors per dcl device
  torch-time FILE               `torch_parity.py time --json` -> PyTorch eager step times
  steps [--fp32 F] [--tf32 F] [--torch F]   dcl's training steps beside PyTorch's, a table
  count LOG                     `dcl count` timing lines, each after its "-- label" line
  train LOG                     the epoch lines of `dcl train`
  merge OUT KEY=FILE...         JSON files into one object (missing files are left out)

Every command prints what it could read and exits 0 unless its arguments are wrong, so a part's
row never fails because a file is missing or partial.
"""
import json
import math
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"unreadable {os.path.basename(path)}: {e}".splitlines()[0])
        return None


def step_rows(bench):
    """{'counter': ms, 'localizer': ms} from a dcl bench report."""
    out = {}
    for r in bench.get("rows", []):
        if r.get("pass") == "step" and r.get("op", "").endswith("training step"):
            out[r["op"].split()[0]] = r["median_ms"]
    return out


def gmp_rows(bench):
    """{version: row} of the GMP layer op's fwd+bwd rows (`gmp <version>`) of a dcl bench report."""
    return {r["op"][4:]: r for r in bench.get("rows", [])
            if r.get("op", "").startswith("gmp ") and r.get("pass") == "fwd+bwd"}


def gmp_summary(bench):
    """The GMP versions fastest first: ms and % of the floor, the best's speed-ups over the
    unfused and fused versions; '' without GMP rows."""
    rows = sorted(gmp_rows(bench).items(), key=lambda kv: kv[1]["median_ms"])
    if not rows:
        return ""
    best, top = rows[0]
    out = "GMP fwd+bwd: " + ", ".join(
        f"{v} {r['median_ms']:.3g} ms ({r.get('pct_of_ceiling') or 0:.0f}% of floor)" for v, r in rows)
    ups = [f"{r['median_ms'] / top['median_ms']:.2f}x {v}" for v, r in rows
           if v in ("unfused", "fused") and v != best]
    if ups:
        out += f"; {best} vs " + ", ".join(ups)
    return out


def bench(path):
    b = load(path)
    if b is None:
        return
    c = b.get("ceilings", {})
    steps = step_rows(b)
    n = b.get("batch", 0)
    parts = [f"copy {c.get('copy_gb_per_s', 0):.3g} GB/s, SGEMM {c.get('gemm_tflop_per_s', 0):.3g} "
             f"TFLOP/s ({c.get('gemm_math', '?')})"]
    for net in ("counter", "localizer"):
        if net in steps:
            ms = steps[net]
            parts.append(f"{net} step {ms:.1f} ms ({1e3 * n / ms:.0f} images/s)")
    parts.extend(conv_versions(b))
    g = gmp_summary(b)
    if g:
        parts.append(g)
    parts.append(f"{len(b.get('rows', []))} rows at batch {n}, {b.get('size')}x{b.get('size')}, "
                 f"width x{b.get('width_mult')}")
    print("; ".join(parts))


def conv_versions(bench):
    """Each CUDA conv version's fwd+bwd rate against plain GEMMs of the same shapes (the rows
    `<layer> plain GEMM` fwd/dW/dX and `<layer> v1|v2` fwd/bwd of conv_cuda.rs): the geometric
    mean over the layers, the worst layer, and how often v2 beat v1. Empty on the CPU."""
    ms = {(r.get("op", ""), r.get("pass")): r.get("median_ms", 0) for r in bench.get("rows", [])}
    layers = sorted({op[: -len(" plain GEMM")] for op, _ in ms if op.endswith(" plain GEMM")})
    rates = {}
    for layer in layers:
        plain = sum(ms.get((f"{layer} plain GEMM", p), 0) for p in ("fwd", "dW", "dX"))
        for v in ("v1", "v2"):
            t = ms.get((f"{layer} {v}", "fwd"), 0) + ms.get((f"{layer} {v}", "bwd"), 0)
            if plain > 0 and t > 0:
                rates.setdefault(v, {})[layer] = plain / t
    out = []
    for v, r in sorted(rates.items()):
        geo = math.exp(sum(math.log(x) for x in r.values()) / len(r))
        worst = min(r, key=r.get)
        out.append(f"conv {v} fwd+bwd at {geo:.2f}x plain GEMM (geomean of {len(r)}, worst "
                   f"{r[worst]:.2f} {worst})")
    if "v1" in rates and "v2" in rates:
        both = [k for k in rates["v2"] if k in rates["v1"]]
        wins = sum(rates["v2"][k] > rates["v1"][k] for k in both)
        out.append(f"v2 faster than v1 on {wins}/{len(both)} layers")
    return out


def parity(path):
    p = load(path)
    if p is None:
        return
    by_dev = {}
    for r in p.get("results", []):
        dev = r.get("dcl_device") or "?"
        by_dev.setdefault(dev, []).append(f"{r['network'].split()[0]} rel {r['rel']:.1e}"
                                          + ("" if r.get("ok") else " FAIL"))
    parts = [f"dcl {d} vs torch: " + ", ".join(v) for d, v in by_dev.items()]
    if p.get("failures"):
        parts.append(f"{len(p['failures'])} dcl command(s) failed")
    print("; ".join(parts) + f" (tol {p.get('tol')})" if parts else "no comparisons")


def torch_rows(t):
    return {(r["network"], r["step"], bool(r["tf32"])): r["median_ms"] for r in t.get("rows", [])}


def torch_time(path):
    t = load(path)
    if t is None:
        return
    ms = torch_rows(t)
    parts = []
    for tf32 in (False, True):
        vals = [f"{net} {ms[(net, 'fwd+bwd+adam', tf32)]:.1f}" for net in ("counter", "localizer")
                if (net, "fwd+bwd+adam", tf32) in ms]
        if vals:
            parts.append(f"TF32 {'on' if tf32 else 'off'}: " + ", ".join(vals) + " ms")
    print(f"torch {t.get('torch', '?')} eager fwd+bwd+Adam, batch {t.get('batch')}: " + "; ".join(parts))


def steps(args):
    files = {"fp32": None, "tf32": None, "torch": None}
    it = iter(args)
    for a in it:
        key = a.lstrip("-")
        if key not in files:
            raise SystemExit(f"steps: unknown argument {a}")
        files[key] = next(it, None)
    got = {k: (load(v) if v and os.path.exists(v) else None) for k, v in files.items()}
    ours = {k: step_rows(got[k]) if got[k] else {} for k in ("fp32", "tf32")}
    torch = torch_rows(got["torch"]) if got["torch"] else {}
    shape = next((f"batch {g['batch']}, {g['size']}x{g['size']}, width x{g['width_mult']}"
                  for g in (got["fp32"], got["tf32"]) if g), "?")
    if got["torch"]:
        shape += f"; torch batch {got['torch'].get('batch')}, {got['torch'].get('size')}x{got['torch'].get('size')}"

    def cell(v):
        return f"{v:10.1f}" if v is not None else f"{'-':>10}"

    print(f"training steps, median ms ({shape})")
    print(f"{'network':<12}{'dcl FP32':>10}{'torch FP32':>12}{'dcl TF32':>10}{'torch TF32':>12}  ratio dcl/torch (FP32, TF32)")
    for net in ("counter", "localizer"):
        a, b = ours["fp32"].get(net), torch.get((net, "fwd+bwd+adam", False))
        c, d = ours["tf32"].get(net), torch.get((net, "fwd+bwd+adam", True))
        ratio = ", ".join(f"{x / y:.2f}x" if x and y else "-" for x, y in ((a, b), (c, d)))
        print(f"{net:<12}{cell(a)}{cell(b):>12}{cell(c)}{cell(d):>12}  {ratio}")
    print("dcl: fwd + loss + bwd + Adam + BN update (the localizer's includes the frozen counter's "
          "forward); torch: fwd + loss + bwd + Adam, eager, cuDNN benchmark on (the localizer on a "
          "precomputed z)")


COUNT_RE = re.compile(r"^(\d+) images? in ([0-9.]+)s \(([0-9.]+) images/s\); networks busy ([0-9.]+)s \((\d+)%")


def count(path):
    label, parts = None, []
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError as e:
        print(f"unreadable {path}: {e}")
        return
    for line in lines:
        if line.startswith("-- "):
            label = line[3:].strip()
            continue
        m = COUNT_RE.match(line.strip())
        if m and label and not label.startswith("warm-up"):
            n, secs, rate, _, busy = m.groups()
            parts.append(f"{label}: {n} in {float(secs):.2f} s ({rate} images/s, networks {busy}%)")
    print("; ".join(parts) if parts else "no timing lines")


EPOCH_RE = re.compile(r"^(\w+) epoch +(\d+) +steps +(\d+) .*?loss ([0-9.eE+-]+|nan|NaN)(?:.*?val MAE ([0-9.]+))?.*\(([0-9.]+)s\)")


def train(path):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError as e:
        print(f"unreadable {path}: {e}")
        return
    parts = []
    for line in lines:
        m = EPOCH_RE.match(line.strip())
        if m:
            net, ep, st, loss, mae, secs = m.groups()
            parts.append(f"epoch {ep}: {st} steps, loss {loss}" + (f", val MAE {mae}" if mae else "")
                         + f" ({secs} s)")
    print("; ".join(parts) if parts else "no epoch lines")


def merge(out, pairs):
    merged = {}
    for p in pairs:
        key, _, path = p.partition("=")
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    merged[key] = json.load(f)
            except ValueError as e:
                merged[key] = {"error": f"unreadable: {e}"}
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "bench" and len(args) == 1:
        bench(args[0])
    elif cmd == "parity" and len(args) == 1:
        parity(args[0])
    elif cmd == "torch-time" and len(args) == 1:
        torch_time(args[0])
    elif cmd == "steps":
        steps(args)
    elif cmd == "count" and len(args) == 1:
        count(args[0])
    elif cmd == "train" and len(args) == 1:
        train(args[0])
    elif cmd == "merge" and args:
        merge(args[0], args[1:])
    else:
        print(f"device_summary.py: bad arguments {argv[1:]}; see --help", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
