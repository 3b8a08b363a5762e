//! GMP rows of `dcl bench kernels`: every CUDA version side by side (or the CPU reference), the
//! sampling op (`gmp_sample`) and the GMP layer's op (`gmp`: y = x + sampling, what the counter
//! runs), forward, backward and both, each rep starting from a cold L2 cache.
//!
//! The bandwidth floor of each row is the bytes that must move, each input read once and each
//! output written once (x is X bytes, the offsets O): forward x and the offsets in, y (or a)
//! out, 2X + O; backward x, the offsets and dy in, dx and doffsets out, 3X + 2O. At the paper's
//! shape (N 8, C 512, 32x32, K 8: X = 16 MiB, O = 0.5 MiB) that is 32.5 MiB forward, 49 MiB
//! backward, 81.5 MiB both (85.5 MB). A row's "% of ceiling" is its floor over its time against
//! the copy ceiling of the same run, i.e. the share of the floor it reaches. Layout copies made
//! inside a version (the `cl` versions' channels-last x and dx) are inside its timings, not in
//! the floor.
use super::timing::{nchw, randn, Bench, L2Flush, Rows, Timing, F32};
use super::{not_cuda, KernelBenchOptions};
use crate::error::Result;
use crate::nn::layers::scaled;
use crate::ops::gmp::{
    cuda as gmp_cuda, gmp_residual_backward, gmp_residual_forward, gmp_sample_backward,
    gmp_sample_forward, GmpGeometry, GmpKernel,
};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Per-position spread of the offsets around their sample's move, in pixels.
pub const OFFSET_NOISE_PX: f32 = 1.5;

/// Offsets `[n, 2k, h, w]` shaped like the layer's, bias + conv1x1 of the features: the moves a
/// fresh counter starts from (K directions around the circle, radii 2, 4, 8 feature pixels:
/// `nn::counter::Gmp::new`) plus N(0, 1.5 px) per position, so neighbouring positions sample
/// near each other as they do in the layer (and some samples land outside the map).
/// scripts/torch_parity.py's GMP timing draws its offsets the same way.
pub fn layer_like_offsets(n: usize, k: usize, h: usize, w: usize, rng: &mut Rng) -> Tensor {
    let mut v = Vec::with_capacity(n * 2 * k * h * w);
    for _ in 0..n {
        for i in 0..k {
            let angle = 2.0 * std::f32::consts::PI * i as f32 / k as f32;
            let radius = (2u32 << (i % 3)) as f32;
            for m in [radius * angle.cos(), radius * angle.sin()] {
                v.extend((0..h * w).map(|_| m + OFFSET_NOISE_PX * rng.normal()));
            }
        }
    }
    Tensor::from_vec(v, &[n, 2 * k, h, w]).expect("offsets shape")
}

/// The timings of one version (or the CPU): sampling and layer op, fwd / bwd / both.
struct Times {
    /// The CUDA version, None for the CPU.
    version: Option<GmpKernel>,
    name: String,
    sample: [Timing; 3],
    layer: [Timing; 3],
    /// Index of its layer fwd+bwd row.
    row: usize,
}

const PASSES: [&str; 3] = ["fwd", "bwd", "fwd+bwd"];

