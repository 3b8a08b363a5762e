#!/usr/bin/env python3
"""PyTorch parity check for dcl's two networks (DESIGN §1), and PyTorch eager timings.

The counter and the localizer are written here as plain torch.nn modules whose state-dict
names are exactly those of dcl checkpoints (torchvision `vgg19[_bn].features` indices, milesial
UNet names), so a dcl checkpoint loads with `load_state_dict(strict=True)`. The inputs and dcl's
eval-mode outputs come from `dcl export-io`.

  compare  one checkpoint (pair) against `dcl export-io` files (one per dcl device, say)
  suite    makes random checkpoints with `dcl init-checkpoint`, exports, compares: vgg19,
           vgg19_bn, no GMP, K=8 and K=3, and the localizer, at the sizes asked for
  time     PyTorch eager forward+backward (and + Adam step) of the full-width counter and
           localizer at batch 8, 256x256, cuDNN on, TF32 on and off (GPU only); first the GMP
           op alone (as gmp-time), with ratios to dcl's versions given --gmp-bench
  gmp-time DESIGN §1's grid_sample composition of GMP (y = x + mean of K samples), forward,
           backward and both, at the paper's GMP shape (N8 C512 32x32 K8) or that of a dcl
           bench JSON's GMP rows, CUDA events around each rep, L2 flushed before each; with
           --bench, dcl's versions' times beside it as speed-ups

Errors are normwise: max|ours - torch| / max|torch|. Exit status 1 when any exceeds --tol.
Needs only torch (safetensors files are read here, not through the safetensors package).
"""
import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# safetensors, read by hand (8-byte little-endian header length, JSON header, raw data)

_DTYPES = {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        buf = bytearray(data[base + a : base + b])
        t = torch.frombuffer(buf, dtype=dt) if len(buf) else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta


def config_of(path):
    _, meta = read_safetensors(path)
    if "dcl.config" not in meta:
        raise SystemExit(f"{path}: no dcl.config metadata; not a dcl checkpoint")
    return json.loads(meta["dcl.config"])


# ---------------------------------------------------------------------------------------------
# The networks


def scaled(c, width_mult):
    """dcl's nn::layers::scaled: round half away from zero (in f32), at least 1."""
    v = float(torch.tensor(c, dtype=torch.float32) * torch.tensor(width_mult, dtype=torch.float32))
    return max(1, int(math.floor(v + 0.5)))


# torchvision cfgs["E"] (VGG-19) without its final "M".
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512]


def vgg19_features(batch_norm, width_mult):
    """torchvision's make_layers(cfgs["E"], batch_norm)[:-1]: same indices, so the same names."""
    layers, c_in = [], 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            c = scaled(v, width_mult)
            layers.append(nn.Conv2d(c_in, c, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))  # eps 1e-5, momentum 0.1
            layers.append(nn.ReLU(inplace=True))
            c_in = c
    return nn.Sequential(*layers), c_in


def gmp_reference(x, o, k):
    """DESIGN §1's PyTorch reference verbatim, from the offsets o = offset(x) on: y = x + a."""
    n, c, h, w = x.shape
    gx = torch.arange(w, device=x.device, dtype=x.dtype) + o[:, 0::2]
    gy = torch.arange(h, device=x.device, dtype=x.dtype)[:, None] + o[:, 1::2]
    g = torch.stack((2 * gx / (w - 1) - 1, 2 * gy / (h - 1) - 1), dim=-1)  # N,K,H,W,2
    s = F.grid_sample(x, g.reshape(n, k * h, w, 2), align_corners=True, padding_mode="zeros")
    return x + s.reshape(n, c, k, h, w).mean(2)


