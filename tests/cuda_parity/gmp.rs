//! GMP sampling, every version.
use super::*;

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

fn gmp_compare(d: &Device, x: &Tensor, off: &Tensor, da: &Tensor, tag: &str) {
    let a = gmp_sample_forward(x, off).unwrap();
    let g = gmp_sample_backward(x, off, da, true, true).unwrap();
    let (xg, og, dag) = (on(x, d), on(off, d), on(da, d));
    let k = off.dims()[1] / 2;
    for v in GmpKernel::ALL {
        dcl::ops::gmp::set_kernel(v);
        if matches!(v, GmpKernel::Fused | GmpKernel::Fused16)
            && k > dcl::ops::gmp::cuda::FUSED_MAX_K
        {
            let e = gmp_sample_forward(&xg, &og).unwrap_err().to_string();
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
    }
    dcl::ops::gmp::set_kernel(GmpKernel::Fused);
}

#[test]
pub(crate) fn gmp_every_version_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("gmp_sample") else {
        return;
    };
    let mut r = Rng(8);
    // (n, c, h, w, k, reach)
    for (n, c, h, w, k, reach) in [
        (3, 5, 7, 9, 4, 4.0),
        (1, 3, 6, 11, 8, 2.5),
        (3, 37, 5, 4, 2, 6.0),
        (2, 9, 5, 7, 11, 3.0), // the fused kernels' arrays for 16
        (1, 2, 9, 6, 17, 3.0), // beyond the fused kernel's K: naive and unfused only
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
