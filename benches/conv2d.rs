//! CPU conv2d (im2col + GEMM) at VGG-19 shapes, against the plain GEMM it reduces to.
//!
//! For each shape (batch 2, 3x3, padding 1): conv2d forward, backward (dx, dW, db) and
//! forward+backward; the `gemm` crate alone on the forward GEMM of the whole batch,
//! [O, C·9] × [C·9, N·OH·OW]; and im2col alone over the batch. Throughput is in FLOP
//! (2·multiply-adds; forward+backward counts 3 GEMMs' worth), so criterion's "elem/s" reads as
//! FLOP/s. Before criterion runs, a short timing loop prints GFLOP/s directly.
//!
//! Run: `cargo bench --bench conv2d -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dcl::device::cpu::sgemm;
use dcl::ops::conv2d::{conv2d_backward, conv2d_forward, cpu::im2col, Conv2dArgs, Conv2dGeometry};
use dcl::rng::Rng;
use dcl::tensor::Tensor;

struct Case {
    name: &'static str,
    x: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
    g: Conv2dGeometry,
}

const ARGS: Conv2dArgs = Conv2dArgs {
    stride: 1,
    padding: 1,
};

fn case(name: &'static str, n: usize, c: usize, o: usize, hw: usize) -> Case {
    let mut rng = Rng::new(7);
    let x = Tensor::randn(&[n, c, hw, hw], 1.0, &mut rng);
    let w = Tensor::randn(&[o, c, 3, 3], 0.05, &mut rng);
    let b = Tensor::randn(&[o], 0.1, &mut rng);
    let g = Conv2dGeometry::new(&x, &w, ARGS).expect("bench shapes are valid");
    let dy = Tensor::randn(&g.out_dims(), 1.0, &mut rng);
    Case {
        name,
        x,
        w,
        b,
        dy,
        g,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("64to64_3x3_64x64_n2", 2, 64, 64, 64),
        case("512to512_3x3_16x16_n2", 2, 512, 512, 16),
    ]
}

fn conv_fwd(c: &Case) -> Tensor {
    conv2d_forward(&c.x, &c.w, Some(&c.b), ARGS).expect("forward")
}

fn conv_bwd(c: &Case) {
    let g = conv2d_backward(&c.x, &c.w, &c.dy, ARGS, true, true, true).expect("backward");
    black_box((g.dx, g.dw, g.db));
}

/// The forward GEMM of the whole batch in one call: [O, K] × [K, N·P].
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Gemm {
    fn new(g: &Conv2dGeometry) -> Gemm {
        let (m, k, n) = (g.o(), g.col_rows(), g.n() * g.col_cols());
        let mut rng = Rng::new(3);
        Gemm {
            m,
            n,
            k,
            a: (0..m * k).map(|_| rng.normal()).collect(),
            b: (0..k * n).map(|_| rng.normal()).collect(),
            c: vec![0.0; m * n],
        }
    }
    fn run(&mut self) {
        let (m, n, k) = (self.m, self.n, self.k);
        sgemm(
            m,
            n,
            k,
            &self.a,
            k as isize,
            1,
            &self.b,
            n as isize,
            1,
            &mut self.c,
            0.0,
        );
        black_box(&self.c);
    }
}

fn im2col_batch(c: &Case, col: &mut [f32]) {
    let xs = c.x.as_cpu().expect("cpu tensor");
    for xn in xs.chunks(c.g.x_image()) {
        im2col(xn, &c.g, col);
        black_box(&col);
    }
}

fn secs(f: &mut impl FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    t0.elapsed().as_secs_f64()
}

/// Median and minimum of a sample.
fn med_min(mut t: Vec<f64>) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

