//! The CPU conv2d fast path (ops/conv2d/cpu_fast.rs) against im2col + the `gemm` crate
//! (cpu.rs) at the networks' 3x3 layer shapes, forward, dX and dW separately, interleaved in
//! rounds; GFLOP/s against the machine's measured FMA peak.
//!
//!     cargo bench --bench conv_fast [-- ROUNDS [FILTER]]
//!
//! FILTER keeps the shapes whose label contains it (e.g. `64->64`).
use std::time::Instant;

use dcl::device::cpu::simd::{self, Isa};
use dcl::ops::conv2d::{cpu, cpu_fast, Conv2dArgs, Conv2dGeometry, Conv2dNeeds};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU seconds of this process so far (all threads): under other processes' load the wall
/// time includes waiting for a core, the CPU time does not.
fn cpu_secs() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // Safety: CLOCK_PROCESS_CPUTIME_ID = 2 on Linux; ts is a valid out-pointer.
    unsafe { clock_gettime(2, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// Best of `reps` (after one warm-up) in wall ms and in CPU ms.
fn best_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_secs());
        f();
        best.0 = best.0.min(t.elapsed().as_secs_f64() * 1e3);
        best.1 = best.1.min((cpu_secs() - c) * 1e3);
    }
    best
}

fn main() {
    // as the `dcl` binary runs: freed buffers stay mapped (device::cpu::heap)
    dcl::device::cpu::heap::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let filter = args.get(1).cloned().unwrap_or_default();
    // (label, N, C, O, H): VGG-19 at 128x128 batch 2, UNet w=64 at 128x128 batch 2, and the
    // width-1/8 networks at 256x256 batch 8.
    let shapes: &[(&str, usize, usize, usize, usize)] = &[
        ("3->64 128^2 N2", 2, 3, 64, 128),
        ("64->64 128^2 N2", 2, 64, 64, 128),
        ("64->128 64^2 N2", 2, 64, 128, 64),
        ("128->128 64^2 N2", 2, 128, 128, 64),
        ("256->256 32^2 N2", 2, 256, 256, 32),
        ("512->512 16^2 N2", 2, 512, 512, 16),
        ("512->512 8^2 N2", 2, 512, 512, 8),
        ("4->64 128^2 N2 (unet inc)", 2, 4, 64, 128),
        ("128->64 128^2 N2 (unet up4)", 2, 128, 64, 128),
        ("3->8 256^2 N8 (w1/8)", 8, 3, 8, 256),
        ("8->8 256^2 N8 (w1/8)", 8, 8, 8, 256),
        ("16->16 128^2 N8 (w1/8)", 8, 16, 16, 128),
        ("64->64 16^2 N8 (w1/8)", 8, 64, 64, 16),
    ];
    let isa = simd::isa();
    let threads = rayon::current_num_threads();
    // FMA GFLOP per CPU-second of one core: the peak the CPU-time rates are read against.
    let core_peak = (0..3)
        .map(|_| {
            let c0 = cpu_secs();
            let flops = simd::fma_work(isa, 20_000_000);
            flops / (cpu_secs() - c0) / 1e9
        })
        .fold(0.0, f64::max);
    println!(
        "{threads} threads, {} (FMA peak {core_peak:.0} GFLOP per CPU-second of one core); best \
         of 3 per round, {rounds} rounds; % = GFLOP/s per CPU-second against that peak (wall \
         ms shown)",
        isa.name()
    );
    if filter == "kernels" {
        kernels(isa, core_peak);
        return;
    }
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| *i <= isa && i.available())
        .collect();
    for &(label, n, c, o, h) in shapes {
        if !label.contains(filter.as_str()) {
            continue;
        }
        let g = Conv2dGeometry::from_dims(
            [n, c, h, h],
            [o, c, 3, 3],
            Conv2dArgs {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let x = data(g.x_len(), 1);
        let w = data(g.w_len(), 2);
        let dy = data(g.y_len(), 3);
        let gf = g.forward_flops() as f64 / 1e9;
        let only = |dx: bool, dw: bool| Conv2dNeeds { dx, dw, db: false };
        for round in 0..rounds {
            let mut line = format!("{label:28} r{round}");
            let pct = |(_, cpu): (f64, f64), flops: f64| 100.0 * flops / (cpu * 1e-3) / core_peak;
            for &i in &isas {
                let f = best_ms(3, || drop(cpu_fast::forward(&x, &w, None, &g, i)));
                let dxt = best_ms(3, || {
                    drop(cpu_fast::backward(&x, &w, &dy, &g, only(true, false), i))
                });
                let dwt = best_ms(3, || {
                    drop(cpu_fast::backward(&x, &w, &dy, &g, only(false, true), i))
                });
                line += &format!(
                    " | {}: fwd {:5.1} ms {:3.0}% dX {:5.1} ms {:3.0}% dW {:5.1} ms {:3.0}%",
                    &i.name()[..6],
                    f.0,
                    pct(f, gf),
                    dxt.0,
                    pct(dxt, gf),
                    dwt.0,
                    pct(dwt, gf),
                );
            }
            let f = best_ms(3, || drop(cpu::forward_im2col(&x, &w, None, &g)));
            let b = best_ms(3, || {
                drop(cpu::backward_im2col(&x, &w, &dy, &g, only(true, true)))
            });
            line += &format!(
                " | im2col: fwd {:5.1} ms {:3.0}% bwd {:5.1} ms {:3.0}%",
                f.0,
                pct(f, gf),
                b.0,
                pct(b, 2.0 * gf)
            );
            println!("{line}");
        }
    }
}

/// The micro-kernel alone on cache-resident operands, one thread: B rows read in place at
/// aligned and at unaligned offsets, as a 3x3 convolution's shifted rows.
fn kernels(isa: Isa, core_peak: f64) {
    use dcl::device::cpu::kernels::{GemmKernel, Init, Span};
    let k = GemmKernel::for_isa(isa, 64).unwrap();
    let kc = 256;
    let a = data(kc * k.mr, 1);
    let src = data(64 * 1024, 3);
    let ldc = 8 * k.nr;
    let mut c = vec![0.0f32; k.mr * ldc];
    let full = (1u32 << k.lanes()) - 1;
    let spans = [
        Span { off: 0, mask: full },
        Span {
            off: k.lanes(),
            mask: full,
        },
    ];
    let calls = 20000;
    let flops = (calls * kc * k.mr * k.nr * 2) as f64;
    for (name, shift) in [("aligned rows", 0usize), ("rows shifted by 0..2", 1)] {
        // 28 channels x 9 taps over rows 130 floats apart, as a 3x3 conv at 128 wide
        let offs: Vec<usize> = (0..kc)
            .map(|r| {
                let (ch, t) = (r / 9, r % 9);
                let o = ch * 1024 + (t / 3) * 130 + (t % 3) * shift;
                if shift == 0 {
                    o / 16 * 16
                } else {
                    o
                }
            })
            .collect();
        let c0 = cpu_secs();
        for _ in 0..calls {
            unsafe {
                k.gather(
                    kc,
                    a.as_ptr(),
                    src.as_ptr(),
                    offs.as_ptr(),
                    c.as_mut_ptr(),
                    ldc,
                    k.mr,
                    &spans,
                    Init::Load,
                )
            }
        }
        let s = cpu_secs() - c0;
        println!(
            "{} {}x{} {name:24} {:5.1}% of the core peak",
            isa.name(),
            k.mr,
            k.nr,
            100.0 * flops / s / 1e9 / core_peak
        );
    }
}
