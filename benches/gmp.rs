//! CPU GMP sampler and bilinear upsampling at the counter's shapes.
//! Throughput counts the bytes that must move at least once (f32): forward reads x and offsets
//! and writes out; backward reads dy, x and offsets and writes dx and doffsets.
//! Short run: `cargo bench --bench gmp -- --warm-up-time 1 --measurement-time 3`.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dcl::ops::gmp::{gmp_sample_backward, gmp_sample_forward};
use dcl::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use dcl::rng::Rng;
use dcl::tensor::Tensor;

const F32: u64 = 4;

fn bench_gmp(c: &mut Criterion) {
    let (n, ch, h, w, k) = (2, 512, 32, 32, 8);
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[n, ch, h, w], 1.0, &mut rng);
    // Moves spread over the whole map, as the initial offset biases are, so the samples
    // read scattered rows (and some fall outside).
    let off = Tensor::uniform(&[n, 2 * k, h, w], -16.0, 16.0, &mut rng);
    let dy = Tensor::randn(&[n, ch, h, w], 1.0, &mut rng);
    let xe = x.numel() as u64;
    let oe = off.numel() as u64;

    let mut g = c.benchmark_group("gmp_sample N2 C512 32x32 K8");
    g.throughput(Throughput::BytesDecimal(F32 * (xe + oe + xe)));
    g.bench_function("forward", |b| {
        b.iter(|| gmp_sample_forward(black_box(&x), black_box(&off)).unwrap())
    });
    g.throughput(Throughput::BytesDecimal(F32 * (xe + xe + oe + xe + oe)));
    g.bench_function("backward dx+doffsets", |b| {
        b.iter(|| gmp_sample_backward(black_box(&x), &off, black_box(&dy), true, true).unwrap())
    });
    g.bench_function("backward dx", |b| {
        b.iter(|| gmp_sample_backward(black_box(&x), &off, black_box(&dy), true, false).unwrap())
    });
    g.bench_function("backward doffsets", |b| {
        b.iter(|| gmp_sample_backward(black_box(&x), &off, black_box(&dy), false, true).unwrap())
    });
    g.throughput(Throughput::BytesDecimal(
        F32 * ((xe + oe + xe) + (xe + xe + oe + xe + oe)),
    ));
    g.bench_function("forward+backward", |b| {
        b.iter(|| {
            let y = gmp_sample_forward(black_box(&x), &off).unwrap();
            let gr = gmp_sample_backward(&x, &off, black_box(&dy), true, true).unwrap();
            (y, gr)
        })
    });
    g.finish();
}

fn bench_upsample(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let x = Tensor::randn(&[2, 512, 16, 16], 1.0, &mut rng);
    let dy = Tensor::randn(&[2, 512, 32, 32], 1.0, &mut rng);
    let (xe, ye) = (x.numel() as u64, dy.numel() as u64);
    let mut g = c.benchmark_group("upsample_bilinear x2 [2,512,16,16]");
    g.throughput(Throughput::BytesDecimal(F32 * (xe + ye)));
    g.bench_function("forward", |b| {
        b.iter(|| upsample_bilinear_forward(black_box(&x), 32, 32, false).unwrap())
    });
    g.bench_function("backward", |b| {
        b.iter(|| upsample_bilinear_backward(black_box(&dy), 16, 16, false).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_gmp, bench_upsample);
criterion_main!(benches);
