//! The memory-bound ops' CPU paths at the networks' shapes, GB/s (bytes that must move at
//! least once) against a large copy measured just before each op (interleaved, so both see
//! the same machine state).
//!
//!     cargo bench --bench mem_ops [-- FILTER]
//!
//! `MEM_OPS_REPS=N` times N reps instead of 5 (the best is shown), e.g. to profile one op
//! under `perf record`.
use std::time::Instant;

use dcl::ops::batch_norm2d::{
    batch_norm2d_relu_backward, batch_norm2d_relu_train_forward, BatchNormMode, BatchNormNeeds,
};
use dcl::ops::concat::{concat_channels_backward, concat_channels_forward};
use dcl::ops::gmp::{gmp_sample_backward, gmp_sample_forward};
use dcl::ops::max_pool2d::{max_pool2d_backward, max_pool2d_forward};
use dcl::ops::relu::{relu_backward, relu_forward};
use dcl::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use dcl::rng::Rng;
use dcl::tensor::Tensor;

fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    let reps: usize = std::env::var("MEM_OPS_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn copy_gbps() -> f64 {
    use rayon::prelude::*;
    let n = 8usize << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let ms = best_ms(|| {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    8.0 * n as f64 / (ms * 1e-3) / 1e9
}

fn main() {
    // as the `dcl` binary runs: freed buffers stay mapped (device::cpu::heap)
    dcl::device::cpu::heap::keep_freed_memory();
    let filter = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .unwrap_or_default();
    let mut rng = Rng::new(1);
    let row = |name: &str, bytes: f64, f: &mut dyn FnMut()| {
        if !name.contains(filter.as_str()) {
            return;
        }
        let copy = copy_gbps();
        let ms = best_ms(f);
        let gbps = bytes / (ms * 1e-3) / 1e9;
        println!(
            "{name:58} {ms:8.2} ms {gbps:6.1} GB/s {:4.0}% of copy ({copy:.1} GB/s)",
            100.0 * gbps / copy
        );
    };
    println!(
        "{} threads, fast paths {}",
        rayon::current_num_threads(),
        dcl::device::cpu::simd::isa().name()
    );
    let f = 4.0;
    for (n, c, hw) in [(2, 64, 128), (2, 512, 16), (8, 8, 256), (8, 64, 32)] {
        let x = Tensor::randn(&[n, c, hw, hw], 1.0, &mut rng);
        let dy = Tensor::randn(&[n, c, hw, hw], 1.0, &mut rng);
        let (g, b) = (
            Tensor::full(&[c], 1.0, &Default::default()),
            Tensor::zeros(&[c], &Default::default()),
        );
        let nb = x.numel() as f64 * f;
        let tag = format!("N{n} C{c} {hw}x{hw}");
        row(&format!("bn+relu train fwd {tag}"), 2.0 * nb, &mut || {
            batch_norm2d_relu_train_forward(&x, &g, &b, 1e-5).unwrap();
        });
        let (y, saved, _) = batch_norm2d_relu_train_forward(&x, &g, &b, 1e-5).unwrap();
        row(
            &format!("bn+relu train bwd {tag} (x, y, dy read, dx written)"),
            4.0 * nb,
            &mut || {
                let all = BatchNormNeeds::ALL;
                batch_norm2d_relu_backward(&x, &g, &saved, &y, &dy, BatchNormMode::Train, all)
                    .unwrap();
            },
        );
        row(&format!("relu fwd {tag}"), 2.0 * nb, &mut || {
            relu_forward(&x).unwrap();
        });
        row(&format!("relu bwd {tag}"), 3.0 * nb, &mut || {
            relu_backward(&x, &dy).unwrap();
        });
        let (_, idx) = max_pool2d_forward(&x).unwrap();
        let dp = Tensor::randn(&idx.out_dims(), 1.0, &mut rng);
        row(&format!("max_pool2d fwd {tag}"), nb * 1.5, &mut || {
            max_pool2d_forward(&x).unwrap();
        });
        row(&format!("max_pool2d bwd {tag}"), nb * 1.5, &mut || {
            max_pool2d_backward(&dp, &idx, x.dims()).unwrap();
        });
        let small = Tensor::randn(&[n, c, hw / 2, hw / 2], 1.0, &mut rng);
        for ac in [false, true] {
            row(
                &format!("upsample x2 ac={ac} fwd {tag}"),
                nb * 1.25,
                &mut || {
                    upsample_bilinear_forward(&small, hw, hw, ac).unwrap();
                },
            );
            row(
                &format!("upsample x2 ac={ac} bwd {tag}"),
                nb * 1.25,
                &mut || {
                    upsample_bilinear_backward(&dy, hw / 2, hw / 2, ac).unwrap();
                },
            );
        }
        row(&format!("concat fwd {tag} + same"), 4.0 * nb, &mut || {
            concat_channels_forward(&[&x, &dy]).unwrap();
        });
        let cat = concat_channels_forward(&[&x, &dy]).unwrap();
        row(&format!("concat bwd {tag} + same"), 4.0 * nb, &mut || {
            concat_channels_backward(&cat, &[c, c]).unwrap();
        });
    }
    for (n, c, hw) in [(2, 512, 16), (8, 512, 32)] {
        let x = Tensor::randn(&[n, c, hw, hw], 1.0, &mut rng);
        let dy = Tensor::randn(&[n, c, hw, hw], 1.0, &mut rng);
        let off = Tensor::randn(&[n, 16, hw, hw], 4.0, &mut rng);
        let nb = x.numel() as f64 * f;
        let tag = format!("N{n} C{c} {hw}x{hw} K8");
        row(&format!("gmp_sample fwd {tag}"), 2.0 * nb, &mut || {
            gmp_sample_forward(&x, &off).unwrap();
        });
        row(
            &format!("gmp_sample bwd {tag} (dx, doffsets)"),
            3.0 * nb,
            &mut || {
                gmp_sample_backward(&x, &off, &dy, true, true).unwrap();
            },
        );
    }
}
