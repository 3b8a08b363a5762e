//! The CUDA kernels that need no shared memory or warp intrinsics (GMP in all three versions,
//! max pooling, bilinear resize, Adam), compiled as host C++ with the CUDA qualifiers mocked
//! and run sequentially (a one-thread grid: every grid-stride loop covers the whole range;
//! the fused GMP kernels' channel groups looped over blockIdx.y), against the CPU reference
//! ops. This checks the kernels' index math and their exact agreement with the CPU semantics
//! (NaN and infinite GMP offsets, max-pool NaNs and ties) on a machine without a GPU; it does
//! not check anything about the device (launch shapes, atomics under contention, FMA
//! contraction). Needs a C++17 compiler (`c++`, or `$CXX`); without one it says so and passes.
use std::path::{Path, PathBuf};
use std::process::Command;

use dcl::device::cuda::KERNEL_SOURCES;
use dcl::ops::gmp::{gmp_sample_backward, gmp_sample_forward};
use dcl::ops::max_pool2d::{max_pool2d_backward, max_pool2d_forward};
use dcl::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use dcl::optim::adam::{update_tensor, AdamStep};
use dcl::tensor::Tensor;

const HARNESS: &str = r#"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <algorithm>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define static_assert(a, b)
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx{0, 0, 0}, threadIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};
static float atomicAdd(float* p, float v) { float o = *p; *p += v; return o; }
using std::min;
namespace gmp {
#include "gmp.cu"
}
namespace pool {
#include "max_pool2d.cu"
}
namespace up {
#include "upsample_bilinear.cu"
}
namespace adam {
#include "adam.cu"
}
static std::string dir;
template <class T> static std::vector<T> rd(const char* name, size_t n) {
    std::vector<T> v(n);
    FILE* f = fopen((dir + "/" + name).c_str(), "rb");
    if (!f || fread(v.data(), sizeof(T), n, f) != n) { fprintf(stderr, "cannot read %s\n", name); exit(2); }
    fclose(f);
    return v;
}
template <class T> static void wr(const char* name, const std::vector<T>& v) {
    FILE* f = fopen((dir + "/" + name).c_str(), "wb");
    if (!f || fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) { fprintf(stderr, "cannot write %s\n", name); exit(2); }
    fclose(f);
}
int main(int argc, char** argv) {
    if (argc < 3) return 2;
    dir = argv[1];
    std::string job = argv[2];
    auto arg = [&](int i) { return (unsigned)strtoul(argv[3 + i], nullptr, 10); };
    if (job == "gmp") {
        unsigned n = arg(0), c = arg(1), h = arg(2), w = arg(3), k = arg(4), per = arg(5);
        size_t xl = (size_t)n * c * h * w, ol = (size_t)n * 2 * k * h * w, taps = (size_t)n * k * h * w;
        auto x = rd<float>("x", xl), off = rd<float>("off", ol), da = rd<float>("da", xl);
        gmp::GmpGeometry p{n, c, h, w, k, c};
        {
            std::vector<float> a(xl), dx(xl, 0.0f), doff(ol, 0.0f);
            gmp::gmp_naive_fwd_f32(p, x.data(), off.data(), a.data());
            gmp::gmp_naive_bwd_dx_f32(p, off.data(), da.data(), dx.data());
            gmp::gmp_naive_bwd_doff_f32(p, x.data(), off.data(), da.data(), doff.data());
            wr("naive_a", a); wr("naive_dx", dx); wr("naive_doff", doff);
        }
        {
            std::vector<int> tidx(taps * 4);
            std::vector<float> tw(taps * 4), tdx(taps * 4), tdy(taps * 4), s(taps * c), a(xl),
                dx(xl, 0.0f), gpx(taps * c), gpy(taps * c), doff(ol, 0.0f);
            gmp::gmp_unf_coords_f32(p, off.data(), tidx.data(), tw.data(), nullptr, nullptr);
            gmp::gmp_unf_sample_f32(p, x.data(), tidx.data(), tw.data(), s.data());
            gmp::gmp_unf_mean_f32(p, s.data(), a.data());
            gmp::gmp_unf_coords_f32(p, off.data(), tidx.data(), tw.data(), tdx.data(), tdy.data());
            gmp::gmp_unf_bwd_sample_f32(p, x.data(), da.data(), tidx.data(), tw.data(), tdx.data(),
                                        tdy.data(), dx.data(), gpx.data(), gpy.data());
            gmp::gmp_unf_bwd_reduce_f32(p, gpx.data(), gpy.data(), doff.data());
            wr("unfused_a", a); wr("unfused_dx", dx); wr("unfused_doff", doff);
        }
        {
            gmp::GmpGeometry pf{n, c, h, w, k, per};
            std::vector<float> a(xl), dx(xl, 0.0f), doff(ol, 0.0f);
            for (unsigned g = 0; g * per < c; ++g) { blockIdx.y = g; gmp::gmp_fused_fwd_f32(pf, x.data(), off.data(), a.data()); }
            for (unsigned g = 0; g * per < c; ++g) { blockIdx.y = g; gmp::gmp_fused_bwd_f32(pf, x.data(), off.data(), da.data(), dx.data(), doff.data()); }
            blockIdx.y = 0;
            wr("fused_a", a); wr("fused_dx", dx); wr("fused_doff", doff);
        }
    } else if (job == "pool") {
        unsigned planes = arg(0), h = arg(1), w = arg(2);
        pool::MaxPool2dGeometry p{planes, h, w, h / 2, w / 2};
        size_t in = (size_t)planes * h * w, out = (size_t)planes * (h / 2) * (w / 2);
        auto x = rd<float>("x", in), dy = rd<float>("dy", out);
        std::vector<float> y(out), dx(in);
        std::vector<unsigned> idx(out);
        pool::max_pool2x2_fwd_f32(p, x.data(), y.data(), idx.data());
        pool::max_pool2x2_bwd_f32(p, dy.data(), idx.data(), dx.data());
        wr("y", y); wr("idx", idx); wr("dx", dx);
    } else if (job == "up") {
        unsigned planes = arg(0), ih = arg(1), iw = arg(2), oh = arg(3), ow = arg(4), al = arg(5);
        // the scales as the launcher computes them, printed exactly by Rust
        const float sh = strtof(argv[3 + 6], nullptr), sw = strtof(argv[3 + 7], nullptr);
        up::UpsampleBilinearGeometry p{planes, ih, iw, oh, ow, al, sh, sw};
        size_t in = (size_t)planes * ih * iw, out = (size_t)planes * oh * ow;
        auto x = rd<float>("x", in), dy = rd<float>("dy", out);
        std::vector<float> y(out), dx(in, 0.0f);
        up::upsample_bilinear_fwd_f32(p, x.data(), y.data());
        up::upsample_bilinear_bwd_f32(p, dy.data(), dx.data());
        wr("y", y); wr("dx", dx);
    } else if (job == "adam") {
        unsigned n = arg(0);
        auto s = rd<float>("scalars", 7);
        auto pv = rd<float>("p", n), g = rd<float>("g", n), m = rd<float>("m", n), v = rd<float>("v", n);
        adam::AdamStep p{s[0], s[1], s[2], s[3], s[4], s[5], s[6]};
        adam::adam_f32(p, pv.data(), g.data(), m.data(), v.data(), n);
        wr("p", pv); wr("m", m); wr("v", v);
    } else {
        return 2;
    }
    return 0;
}
"#;

