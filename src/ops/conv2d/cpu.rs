//! CPU conv2d: im2col + GEMM one image at a time, so the column workspace is bounded by one
//! image ([C·kh·kw, OH·OW]) whatever the batch size. Column layout (shared with the CUDA
//! kernels): row `(c·kh + ki)·kw + kj`, column `oh·OW + ow`.
//!
//! [`forward`] and [`backward`] take the SIMD fast path of `cpu_fast.rs` where it applies
//! (stride-1 "same" k×k convolutions on a CPU with AVX2 or AVX-512) and wins (not on small
//! maps with many channels: [`FAST_MIN_POSITIONS`]), and im2col + the `gemm` crate otherwise; [`forward_im2col`] and [`backward_im2col`] are that second path on its own,
//! the reference the fast path is tested against.
use rayon::prelude::*;

use super::{Conv2dGeometry, Conv2dGrads, Conv2dNeeds};
use crate::device::cpu::sgemm;
use crate::device::cpu::simd::Isa;

/// Unfolds one image `x` [C, H, W] into `col` [C·kh·kw, OH·OW] (zero padding).
pub fn im2col(x: &[f32], g: &Conv2dGeometry, col: &mut [f32]) {
    let (h, w, kh, kw) = (g.h(), g.w(), g.kh(), g.kw());
    let (stride, pad, oh_n, ow_n) = (g.stride(), g.pad(), g.oh(), g.ow());
    let p = g.col_cols();
    // One task per channel: each owns kh·kw rows of `col` and reads one input plane.
    col[..g.col_image()]
        .par_chunks_mut(kh * kw * p)
        .zip(x[..g.x_image()].par_chunks(h * w))
        .for_each(|(cc, plane)| {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = &mut cc[(ki * kw + kj) * p..][..p];
                    for oh in 0..oh_n {
                        let dst = &mut row[oh * ow_n..][..ow_n];
                        let ih = (oh * stride + ki) as isize - pad as isize;
                        if ih < 0 || ih >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[ih as usize * w..][..w];
                        if stride == 1 {
                            // iw = ow + kj - pad: one contiguous run of valid columns.
                            let lo = pad.saturating_sub(kj).min(ow_n);
                            let hi = (w + pad).saturating_sub(kj).clamp(lo, ow_n);
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                            if hi > lo {
                                let off = lo + kj - pad;
                                dst[lo..hi].copy_from_slice(&src[off..off + (hi - lo)]);
                            }
                        } else {
                            for (ow, d) in dst.iter_mut().enumerate() {
                                let iw = (ow * stride + kj) as isize - pad as isize;
                                *d = if iw >= 0 && iw < w as isize {
                                    src[iw as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        });
}

/// Folds `col` [C·kh·kw, OH·OW] back onto one image `dx` [C, H, W], adding (the adjoint of
/// `im2col`). `dx` must be zeroed (or hold values to accumulate onto).
pub fn col2im(col: &[f32], g: &Conv2dGeometry, dx: &mut [f32]) {
    let (h, w, kh, kw) = (g.h(), g.w(), g.kh(), g.kw());
    let (stride, pad, oh_n, ow_n) = (g.stride(), g.pad(), g.oh(), g.ow());
    let p = g.col_cols();
    dx[..g.x_image()]
        .par_chunks_mut(h * w)
        .zip(col[..g.col_image()].par_chunks(kh * kw * p))
        .for_each(|(plane, cc)| {
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = &cc[(ki * kw + kj) * p..][..p];
                    for oh in 0..oh_n {
                        let ih = (oh * stride + ki) as isize - pad as isize;
                        if ih < 0 || ih >= h as isize {
                            continue;
                        }
                        let dst = &mut plane[ih as usize * w..][..w];
                        let src = &row[oh * ow_n..][..ow_n];
                        for (ow, &v) in src.iter().enumerate() {
                            let iw = (ow * stride + kj) as isize - pad as isize;
                            if iw >= 0 && iw < w as isize {
                                dst[iw as usize] += v;
                            }
                        }
                    }
                }
            }
        });
}

/// Late layers, maps of fewer than this many positions with at least [`GEMM_MIN_CHANNELS`]
/// input channels, go to im2col + the gemm crate even where the fast path applies, because
/// there it is the faster (why is not known: keeping the fast path's weight block in L2 did
/// not help). Measured side by side (`dcl bench step`, AVX2, 2 threads; BENCHMARKS.md): counter
/// training step at width 1, 128², batch 2 0.81x the time of the fast path everywhere,
/// localizer 0.88x, counting at 256² 0.91x; the width-1/8 networks (at most 64 channels in the
/// counter) keep the fast path, where it wins.
const FAST_MIN_POSITIONS: usize = 64 * 64;
/// See [`FAST_MIN_POSITIONS`].
const GEMM_MIN_CHANNELS: usize = 128;

/// The instruction set of the fast path for `g`, or `None` for im2col + GEMM.
fn fast_isa(g: &Conv2dGeometry) -> Option<Isa> {
    if g.oh() * g.ow() < FAST_MIN_POSITIONS && g.c() >= GEMM_MIN_CHANNELS {
        return None;
    }
    super::cpu_fast::isa_for(g)
}

/// y [N, O, OH, OW], through the fast path where it applies.
pub fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &Conv2dGeometry) -> Vec<f32> {
    match fast_isa(g) {
        Some(isa) => super::cpu_fast::forward(x, w, b, g, isa),
        None => forward_im2col(x, w, b, g),
    }
}

/// The gradients, through the fast path where it applies.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
) -> Conv2dGrads<Vec<f32>> {
    match fast_isa(g) {
        Some(isa) => super::cpu_fast::backward(x, w, dy, g, needs, isa),
        None => backward_im2col(x, w, dy, g, needs),
    }
}

/// db[o] = Σ_{n,p} dY[n, o, p], summed in f64.
pub fn bias_grad(dy: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (o, p) = (g.o(), g.col_cols());
    let op = g.y_image();
    (0..o)
        .into_par_iter()
        .map(|oi| {
            dy.chunks(op)
                .map(|img| img[oi * p..][..p].iter().map(|&v| v as f64).sum::<f64>())
                .sum::<f64>() as f32
        })
        .collect()
}

/// y[N, O, OH·OW]: per image, y_n = W[O, K] · col_n[K, P] (+ b broadcast over P).
pub fn forward_im2col(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &Conv2dGeometry) -> Vec<f32> {
    let (o, k, p) = (g.o(), g.col_rows(), g.col_cols());
    let mut y = vec![0.0f32; g.y_len()];
    let mut col = if g.is_pointwise() {
        Vec::new()
    } else {
        vec![0.0f32; g.col_image()]
    };
    for (xn, yn) in x.chunks(g.x_image()).zip(y.chunks_mut(g.y_image())) {
        // The bias is written first and the GEMM accumulates onto it (beta = 1): no extra pass.
        if let Some(b) = b {
            for (row, &bv) in yn.chunks_mut(p).zip(b) {
                row.fill(bv);
            }
        }
        let cols: &[f32] = if g.is_pointwise() {
            xn // a 1x1 stride-1 unpadded conv: the image [C, H·W] is its own column matrix
        } else {
            im2col(xn, g, &mut col);
            &col
        };
        let beta = if b.is_some() { 1.0 } else { 0.0 };
        sgemm(o, p, k, w, k as isize, 1, cols, p as isize, 1, yn, beta);
    }
    y
}

/// dW = Σ_n dY_n · col_nᵀ, dX_n = col2im(Wᵀ · dY_n), db = Σ_{n,p} dY. Transposes are strided
/// GEMM operands, never copies.
pub fn backward_im2col(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
) -> Conv2dGrads<Vec<f32>> {
    let (o, k, p) = (g.o(), g.col_rows(), g.col_cols());
    let (chw, op) = (g.x_image(), g.y_image());
    let mut dw = needs.dw.then(|| vec![0.0f32; g.w_len()]);
    let mut dx = needs.dx.then(|| vec![0.0f32; g.x_len()]);
    let mut col = if g.is_pointwise() || !(needs.dx || needs.dw) {
        Vec::new()
    } else {
        vec![0.0f32; g.col_image()]
    };
    for n in 0..g.n() {
        let xn = &x[n * chw..][..chw];
        let dyn_ = &dy[n * op..][..op];
        if let Some(dw) = dw.as_mut() {
            let cols: &[f32] = if g.is_pointwise() {
                xn
            } else {
                im2col(xn, g, &mut col);
                &col
            };
            // dW[O, K] (+)= dY_n[O, P] · col_nᵀ[P, K]; col_nᵀ read with strides (1, P).
            let beta = if n == 0 { 0.0 } else { 1.0 };
            sgemm(o, k, p, dyn_, p as isize, 1, cols, 1, p as isize, dw, beta);
        }
        if let Some(dx) = dx.as_mut() {
            let dxn = &mut dx[n * chw..][..chw];
            // Wᵀ[K, O] read from W[O, K] with strides (1, K).
            if g.is_pointwise() {
                sgemm(k, p, o, w, 1, k as isize, dyn_, p as isize, 1, dxn, 0.0);
            } else {
                sgemm(
                    k, p, o, w, 1, k as isize, dyn_, p as isize, 1, &mut col, 0.0,
                );
                col2im(&col, g, dxn);
            }
        }
    }
    let db = needs.db.then(|| bias_grad(dy, g));
    Conv2dGrads { dx, dw, db }
}