class GMP(nn.Module):
    """Global message passing, DESIGN §1's PyTorch reference verbatim."""

    def __init__(self, c, k):
        super().__init__()
        self.k = k
        self.offset = nn.Conv2d(c, 2 * k, kernel_size=1)
        self.last_offsets = None
        self.last_on_map = None

    def forward(self, x):
        n, c, h, w = x.shape
        o = self.offset(x)
        self.last_offsets = o.detach()
        gx = torch.arange(w, device=x.device, dtype=x.dtype) + o[:, 0::2]
        gy = torch.arange(h, device=x.device, dtype=x.dtype)[:, None] + o[:, 1::2]
        self.last_on_map = ((gx >= 0) & (gx <= w - 1) & (gy >= 0) & (gy <= h - 1)).double().mean()
        return gmp_reference(x, o, self.k)


class Counter(nn.Module):
    def __init__(self, backbone, gmp_points, width_mult):
        super().__init__()
        self.features, c = vgg19_features(backbone == "vgg19_bn", width_mult)
        self.gmp = GMP(c, gmp_points) if gmp_points > 0 else None
        self.head = nn.Conv2d(c, 1, kernel_size=1)

    def forward(self, x):
        h = self.features(x)
        h = F.interpolate(h, size=(2 * h.shape[2], 2 * h.shape[3]), mode="bilinear",
                          align_corners=False)
        if self.gmp is not None:
            h = self.gmp(h)
        return self.head(h)


