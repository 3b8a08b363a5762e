//! GMP rows of `dcl bench kernels`: the three CUDA versions side by side, or the CPU reference.
use super::timing::{nchw, randn, Bench, Rows, F32};
use super::{not_cuda, KernelBenchOptions};
use crate::error::Result;
use crate::nn::layers::scaled;
use crate::ops::gmp::{
    cuda as gmp_cuda, gmp_sample_backward, gmp_sample_forward, GmpGeometry, GmpKernel,
};
use crate::rng::Rng;

/// GMP at the counter's shape (N, C512, S/8, K): the three CUDA versions side by side with
/// speedups, or the CPU reference.
pub(super) fn rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, c, hw, k) = (
        o.batch,
        scaled(512, o.width_mult),
        o.size / 8,
        o.gmp_points.max(1),
    );
    let x = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    // Moves of a few pixels, some samples land outside the map.
    let off = randn(&[n, 2 * k, hw, hw], 3.0, rng, dev)?;
    let da = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    let shape = format!("{} K{k}", nchw(x.dims()));
    let (xb, ob) = (x.numel() as f64 * F32, off.numel() as f64 * F32);
    let fwd_bytes = 2.0 * xb + ob;
    let bwd_bytes = 3.0 * xb + 2.0 * ob;
    match dev.cuda() {
        None => {
            let tf = b.time(|| gmp_sample_forward(&x, &off).map(drop))?;
            let tb = b.time(|| gmp_sample_backward(&x, &off, &da, true, true).map(drop))?;
            let tfb = b.time(|| {
                gmp_sample_forward(&x, &off)?;
                gmp_sample_backward(&x, &off, &da, true, true).map(drop)
            })?;
            r.bw(
                "gmp_sample cpu",
                "fwd",
                &shape,
                tf,
                fwd_bytes,
                String::new(),
            );
            r.bw(
                "gmp_sample cpu",
                "bwd",
                &shape,
                tb,
                bwd_bytes,
                String::new(),
            );
            r.bw(
                "gmp_sample cpu",
                "fwd+bwd",
                &shape,
                tfb,
                fwd_bytes + bwd_bytes,
                "the CUDA naive/unfused/fused versions run with --device cuda".into(),
            );
        }
        Some(d) => {
            let gs = GmpGeometry::of(&x, &off)?;
            let (xs, os, ds) = (
                x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
                off.gpu_buffer().ok_or_else(|| not_cuda("offsets"))?,
                da.gpu_buffer().ok_or_else(|| not_cuda("da"))?,
            );
            let mut both = Vec::new();
            for v in GmpKernel::ALL {
                if matches!(v, GmpKernel::Fused | GmpKernel::Fused16) && k > gmp_cuda::FUSED_MAX_K {
                    continue;
                }
                let tf = b.time(|| gmp_cuda::forward(d, v, xs, os, &gs).map(drop))?;
                let tb = b.time(|| gmp_cuda::backward(d, v, xs, os, ds, &gs).map(drop))?;
                let tfb = b.time(|| {
                    gmp_cuda::forward(d, v, xs, os, &gs)?;
                    gmp_cuda::backward(d, v, xs, os, ds, &gs).map(drop)
                })?;
                let op = format!("gmp_sample {}", v.name());
                r.bw(&op, "fwd", &shape, tf, fwd_bytes, String::new());
                r.bw(&op, "bwd", &shape, tb, bwd_bytes, String::new());
                both.push((v, tf, tb, tfb, r.rows.len()));
                r.bw(
                    &op,
                    "fwd+bwd",
                    &shape,
                    tfb,
                    fwd_bytes + bwd_bytes,
                    String::new(),
                );
            }
            // Speedups of each version over the slower ones, on the fwd+bwd rows.
            for i in 0..both.len() {
                let (v, _, _, tfb, row) = both[i];
                let mut notes = Vec::new();
                for &(u, uf, ub, ufb, _) in &both {
                    if u != v {
                        notes.push(format!(
                            "{:.2}x vs {} (fwd {:.2}x, bwd {:.2}x)",
                            ufb.median_ms / tfb.median_ms,
                            u.name(),
                            uf.median_ms / both[i].1.median_ms,
                            ub.median_ms / both[i].2.median_ms,
                        ));
                    }
                }
                r.rows[row].note = format!(
                    "{}; % of the copy ceiling = share of the bandwidth floor",
                    notes.join(", ")
                );
            }
        }
    }
    Ok(())
}