/// GFLOP/s printed directly. The machine is shared, so the GEMM, the conv passes and im2col
/// are timed in interleaved rounds (each round sees similar load) and both the median and the
/// best round are shown; the best is the least disturbed estimate.
fn print_rates(cases: &[Case]) {
    const ROUNDS: usize = 7;
    println!(
        "conv2d CPU, {} rayon threads, {ROUNDS} interleaved rounds (median | best):",
        rayon::current_num_threads()
    );
    for c in cases {
        let f = c.g.forward_flops() as f64;
        let mut gemm = Gemm::new(&c.g);
        let mut col = vec![0.0f32; c.g.col_image()];
        let mut run_gemm = || gemm.run();
        let mut run_fwd = || {
            black_box(conv_fwd(c));
        };
        let mut run_bwd = || conv_bwd(c);
        let mut run_im2col = || im2col_batch(c, &mut col);
        // warm-up: allocations, page faults, rayon pool
        for _ in 0..2 {
            secs(&mut run_gemm);
            secs(&mut run_fwd);
            secs(&mut run_bwd);
            secs(&mut run_im2col);
        }
        let (mut tg, mut tf, mut tb, mut ti) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            tg.push(secs(&mut run_gemm));
            tf.push(secs(&mut run_fwd));
            tb.push(secs(&mut run_bwd));
            ti.push(secs(&mut run_im2col));
        }
        let ratio: Vec<f64> = (0..ROUNDS)
            .map(|r| (3.0 * f / (tf[r] + tb[r])) / (f / tg[r]))
            .collect();
        let all: Vec<f64> = (0..ROUNDS).map(|r| tf[r] + tb[r]).collect();
        let ((g, g0), (fw, fw0), (bw, bw0), (al, al0), (im, im0)) = (
            med_min(tg),
            med_min(tf),
            med_min(tb),
            med_min(all),
            med_min(ti),
        );
        let gf = |flops: f64, t: f64| flops / t / 1e9;
        println!("  {} ({:.2} GFLOP per forward):", c.name, f / 1e9);
        for (label, flops, (med, best)) in [
            ("gemm alone", f, (g, g0)),
            ("conv fwd", f, (fw, fw0)),
            ("conv bwd", 2.0 * f, (bw, bw0)),
            ("conv fwd+bwd", 3.0 * f, (al, al0)),
        ] {
            println!(
                "    {label:<13} {:6.1} | {:6.1} GFLOP/s   ({:.1} | {:.1} ms)",
                gf(flops, med),
                gf(flops, best),
                med * 1e3,
                best * 1e3
            );
        }
        let (rm, rmin) = med_min(ratio.clone());
        let rmax = ratio.iter().cloned().fold(f64::MIN, f64::max);
        println!(
            "    fwd+bwd rate / gemm rate, per round: median {:.0}% (range {:.0}%..{:.0}%)",
            100.0 * rm,
            100.0 * rmin,
            100.0 * rmax
        );
        println!(
            "    im2col alone  {:.1} | {:.1} ms over the batch ({:.0}% of the median fwd)",
            im * 1e3,
            im0 * 1e3,
            100.0 * im / fw
        );
    }
}

fn bench(cr: &mut Criterion) {
    let cases = cases();
    print_rates(&cases);
    for c in &cases {
        let f = c.g.forward_flops();
        let mut grp = cr.benchmark_group(format!("conv2d/{}", c.name));
        // Each iteration takes tens to hundreds of ms: flat sampling with few samples keeps a
        // 3 s measurement time meaningful.
        grp.sampling_mode(SamplingMode::Flat).sample_size(10);
        grp.throughput(Throughput::Elements(3 * f));
        grp.bench_function("fwd+bwd", |bch| {
            bch.iter(|| {
                black_box(conv_fwd(c));
                conv_bwd(c);
            })
        });
        grp.throughput(Throughput::Elements(f));
        grp.bench_function("fwd", |bch| bch.iter(|| black_box(conv_fwd(c))));
        let mut gemm = Gemm::new(&c.g);
        grp.bench_function("gemm_alone", |bch| bch.iter(|| gemm.run()));
        grp.throughput(Throughput::Elements(2 * f));
        grp.bench_function("bwd", |bch| bch.iter(|| conv_bwd(c)));
        // im2col moves N·K·P floats; its throughput is in column elements written.
        let mut col = vec![0.0f32; c.g.col_image()];
        grp.throughput(Throughput::Elements(c.g.col_len() as u64));
        grp.bench_function("im2col_alone", |bch| bch.iter(|| im2col_batch(c, &mut col)));
        grp.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
