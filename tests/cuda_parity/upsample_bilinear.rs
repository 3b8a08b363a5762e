//! Bilinear resize.
use super::*;

#[test]
pub(crate) fn upsample_bilinear_both_modes_forward_backward() {
    let Some((_g, d, _dev)) = gpu("upsample_bilinear") else {
        return;
    };
    let mut r = Rng(7);
    // (x dims, out size): x2, odd factors, a downsample, to 1x1
    let cases = [
        ([3, 2, 5, 7], (10, 14)),
        ([1, 3, 4, 6], (11, 13)),
        ([3, 1, 9, 8], (4, 3)),
        ([1, 2, 3, 5], (1, 1)),
        ([1, 4, 16, 16], (128, 128)),
    ];
    for (xd, (oh, ow)) in cases {
        for align in [false, true] {
            let tag = format!("{xd:?} -> {oh}x{ow} align_corners={align}");
            let x = r.tensor(&xd, 1.0, 0.0);
            close(
                &format!("upsample y {tag}"),
                &upsample_bilinear_forward(&on(&x, &d), oh, ow, align).unwrap(),
                &upsample_bilinear_forward(&x, oh, ow, align).unwrap(),
                ELEMENTWISE,
            );
            let dy = r.tensor(&[xd[0], xd[1], oh, ow], 1.0, 0.0);
            // the backward sums overlapping shares (atomics on the GPU): reduction bound
            close(
                &format!("upsample dx {tag}"),
                &upsample_bilinear_backward(&on(&dy, &d), xd[2], xd[3], align).unwrap(),
                &upsample_bilinear_backward(&dy, xd[2], xd[3], align).unwrap(),
                REDUCTION,
            );
        }
    }
}