/// GMP at the counter's shape (N, C512, S/8, K).
pub(super) fn rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, c, hw, k) = (
        o.batch,
        scaled(512, o.width_mult),
        o.size / 8,
        o.gmp_points.max(1),
    );
    let x = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    let off = layer_like_offsets(n, k, hw, hw, rng).into_device(dev)?;
    let da = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    let shape = format!("{} K{k}", nchw(x.dims()));
    let (xb, ob) = (x.numel() as f64 * F32, off.numel() as f64 * F32);
    let floors = [2.0 * xb + ob, 3.0 * xb + 2.0 * ob, 5.0 * xb + 3.0 * ob];
    let l2 = L2Flush::new(dev)?;
    let mut all = Vec::new();
    let mut push = |r: &mut Rows, t: Times| {
        for (p, (tm, fl)) in PASSES.iter().zip(t.sample.iter().zip(floors)) {
            r.bw(
                &format!("gmp_sample {}", t.name),
                p,
                &shape,
                *tm,
                fl,
                String::new(),
            );
        }
        let row = r.rows.len() + 2;
        for (p, (tm, fl)) in PASSES.iter().zip(t.layer.iter().zip(floors)) {
            r.bw(
                &format!("gmp {}", t.name),
                p,
                &shape,
                *tm,
                fl,
                String::new(),
            );
        }
        all.push(Times { row, ..t });
    };
    match dev.cuda() {
        None => {
            let sample = time_passes(
                b,
                &l2,
                || gmp_sample_forward(&x, &off).map(drop),
                || gmp_sample_backward(&x, &off, &da, true, true).map(drop),
            )?;
            let (_, saved) = gmp_residual_forward(&x, &off)?;
            let layer = time_passes(
                b,
                &l2,
                || gmp_residual_forward(&x, &off).map(drop),
                || gmp_residual_backward(&x, &off, &saved, &da, true, true).map(drop),
            )?;
            let name = "cpu".to_string();
            push(
                r,
                Times {
                    version: None,
                    name,
                    sample,
                    layer,
                    row: 0,
                },
            );
        }
        Some(d) => {
            let gs = GmpGeometry::of(&x, &off)?;
            let (xs, os, ds) = (
                x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
                off.gpu_buffer().ok_or_else(|| not_cuda("offsets"))?,
                da.gpu_buffer().ok_or_else(|| not_cuda("da"))?,
            );
            for v in GmpKernel::ALL {
                if v.max_k().is_some_and(|m| k > m) {
                    continue;
                }
                let sample = time_passes(
                    b,
                    &l2,
                    || gmp_cuda::forward(d, v, xs, os, &gs).map(drop),
                    || gmp_cuda::backward(d, v, xs, os, ds, &gs).map(drop),
                )?;
                // The backward alone starts from what one forward saved (as on the tape).
                let (_, xt) = gmp_cuda::residual_forward(d, v, xs, os, &gs)?;
                let layer = [
                    b.time_cold(&l2, || {
                        gmp_cuda::residual_forward(d, v, xs, os, &gs).map(drop)
                    })?,
                    b.time_cold(&l2, || {
                        gmp_cuda::residual_backward(d, v, xs, xt.as_ref(), os, ds, &gs).map(drop)
                    })?,
                    b.time_cold(&l2, || {
                        let (_, xt) = gmp_cuda::residual_forward(d, v, xs, os, &gs)?;
                        gmp_cuda::residual_backward(d, v, xs, xt.as_ref(), os, ds, &gs).map(drop)
                    })?,
                ];
                let name = v.name().to_string();
                push(
                    r,
                    Times {
                        version: Some(v),
                        name,
                        sample,
                        layer,
                        row: 0,
                    },
                );
            }
        }
    }
    notes(r, &all, &l2.note());
    Ok(())
}

/// fwd, bwd and fwd+bwd of one version, each rep from a cold L2.
fn time_passes(
    b: &Bench,
    l2: &L2Flush,
    mut fwd: impl FnMut() -> Result<()>,
    mut bwd: impl FnMut() -> Result<()>,
) -> Result<[Timing; 3]> {
    Ok([
        b.time_cold(l2, &mut fwd)?,
        b.time_cold(l2, &mut bwd)?,
        b.time_cold(l2, || {
            fwd()?;
            bwd()
        })?,
    ])
}

/// On each version's layer fwd+bwd row: its speed-ups over the others (layer op; sampling op in
/// brackets), and what the row's % means.
fn notes(r: &mut Rows, all: &[Times], flush_note: &str) {
    let ratio = |a: &Timing, b: &Timing| a.median_ms / b.median_ms;
    for t in all {
        let others: Vec<String> = all
            .iter()
            .filter(|u| u.name != t.name)
            .map(|u| {
                format!(
                    "{:.2}x vs {} (fwd {:.2}x, bwd {:.2}x; sampling only {:.2}x)",
                    ratio(&u.layer[2], &t.layer[2]),
                    u.name,
                    ratio(&u.layer[0], &t.layer[0]),
                    ratio(&u.layer[1], &t.layer[1]),
                    ratio(&u.sample[2], &t.sample[2]),
                )
            })
            .collect();
        let mut note = String::new();
        if !others.is_empty() {
            note = format!("{}; ", others.join(", "));
        }
        note.push_str("% of the copy ceiling = share of the bandwidth floor; ");
        note.push_str(flush_note);
        if t.version.is_some_and(crate::ops::gmp::cl::is_cl) {
            note.push_str("; includes the channels-last copies of x and dx");
        }
        r.rows[t.row].note = note;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_layers_moves() {
        let o = layer_like_offsets(2, 8, 16, 16, &mut Rng::new(1));
        assert_eq!(o.dims(), &[2, 16, 16, 16]);
        let v = o.to_vec();
        let mean = |ch: usize| v[ch * 256..(ch + 1) * 256].iter().sum::<f32>() / 256.0;
        // sample 0 moves 2 px right, sample 1 about 2.83 px right and down (radius 4 at 45°)
        assert!((mean(0) - 2.0).abs() < 0.3 && mean(1).abs() < 0.3);
        assert!((mean(2) - 2.83).abs() < 0.3 && (mean(3) - 2.83).abs() < 0.3);
    }
}
