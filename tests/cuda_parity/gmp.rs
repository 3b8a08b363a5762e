//! GMP sampling and the GMP layer's op (y = x + sampling), every version.
use super::*;
use dcl::ops::gmp::{gmp_residual_backward, gmp_residual_forward};

/// Offsets with moves of up to `reach` pixels (many samples outside a small map), and some
/// exact integers (samples on pixel centres and cell edges).
fn gmp_offsets(r: &mut Rng, dims: &[usize], reach: f32) -> Tensor {
    let mut v = r.vec(dims.iter().product(), reach, 0.0);
    for (i, o) in v.iter_mut().enumerate() {
        if i % 7 == 0 {
            *o = ((i / 7) % 5) as f32 - 2.0;
        }
    }
    Tensor::from_vec(v, dims).unwrap()
}

/// Every version against the CPU: the sampling op (a, its dx and doffsets) and the layer's op
/// (y = x + a, dx = da + ∂a/∂x·da, doffsets), the latter both with the forward's saved state
/// and, for the channels-last versions, without it (the backward makes its own copy of x).
fn gmp_compare(d: &Device, x: &Tensor, off: &Tensor, da: &Tensor, tag: &str) {
    let a = gmp_sample_forward(x, off).unwrap();
    let g = gmp_sample_backward(x, off, da, true, true).unwrap();
    let (y, saved) = gmp_residual_forward(x, off).unwrap();
    let gy = gmp_residual_backward(x, off, &saved, da, true, true).unwrap();
    let (xg, og, dag) = (on(x, d), on(off, d), on(da, d));
    let k = off.dims()[1] / 2;
    for v in GmpKernel::ALL {
        dcl::ops::gmp::set_kernel(v);
        if v.max_k().is_some_and(|m| k > m) {
            let e = gmp_sample_forward(&xg, &og).unwrap_err().to_string();
            assert!(e.contains("naive"), "{e}");
            let e = gmp_residual_forward(&xg, &og).err().unwrap().to_string();
            assert!(e.contains("naive"), "{e}");
            continue;
        }
        let tag = format!("{tag} {}", v.name());
        close(
            &format!("gmp a {tag}"),
            &gmp_sample_forward(&xg, &og).unwrap(),
            &a,
            REDUCTION,
        );
        let gg = gmp_sample_backward(&xg, &og, &dag, true, true).unwrap();
        close(
            &format!("gmp dx {tag}"),
            gg.dx.as_ref().unwrap(),
            g.dx.as_ref().unwrap(),
            REDUCTION,
        );
        close(
            &format!("gmp doffsets {tag}"),
            gg.doffsets.as_ref().unwrap(),
            g.doffsets.as_ref().unwrap(),
            REDUCTION,
        );
        let (yg, sg) = gmp_residual_forward(&xg, &og).unwrap();
        assert_eq!(sg.version(), v);
        assert_eq!(
            sg.has_channels_last(),
            matches!(v, GmpKernel::Cl | GmpKernel::Cl4)
        );
        close(&format!("gmp residual y {tag}"), &yg, &y, REDUCTION);
        // The backward runs the forward's version whatever the switch says by then.
        dcl::ops::gmp::set_kernel(GmpKernel::Naive);
        let mut states = vec![("saved", sg)];
        if matches!(v, GmpKernel::Cl | GmpKernel::Cl4) {
            // A state without the channels-last copy (as a CPU forward leaves it, naming v):
            // the backward makes the copy itself.
            dcl::ops::gmp::set_kernel(v);
            states.push(("unsaved", gmp_residual_forward(x, off).unwrap().1));
        }
        for (what, state) in &states {
            let gyg = gmp_residual_backward(&xg, &og, state, &dag, true, true).unwrap();
            close(
                &format!("gmp residual dx ({what}) {tag}"),
                gyg.dx.as_ref().unwrap(),
                gy.dx.as_ref().unwrap(),
                REDUCTION,
            );
            close(
                &format!("gmp residual doffsets ({what}) {tag}"),
                gyg.doffsets.as_ref().unwrap(),
                gy.doffsets.as_ref().unwrap(),
                REDUCTION,
            );
        }
    }
    dcl::ops::gmp::set_kernel(GmpKernel::Fused);
}

#[test]
pub(crate) fn gmp_every_version_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("gmp_sample") else {
        return;
    };
    let mut r = Rng(8);
    // (n, c, h, w, k, reach); the cl versions: K in chunks of 4 (K <= 4) or 8, float4 lanes
    // when C % 4 == 0, tiles of 32 positions across images, blocks of 128 channels
    for (n, c, h, w, k, reach) in [
        (3, 5, 7, 9, 4, 4.0),
        (1, 3, 6, 11, 8, 2.5),
        (3, 37, 5, 4, 2, 6.0),
        (3, 8, 5, 7, 3, 3.0),   // float4 lanes, chunks of 4
        (2, 9, 5, 7, 11, 3.0),  // the fused kernels' arrays for 16; two chunks of 8
        (1, 2, 9, 6, 17, 3.0),  // beyond the fused kernel's K: naive, unfused and cl only
        (1, 132, 3, 5, 4, 2.0), // two channel blocks, the second of 4 (float4 lanes)
        (3, 131, 2, 3, 6, 2.0), // two channel blocks, scalar lanes
        (2, 64, 16, 16, 8, 8.0),
    ] {
        let x = r.tensor(&[n, c, h, w], 1.0, 0.0);
        let off = gmp_offsets(&mut r, &[n, 2 * k, h, w], reach);
        let da = r.tensor(&[n, c, h, w], 1.0, 0.0);
        gmp_compare(&d, &x, &off, &da, &format!("N{n} C{c} {h}x{w} K{k}"));
    }
}

/// Non-finite offsets: the CPU gives NaN samples (and NaN gradients at the taps it touches),
/// and every CUDA version must put its NaNs at exactly the same places.
#[test]
pub(crate) fn gmp_non_finite_offsets_follow_the_cpu() {
    let Some((_g, d, _dev)) = gpu("gmp_sample non-finite") else {
        return;
    };
    let mut r = Rng(9);
    let (n, c, h, w, k) = (2, 3, 5, 6, 3);
    let x = r.tensor(&[n, c, h, w], 1.0, 0.0);
    let mut off = gmp_offsets(&mut r, &[n, 2 * k, h, w], 2.0).to_vec();
    let at = |img: usize, ch: usize, i: usize, j: usize| ((img * 2 * k + ch) * h + i) * w + j;
    off[at(0, 0, 1, 2)] = f32::NAN; // u of sample 0
    off[at(0, 3, 4, 5)] = f32::INFINITY; // v of sample 1
    off[at(1, 4, 0, 0)] = f32::NEG_INFINITY; // u of sample 2
    off[at(1, 1, 2, 3)] = 1e30; // huge but finite: outside, not NaN
    let off = Tensor::from_vec(off, &[n, 2 * k, h, w]).unwrap();
    let da = r.tensor(&[n, c, h, w], 1.0, 0.0);
    let a = gmp_sample_forward(&x, &off).unwrap().to_vec();
    assert!(a.iter().any(|v| v.is_nan()), "the CPU reference makes NaNs");
    gmp_compare(&d, &x, &off, &da, "non-finite offsets");
}
