//! CPU 2x2 stride-2 max pooling, one rayon task per (n, c) plane.
use rayon::prelude::*;

/// Returns (y, argmax) for `planes` planes of h×w; argmax is the flat index within the input
/// plane. Scan order is row-major and a later value wins only if strictly greater (ties: the
/// first maximum) or NaN (NaN propagates, as PyTorch's CPU kernel).
pub fn forward(x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u32>) {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![0.0f32; planes * oh * ow];
    let mut idx = vec![0u32; planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ip), xp)| {
            for i in 0..oh {
                for j in 0..ow {
                    let first = 2 * i * w + 2 * j;
                    let (mut best, mut arg) = (xp[first], first);
                    for cand in [first + 1, first + w, first + w + 1] {
                        let v = xp[cand];
                        if v > best || v.is_nan() {
                            best = v;
                            arg = cand;
                        }
                    }
                    yp[i * ow + j] = best;
                    ip[i * ow + j] = arg as u32;
                }
            }
        });
    (y, idx)
}

/// Scatters dy (`planes` planes of `out_plane`) onto the argmax positions of zeroed input
/// planes of `in_plane` elements.
pub fn backward(
    dy: &[f32],
    idx: &[u32],
    planes: usize,
    in_plane: usize,
    out_plane: usize,
) -> Vec<f32> {
    let mut dx = vec![0.0f32; planes * in_plane];
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(idx.par_chunks(out_plane)))
        .for_each(|(dxp, (dyp, ip))| {
            for (&g, &k) in dyp.iter().zip(ip) {
                dxp[k as usize] += g; // windows do not overlap; += keeps it the adjoint anyway
            }
        });
    dx
}