/// Builds the harness once per test binary; None (test passes with a note) without a compiler.
fn harness(dir: &Path) -> Option<PathBuf> {
    for (name, src) in KERNEL_SOURCES {
        std::fs::write(dir.join(name), src).unwrap();
    }
    std::fs::write(dir.join("harness.cpp"), HARNESS).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let exe = dir.join("harness");
    let out = match Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-o"])
        .arg(&exe)
        .arg(dir.join("harness.cpp"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: no C++ compiler ({cxx}: {e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "the kernels do not compile as host C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

fn run(exe: &Path, dir: &Path, job: &str, args: &[String]) {
    let out = Command::new(exe)
        .arg(dir)
        .arg(job)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{job}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, v: &[f32]) {
    std::fs::write(dir.join(name), bytemuck::cast_slice::<f32, u8>(v)).unwrap();
}

fn read(dir: &Path, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&std::fs::read(dir.join(name)).unwrap())
}

/// Normwise error of `got` against `want`, with NaNs required at the same places.
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1e-30f64, |m, v| m.max(v.abs() as f64));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.is_nan(), w.is_nan(), "{what}[{i}]: kernel {g}, cpu {w}");
        if w.is_finite() {
            let e = (*g as f64 - *w as f64).abs() / scale;
            assert!(e <= tol, "{what}[{i}]: kernel {g}, cpu {w} (error {e:.2e})");
        } else if !w.is_nan() {
            assert_eq!(g, w, "{what}[{i}]");
        }
    }
}