# milesial/Pytorch-UNet, unet/unet_parts.py and unet/unet_model.py (bilinear=True).
class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """milesial's UNet(n_channels=4, n_classes=1, bilinear=True) with base width w (64 there)."""

    def __init__(self, w, n_channels=4):
        super().__init__()
        self.inc = DoubleConv(n_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // 2)
        self.up1 = Up(16 * w, 8 * w // 2)
        self.up2 = Up(8 * w, 4 * w // 2)
        self.up3 = Up(4 * w, 2 * w // 2)
        self.up4 = Up(2 * w, w)
        self.outc = OutConv(w, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def localizer_input(images, z, density_scale):
    """RGB + |z| resized to the image (bilinear, align_corners=False), divided by the area
    factor (so it still sums to the count), times density_scale."""
    h, w = images.shape[2:]
    area = (h * w) / (z.shape[2] * z.shape[3])
    up = F.interpolate(z.abs(), size=(h, w), mode="bilinear", align_corners=False)
    factor = float(torch.tensor(density_scale, dtype=torch.float32) / torch.tensor(area, dtype=torch.float32))
    return torch.cat([images, up * factor], dim=1)


class CounterCkpt(nn.Module):
    """Names `counter.*`, as in dcl checkpoints."""

    def __init__(self, cfg):
        super().__init__()
        self.counter = Counter(cfg["backbone"], cfg["gmp_points"], cfg["width_mult"])

    def forward(self, x):
        return self.counter(x)


class LocalizerCkpt(nn.Module):
    """Names `localizer.*` (milesial's UNet names beneath)."""

    def __init__(self, cfg):
        super().__init__()
        self.localizer = UNet(scaled(cfg["unet_width"], cfg["width_mult"]))
        self.density_scale = cfg["density_scale"]

    def forward(self, images, z):
        return self.localizer(localizer_input(images, z, self.density_scale))


def load_network(path, device):
    cfg = config_of(path)
    net = CounterCkpt(cfg) if cfg["model"] == "counter" else LocalizerCkpt(cfg)
    tensors, _ = read_safetensors(path)
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval(), cfg


# ---------------------------------------------------------------------------------------------
# compare


def set_fp32(strict):
    """strict: no TF32 anywhere, so GPU results are FP32 like dcl's reference."""
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.set_float32_matmul_precision("highest" if strict else "high")


def errors(ours, ref):
    ours, ref = ours.double().cpu(), ref.double().cpu()
    if ours.shape != ref.shape:
        raise SystemExit(f"shape mismatch: dcl {tuple(ours.shape)} vs torch {tuple(ref.shape)}")
    diff = (ours - ref).abs()
    max_abs = diff.max().item()
    scale = ref.abs().max().item()
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, rel, scale


def describe(cfg):
    if cfg["model"] == "counter":
        gmp = f"K={cfg['gmp_points']}" if cfg["gmp_points"] > 0 else "no-GMP"
        return f"counter {cfg['backbone']} {gmp} width x{cfg['width_mult']:g}"
    w = scaled(cfg["unet_width"], cfg["width_mult"])
    return f"localizer w={w} (unet_width {cfg['unet_width']} x{cfg['width_mult']:g})"


def compare(io_path, counter_path, localizer_path, device, tol, label=""):
    """Returns a list of result dicts (one per network); prints one line each."""
    set_fp32(True)
    io, meta = read_safetensors(io_path)
    exp = json.loads(meta.get("dcl.export", "{}"))
    where = f"dcl on {exp.get('device', '?')}, torch on {device}"
    images = io["input"].to(device)
    results = []
    with torch.no_grad():
        counter, ccfg = load_network(counter_path, device)
        z = counter(images)
        max_abs, rel, scale = errors(io["z"], z)
        count_ours = io["z"].double().abs().sum(dim=(1, 2, 3))
        count_torch = z.double().abs().sum(dim=(1, 2, 3)).cpu()
        count_rel = ((count_ours - count_torch).abs() / count_torch.abs().clamp_min(1e-30)).max().item()
        extra = ""
        gmp = counter.counter.gmp
        if gmp is not None:
            bias = gmp.offset.bias.detach().reshape(1, -1, 1, 1)
            spread = (gmp.last_offsets - bias).std().item()
            on_map = 100 * gmp.last_on_map.item()
            extra = f", GMP offsets vary by {spread:.2f} px (std), {on_map:.0f}% of samples on the map"
        ok = rel <= tol
        line = (f"{'ok  ' if ok else 'FAIL'} {label}{describe(ccfg)}, {tuple(images.shape)}: "
                f"z max-abs {max_abs:.3e}, rel {rel:.3e} (|z| max {scale:.3e}), "
                f"count rel {count_rel:.3e}{extra} [{where}]")
        print(line, flush=True)
        results.append({"network": describe(ccfg), "dcl_device": exp.get("device"),
                        "input": list(images.shape), "max_abs": max_abs, "rel": rel,
                        "count_rel": count_rel, "ok": ok, "line": line})
        if localizer_path:
            if "density" not in io:
                raise SystemExit(f"{io_path}: no 'density' tensor; export with --localizer")
            loc, lcfg = load_network(localizer_path, device)
            # Fed dcl's own z, so the localizer is checked on its own; end to end as well.
            z_ours = io["z"].to(device)
            x = localizer_input(images, z_ours, lcfg["density_scale"])
            in_abs, in_rel, _ = errors(io["localizer_input"], x)
            d = loc(images, z_ours)
            max_abs, rel, scale = errors(io["density"], d)
            _, e2e_rel, _ = errors(io["density"], loc(images, z))
            ok = rel <= tol and in_rel <= tol
            line = (f"{'ok  ' if ok else 'FAIL'} {label}{describe(lcfg)}, {tuple(images.shape)}: "
                    f"density max-abs {max_abs:.3e}, rel {rel:.3e} (max {scale:.3e}); "
                    f"4-channel input rel {in_rel:.3e}; end to end (torch z) rel {e2e_rel:.3e} "
                    f"[{where}]")
            print(line, flush=True)
            results.append({"network": describe(lcfg), "dcl_device": exp.get("device"),
                            "input": list(images.shape), "max_abs": max_abs, "rel": rel,
                            "input_rel": in_rel,
                            "e2e_rel": e2e_rel, "ok": ok, "line": line})
    return results


def run_dcl(dcl, *args):
    cmd = [dcl, *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip()}")


def suite(a):
    os.makedirs(a.workdir, exist_ok=True)
    wm = a.width_mult
    counters = [
        ("vgg19_bn-k8", ["--backbone", "vgg19_bn", "--gmp-points", "8"]),
        ("vgg19-k8", ["--backbone", "vgg19", "--gmp-points", "8"]),
        ("vgg19_bn-nogmp", ["--backbone", "vgg19_bn", "--gmp-points", "0"]),
        ("vgg19_bn-k3", ["--backbone", "vgg19_bn", "--gmp-points", "3"]),
    ]
    if a.quick:
        counters = counters[:1]
    results, failures = [], []
    loc_path = os.path.join(a.workdir, "localizer.safetensors")
    try:
        run_dcl(a.dcl, "init-checkpoint", "--model", "localizer", "--width-mult", wm,
                "--seed", a.seed + 100, "--out", loc_path)
        for i, (name, flags) in enumerate(counters):
            ckpt = os.path.join(a.workdir, f"counter-{name}.safetensors")
            run_dcl(a.dcl, "init-checkpoint", "--model", "counter", "--width-mult", wm,
                    "--seed", a.seed + i, "--out", ckpt, *flags)
            for size in a.sizes:
                io = os.path.join(a.workdir, f"io-{name}-{size}.safetensors")
                with_loc = i == 0  # the localizer on the default counter's z
                extra = ["--localizer", loc_path] if with_loc else []
                run_dcl(a.dcl, "export-io", "--counter", ckpt, "--out", io, "--size", size,
                        "--images", a.images, "--seed", a.seed, "--device", a.dcl_device, *extra)
                results += compare(io, ckpt, loc_path if with_loc else None, a.device, a.tol)
    except RuntimeError as e:
        print(f"FAIL {e}", flush=True)
        failures.append(str(e))
    return results, failures


# ---------------------------------------------------------------------------------------------
# gmp-time


def layer_like_offsets(n, k, h, w, gen):
    """Offsets [n, 2k, h, w] drawn as dcl's bench draws them (src/bench/kernels/gmp.rs
    layer_like_offsets): a fresh counter's moves (K directions, radii 2, 4, 8 px) plus N(0, 1.5 px)
    per position."""
    o = torch.empty(n, 2 * k, h, w)
    for i in range(k):
        angle = 2 * math.pi * i / k
        radius = float(2 << (i % 3))
        o[:, 2 * i] = radius * math.cos(angle)
        o[:, 2 * i + 1] = radius * math.sin(angle)
    return o + 1.5 * torch.randn(n, 2 * k, h, w, generator=gen)


GMP_SHAPE = re.compile(r"N(\d+) C(\d+) (\d+)x(\d+) K(\d+)")


def read_bench_gmp(path):
    """dcl's GMP layer-op rows of a `dcl bench kernels --json` file: ({version: {pass: ms}},
    (n, c, h, w, k)). Rows `gmp <version>` (the op y = x + sampling; `gmp_sample` rows are the
    sampling alone)."""
    with open(path) as f:
        rep = json.load(f)
    ours, shape = {}, None
    for r in rep.get("rows", []):
        op = r.get("op", "")
        if not op.startswith("gmp "):
            continue
        ours.setdefault(op[4:], {})[r["pass"]] = r["median_ms"]
        m = GMP_SHAPE.search(r.get("shape", ""))
        if m:
            shape = tuple(int(v) for v in m.groups())
    return ours, shape


def time_gmp(device, shape, warmup, iters, flush_mib=256):
    """Median (min) ms of the reference composition's forward, backward (given one untimed
    forward) and both, each rep after an untimed read of a buffer larger than the L2 cache."""
    n, c, h, w, k = shape
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).to(dev).requires_grad_()
    o = layer_like_offsets(n, k, h, w, gen).to(dev).requires_grad_()
    dy = torch.randn(n, c, h, w, generator=gen).to(dev)
    cuda = dev.type == "cuda"
    flush = torch.zeros((flush_mib << 20) // 4 if cuda else 1, device=dev)

    def fwd():
        with torch.no_grad():
            gmp_reference(x, o, k)

    def bwd_of(y):
        return lambda: torch.autograd.backward(y, dy)

    def both():
        torch.autograd.backward(gmp_reference(x, o, k), dy)

    def measure(make):
        """make() -> the callable to time (built untimed: the backward's forward)."""
        ms = []
        for i in range(warmup + iters):
            x.grad = o.grad = None
            f = make()
            flush.sum()  # evicts the inputs from L2; untimed
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                torch.cuda.synchronize()
                t = a.elapsed_time(b)
            else:
                t0 = time.perf_counter()
                f()
                t = 1e3 * (time.perf_counter() - t0)
            if i >= warmup:
                ms.append(t)
        ms.sort()
        return {"median_ms": ms[len(ms) // 2], "min_ms": ms[0]}

    return {
        "fwd": measure(lambda: fwd),
        "bwd": measure(lambda: bwd_of(gmp_reference(x, o, k))),
        "fwd+bwd": measure(lambda: both),
    }


def gmp_timing(device, bench, warmup, iters, shape=None):
    """The reference's timings and, with a dcl bench JSON, the speed-up of each dcl version over
    it (torch ms / dcl ms, fwd+bwd of the layer op). Returns a dict; prints a summary line."""
    set_fp32(True)
    ours = {}
    if bench:
        ours, bench_shape = read_bench_gmp(bench)
        shape = bench_shape or shape
    shape = shape or (8, 512, 32, 32, 8)
    ref = time_gmp(device, shape, warmup, iters)
    ratios = {}
    for v, passes in ours.items():
        ratios[v] = {p: ref[p]["median_ms"] / ms for p, ms in passes.items()
                     if p in ref and ms > 0}
    fb = ref["fwd+bwd"]["median_ms"]
    best = sorted(ratios.items(), key=lambda kv: -kv[1].get("fwd+bwd", 0))
    summary = (f"GMP N{shape[0]} C{shape[1]} {shape[2]}x{shape[3]} K{shape[4]} fwd+bwd: PyTorch "
               f"grid_sample composition {fb:.3f} ms (fwd {ref['fwd']['median_ms']:.3f}, bwd "
               f"{ref['bwd']['median_ms']:.3f}) on {device}")
    if best:
        summary += "; dcl speed-up over it: " + ", ".join(
            f"{v} {r.get('fwd+bwd', float('nan')):.2f}x" for v, r in best)
    print(summary, flush=True)
    return {"device": device, "shape": list(shape), "torch": ref, "dcl_ms": ours,
            "speedup_over_torch": ratios, "summary": summary,
            "timing": "CUDA events around each rep, L2 flushed before each (256 MiB read)"
            if device.startswith("cuda") else "perf_counter around each rep"}


# ---------------------------------------------------------------------------------------------
# time


def time_steps(a):
    if not torch.cuda.is_available():
        raise SystemExit("--time needs a GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    n, s = a.batch, a.size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, s, s, generator=gen).to(dev)
    counts = (torch.rand(n, generator=gen) * 200 + 50).to(dev)
    target = (torch.rand(n, 1, s, s, generator=gen) * 0.01 * 100).to(dev)
    cfg = {"backbone": "vgg19_bn", "gmp_points": 8, "width_mult": 1.0, "unet_width": 64,
           "density_scale": 100.0}
    counter = CounterCkpt(cfg).to(dev).train()
    localizer = LocalizerCkpt(cfg).to(dev).train()
    with torch.no_grad():
        z_frozen = counter.eval()(images)
    counter.train()

    def counter_loss():
        z = counter(images)
        return (z.abs().sum(dim=(1, 2, 3)) - counts).abs().mean()

    def localizer_loss():
        return F.mse_loss(localizer(images, z_frozen), target)

    def bench(net, loss_fn, with_adam):
        opt = torch.optim.Adam(net.parameters(), lr=1e-4) if with_adam else None

        def step():
            if opt:
                opt.zero_grad(set_to_none=True)
            else:
                net.zero_grad(set_to_none=True)
            loss_fn().backward()
            if opt:
                opt.step()

        for _ in range(a.warmup):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        times.sort()
        return 1e3 * times[len(times) // 2], 1e3 * sum(times) / len(times)

    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "batch": n, "size": s, "rows": []}
    # The GMP op alone first (about a second), written at once so a later time-out keeps it.
    try:
        out["gmp"] = gmp_timing("cuda", a.gmp_bench, a.warmup, a.iters)
    except Exception as e:  # the step timings below still run
        out["gmp"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"GMP timing failed: {out['gmp']['error']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"PyTorch {torch.__version__} eager on {out['device']}, batch {n}, {s}x{s}, "
          f"full width, cuDNN benchmark on; median (mean) of {a.iters} after {a.warmup} warm-up")
    for tf32 in (True, False):
        set_fp32(not tf32)
        for name, net, fn in (("counter", counter, counter_loss),
                              ("localizer", localizer, localizer_loss)):
            for adam in (False, True):
                med, mean = bench(net, fn, adam)
                what = "fwd+bwd+adam" if adam else "fwd+bwd"
                row = {"network": name, "step": what, "tf32": tf32, "median_ms": med,
                       "mean_ms": mean}
                out["rows"].append(row)
                print(f"  {name:9s} {what:13s} TF32 {'on ' if tf32 else 'off'}: "
                      f"{med:8.2f} ms ({mean:.2f})", flush=True)
    set_fp32(True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compare", help="dcl export-io files against torch")
    c.add_argument("--io", required=True, nargs="+",
                   help="file(s) written by dcl export-io (e.g. one per dcl device)")
    c.add_argument("--counter", required=True)
    c.add_argument("--localizer")
    c.add_argument("--device", default="cpu")
    c.add_argument("--tol", type=float, default=1e-4)
    c.add_argument("--json", help="write the results here")

    s = sub.add_parser("suite", help="random checkpoints of every variant, exported and compared")
    s.add_argument("--dcl", required=True, help="the dcl binary")
    s.add_argument("--workdir", required=True)
    s.add_argument("--width-mult", type=float, default=0.125)
    s.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    s.add_argument("--images", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", help="torch's device")
    s.add_argument("--dcl-device", default="cpu", help="dcl export-io's --device")
    s.add_argument("--quick", action="store_true", help="only the default counter + localizer")
    s.add_argument("--tol", type=float, default=1e-4)
    s.add_argument("--json", help="write the results here")

    t = sub.add_parser("time", help="PyTorch eager training-step timings (GPU)")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--iters", type=int, default=20)
    t.add_argument("--json")
    t.add_argument("--gmp-bench", help="a dcl bench kernels JSON: its GMP shape, and speed-ups")

    g = sub.add_parser("gmp-time", help="the GMP op's reference composition timed (and dcl's)")
    g.add_argument("--device", default="cuda")
    g.add_argument("--bench", help="a dcl bench kernels JSON: its GMP shape, and speed-ups")
    g.add_argument("--shape", type=int, nargs=5, metavar=("N", "C", "H", "W", "K"),
                   help="without --bench (default 8 512 32 32 8)")
    g.add_argument("--warmup", type=int, default=5)
    g.add_argument("--iters", type=int, default=20)
    g.add_argument("--json")

    if sys.argv[1:2] == ["--time"]:  # the spelling of the `time` subcommand
        sys.argv[1] = "time"
    a = p.parse_args()
    if a.cmd == "time":
        time_steps(a)
        return 0
    if a.cmd == "gmp-time":
        out = gmp_timing(a.device, a.bench, a.warmup, a.iters, tuple(a.shape) if a.shape else None)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    if a.cmd == "compare":
        results = [r for io in a.io for r in compare(io, a.counter, a.localizer, a.device, a.tol)]
        failures = []
    else:
        results, failures = suite(a)
    bad = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(bad)}/{len(results)} comparisons within rel {a.tol:g}"
          + (f", {len(failures)} dcl command(s) failed" if failures else ""), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tol": a.tol, "results": results, "failures": failures}, f, indent=1)
    return 1 if bad or failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
