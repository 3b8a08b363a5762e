//! Data loader bench: one augmented batch of 8 at 256x256 with density maps, built from the
//! cache on the calling thread (one core), and the synthetic generator's time per image.
//!
//! cargo bench --bench loader
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dcl::data::{synthetic, Dataset, Loader};

fn loader(c: &mut Criterion) {
    // 64 cached 256x256 samples (images and density maps decoded / rendered once).
    let ds = Arc::new(Dataset::synthetic(64, 0, 256, 3.0).expect("synthetic set"));
    let l = Loader::new(ds, (0..64).collect(), 8, true, true, 0).with_workers(0);
    let per_epoch = l.batches_per_epoch();
    let mut i = 0usize;
    c.bench_function("loader/augmented batch 8x256x256 + density (1 core)", |b| {
        b.iter(|| {
            // Walk through epochs so orders and augmentations vary like in training.
            let (e, k) = (i / per_epoch, i % per_epoch);
            i += 1;
            black_box(l.batch(e, k).expect("batch"))
        })
    });
    // The machine is shared, so wall time includes waiting for a core: also report the time
    // this thread actually ran (Linux schedstat), which is what one free core would take.
    if let Some(t0) = thread_cpu_ns() {
        let n = 300;
        let w0 = std::time::Instant::now();
        for k in 0..n {
            black_box(l.batch(1000 + k / per_epoch, k % per_epoch).expect("batch"));
        }
        let wall = w0.elapsed().as_secs_f64() * 1e3 / n as f64;
        let cpu = (thread_cpu_ns().unwrap_or(t0) - t0) as f64 / 1e6 / n as f64;
        eprintln!("loader/augmented batch 8x256x256 + density: {cpu:.2} ms on-CPU, {wall:.2} ms wall per batch ({n} batches, one thread)");
    }
}

/// Nanoseconds this thread has run on a CPU (first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn synth(c: &mut Criterion) {
    let mut i = 0usize;
    c.bench_function("synthetic/render one 256x256 image (1 core)", |b| {
        b.iter(|| {
            i += 1;
            black_box(synthetic::render(0, i, 256))
        })
    });
    c.bench_function("synthetic/sample with density, sigma 3 (1 core)", |b| {
        b.iter(|| {
            i += 1;
            black_box(synthetic::sample(0, i, 256, 3.0).expect("sample"))
        })
    });
}

criterion_group!(benches, loader, synth);
criterion_main!(benches);