/// Values in ±[0.05, 1]·scale, never zero.
struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                let m = 0.05 + 0.95 * ((self.0 >> 40) as f32 / (1u64 << 24) as f32);
                if self.0 & 1 == 0 {
                    m * scale
                } else {
                    -m * scale
                }
            })
            .collect()
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

#[test]
fn kernels_match_the_cpu_reference_on_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(exe) = harness(dir) else { return };
    let mut r = Rng(99);

    // GMP: odd sizes, samples outside the map, integer positions, non-finite moves; the fused
    // kernel with one channel group and with groups of 4 and 3 channels.
    for (case, (n, c, h, w, k, reach)) in [
        (3usize, 5usize, 7usize, 9usize, 4usize, 4.0f32),
        (1, 3, 6, 11, 8, 2.5),
        (3, 37, 5, 4, 2, 6.0),
        (2, 3, 5, 6, 3, 2.0),
    ]
    .into_iter()
    .enumerate()
    {
        let x = r.vec(n * c * h * w, 1.0);
        let mut off = r.vec(n * 2 * k * h * w, reach);
        for (i, o) in off.iter_mut().enumerate() {
            if i % 7 == 0 {
                *o = ((i / 7) % 5) as f32 - 2.0;
            }
        }
        if case == 3 {
            let at =
                |img: usize, ch: usize, i: usize, j: usize| ((img * 2 * k + ch) * h + i) * w + j;
            off[at(0, 0, 1, 2)] = f32::NAN;
            off[at(0, 3, 4, 5)] = f32::INFINITY;
            off[at(1, 4, 0, 0)] = f32::NEG_INFINITY;
            off[at(1, 1, 2, 3)] = 1e30;
        }
        let da = r.vec(n * c * h * w, 1.0);
        let xt = Tensor::from_vec(x.clone(), &[n, c, h, w]).unwrap();
        let ot = Tensor::from_vec(off.clone(), &[n, 2 * k, h, w]).unwrap();
        let dt = Tensor::from_vec(da.clone(), &[n, c, h, w]).unwrap();
        let a = gmp_sample_forward(&xt, &ot).unwrap().to_vec();
        let g = gmp_sample_backward(&xt, &ot, &dt, true, true).unwrap();
        let (dx, doff) = (g.dx.unwrap().to_vec(), g.doffsets.unwrap().to_vec());
        if case == 3 {
            assert!(a.iter().any(|v| v.is_nan()), "the reference makes NaNs");
        }
        write(dir, "x", &x);
        write(dir, "off", &off);
        write(dir, "da", &da);
        for per in [c, 4, 3] {
            run(&exe, dir, "gmp", &[s(n), s(c), s(h), s(w), s(k), s(per)]);
            for v in ["naive", "unfused", "fused"] {
                let tag = format!("gmp {v} N{n} C{c} {h}x{w} K{k} ({per} channels per group)");
                close(&format!("{tag} a"), &read(dir, &format!("{v}_a")), &a, 1e-5);
                close(
                    &format!("{tag} dx"),
                    &read(dir, &format!("{v}_dx")),
                    &dx,
                    1e-5,
                );
                close(
                    &format!("{tag} doff"),
                    &read(dir, &format!("{v}_doff")),
                    &doff,
                    1e-5,
                );
            }
        }
    }

    // max pooling: odd sizes, ties and NaNs
    for dims in [[3usize, 4, 7, 10], [1, 2, 6, 5]] {
        let mut x = r.vec(dims.iter().product(), 1.0);
        x[0] = f32::NAN;
        x[3] = x[2];
        x[5] = f32::NAN;
        x[dims[3]] = f32::NAN;
        let xt = Tensor::from_vec(x.clone(), &dims).unwrap();
        let (y, idx) = max_pool2d_forward(&xt).unwrap();
        let dy = r.vec(y.numel(), 1.0);
        let dx = max_pool2d_backward(
            &Tensor::from_vec(dy.clone(), y.dims()).unwrap(),
            &idx,
            &dims,
        )
        .unwrap();
        write(dir, "x", &x);
        write(dir, "dy", &dy);
        run(
            &exe,
            dir,
            "pool",
            &[s(dims[0] * dims[1]), s(dims[2]), s(dims[3])],
        );
        close("max_pool y", &read(dir, "y"), &y.to_vec(), 0.0);
        let kidx: Vec<u32> = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("idx")).unwrap());
        assert_eq!(kidx, idx.to_vec().unwrap(), "max_pool argmax {dims:?}");
        close("max_pool dx", &read(dir, "dx"), &dx.to_vec(), 0.0);
    }

    // bilinear resize, both modes, up, down and to 1x1
    for ([n, c, ih, iw], (oh, ow)) in [
        ([3usize, 2, 5, 7], (10usize, 14usize)),
        ([1, 3, 4, 6], (11, 13)),
        ([3, 1, 9, 8], (4, 3)),
        ([1, 2, 3, 5], (1, 1)),
    ] {
        for align in [false, true] {
            let x = r.vec(n * c * ih * iw, 1.0);
            let dy = r.vec(n * c * oh * ow, 1.0);
            let xt = Tensor::from_vec(x.clone(), &[n, c, ih, iw]).unwrap();
            let y = upsample_bilinear_forward(&xt, oh, ow, align).unwrap();
            let dyt = Tensor::from_vec(dy.clone(), &[n, c, oh, ow]).unwrap();
            let dx = upsample_bilinear_backward(&dyt, ih, iw, align).unwrap();
            write(dir, "x", &x);
            write(dir, "dy", &dy);
            let sc = |i: usize, o: usize| {
                dcl::ops::upsample_bilinear::source_scale(i, o, align).to_string()
            };
            run(
                &exe,
                dir,
                "up",
                &[
                    s(n * c),
                    s(ih),
                    s(iw),
                    s(oh),
                    s(ow),
                    s(align as u32),
                    sc(ih, oh),
                    sc(iw, ow),
                ],
            );
            let tag = format!("upsample {ih}x{iw} -> {oh}x{ow} align_corners={align}");
            close(&format!("{tag} y"), &read(dir, "y"), &y.to_vec(), 1e-6);
            close(&format!("{tag} dx"), &read(dir, "dx"), &dx.to_vec(), 1e-6);
        }
    }

    // Adam, one step with weight decay, from the CPU optimiser's host-side scalars
    let n = 1000;
    let (p, g, m, v) = (r.vec(n, 1.0), r.vec(n, 0.1), r.vec(n, 0.01), r.vec(n, 1e-4));
    let v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    let h = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        bias_correction1: (1.0 - 0.9f64.powf(3.0)) as f32,
        bias_correction2: (1.0 - 0.999f64.powf(3.0)) as f32,
    };
    let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[n]).unwrap();
    let (mut pt, mut mt, mut vt) = (t(&p), t(&m), t(&v));
    update_tensor(&mut pt, &t(&g), &mut mt, &mut vt, &h).unwrap();
    for (name, val) in [("p", &p), ("g", &g), ("m", &m), ("v", &v)] {
        write(dir, name, val);
    }
    write(
        dir,
        "scalars",
        &[
            h.lr,
            h.beta1,
            h.beta2,
            h.eps,
            h.weight_decay,
            h.bias_correction1,
            h.bias_correction2,
        ],
    );
    run(&exe, dir, "adam", &[s(n)]);
    close("adam p", &read(dir, "p"), &pt.to_vec(), 1e-6);
    close("adam m", &read(dir, "m"), &mt.to_vec(), 1e-6);
    close("adam v", &read(dir, "v"), &vt.to_vec(), 1e-6);
}
