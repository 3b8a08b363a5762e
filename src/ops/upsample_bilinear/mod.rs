//! Bilinear resize of NCHW maps to a given size, with PyTorch's
//! `F.interpolate(mode="bilinear", size=(out_h, out_w), align_corners=A)` semantics: the counter
//! upsamples x2 with align_corners=false, the UNet decoder x2 with align_corners=true, and the
//! localizer's coarse-map input is resized by an arbitrary factor.
mod cpu;
mod cpu_fast;
pub mod cuda;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::KernelParam;
use crate::error::{Error, Result};
use crate::tensor::{expect_rank, Storage, Tensor};

const OP: &str = "upsample_bilinear";

/// Source-per-destination scale, as PyTorch computes it for an explicit output size: with
/// align_corners, (in−1)/(out−1) (0 for a single output); without, in/out.
pub fn source_scale(input: usize, output: usize, align_corners: bool) -> f32 {
    if align_corners {
        if output > 1 {
            (input as f32 - 1.0) / (output as f32 - 1.0)
        } else {
            0.0
        }
    } else {
        input as f32 / output as f32
    }
}

/// One resize: `planes` = N·C planes of `ih`×`iw` to `oh`×`ow`, with the scales of
/// [`source_scale`]. Used by the CPU reference, the launcher and, `#[repr(C)]`, as the kernel's
/// parameter struct (kernels/upsample_bilinear.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpsampleBilinearGeometry {
    pub planes: u32,
    pub ih: u32,
    pub iw: u32,
    pub oh: u32,
    pub ow: u32,
    pub align_corners: u32,
    pub scale_h: f32,
    pub scale_w: f32,
}
// Safety: six u32 and two f32, as `struct UpsampleBilinearGeometry` in the kernel.
unsafe impl KernelParam for UpsampleBilinearGeometry {}
const _: () = assert!(std::mem::size_of::<UpsampleBilinearGeometry>() == 32);

impl UpsampleBilinearGeometry {
    /// `[n, c, ih, iw]` → `[n, c, oh, ow]`; every size non-empty and within u32.
    pub fn new(
        [n, c, ih, iw]: [usize; 4],
        (oh, ow): (usize, usize),
        align_corners: bool,
    ) -> Result<Self> {
        for (what, h, w) in [("input", ih, iw), ("output", oh, ow)] {
            if h == 0 || w == 0 {
                return Err(Error::shape(
                    OP,
                    format!("{what} size {h}x{w} must be non-empty"),
                ));
            }
        }
        let too_large = || {
            Error::shape(
                OP,
                format!("[{n}, {c}, {ih}, {iw}] -> {oh}x{ow} is too large"),
            )
        };
        let planes = n.checked_mul(c).ok_or_else(too_large)?;
        planes
            .checked_mul(ih.max(oh))
            .and_then(|v| v.checked_mul(iw.max(ow)))
            .ok_or_else(too_large)?;
        let u = |v: usize| u32::try_from(v).map_err(|_| too_large());
        Ok(UpsampleBilinearGeometry {
            planes: u(planes)?,
            ih: u(ih)?,
            iw: u(iw)?,
            oh: u(oh)?,
            ow: u(ow)?,
            align_corners: align_corners as u32,
            scale_h: source_scale(ih, oh, align_corners),
            scale_w: source_scale(iw, ow, align_corners),
        })
    }
    pub fn align_corners(&self) -> bool {
        self.align_corners != 0
    }
    pub fn in_len(&self) -> usize {
        self.planes as usize * self.ih as usize * self.iw as usize
    }
    pub fn out_len(&self) -> usize {
        self.planes as usize * self.oh as usize * self.ow as usize
    }
}

/// x `[N, C, H, W]` → `[N, C, out_h, out_w]`.
pub fn upsample_bilinear_forward(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let &[n, c, h, w] = expect_rank(OP, "input x", x, 4)? else {
        unreachable!("rank checked")
    };
    let g = UpsampleBilinearGeometry::new([n, c, h, w], (out_h, out_w), align_corners)?;
    let dims = [n, c, out_h, out_w];
    match x.storage() {
        Storage::Cpu(xs) => Ok(Tensor::from_storage(cpu::forward(xs, &g), &dims)),
        Storage::Cuda(xs) => Ok(Tensor::from_storage(
            cuda::forward(xs.device(), xs, &g)?,
            &dims,
        )),
    }
}

/// dy `[N, C, out_h, out_w]` → dx `[N, C, in_h, in_w]` (the adjoint of the forward resize).
pub fn upsample_bilinear_backward(
    dy: &Tensor,
    in_h: usize,
    in_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let &[n, c, out_h, out_w] = expect_rank(OP, "gradient dy", dy, 4)? else {
        unreachable!("rank checked")
    };
    let g = UpsampleBilinearGeometry::new([n, c, in_h, in_w], (out_h, out_w), align_corners)?;
    let dims = [n, c, in_h, in_w];
    match dy.storage() {
        Storage::Cpu(dys) => Ok(Tensor::from_storage(cpu::backward(dys, &g), &dims)),
        Storage::Cuda(dys) => Ok(Tensor::from_storage(
            cuda::backward(dys.device(), dys, &g)?,
            &dims,
        )),
    }
}

/// Needs only the input size: the resize is linear in x.
struct UpsampleBilinearBackward {
    in_h: usize,
    in_w: usize,
    align_corners: bool,
}

impl Backward for UpsampleBilinearBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(upsample_bilinear_backward(
            dy,
            self.in_h,
            self.in_w,
            self.align_corners,
        )?)])
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn upsample_bilinear(
    tape: &Tape,
    x: &Var,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Var> {
    let y = tape.timed(OP, || {
        upsample_bilinear_forward(x.value(), out_h, out_w, align_corners)
    })?;
    let (in_h, in_w) = (x.dims()[2], x.dims()[3]);
    Ok(tape.record(
        y,
        &[x],
        UpsampleBilinearBackward {
            in_h,
            in_w,
            align_corners,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "{what}[{i}]: got {g}, want {w}");
        }
    }

    /// The fast path (each instruction set this CPU has) against the reference loops: up and
    /// down by odd factors, both corner modes; the forward bit for bit.
    #[test]
    fn fast_path_matches_reference_loops() {
        use crate::device::cpu::simd::Isa;
        for isa in [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
        {
            for (ih, iw, oh, ow) in [
                (3, 5, 7, 11),
                (8, 8, 16, 16),
                (9, 4, 4, 9),
                (2, 32, 256, 17),
            ] {
                for ac in [false, true] {
                    let x = random_input(&[2, 3, ih, iw], 3).to_vec();
                    let g = UpsampleBilinearGeometry::new([2, 3, ih, iw], (oh, ow), ac).unwrap();
                    let what = format!("{isa:?} {ih}x{iw} -> {oh}x{ow} ac {ac}");
                    let want = cpu::forward_reference(&x, &g);
                    assert_eq!(cpu_fast::forward(&x, &g, isa), want, "{what}");
                    let dy = random_input(&[2, 3, oh, ow], 4).to_vec();
                    let (a, b) = (
                        cpu_fast::backward(&dy, &g, isa),
                        cpu::backward_reference(&dy, &g),
                    );
                    for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                        // sums of up to 128 terms in another order
                        assert!(
                            (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                            "{what}[{i}]: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }

    /// x = [[1, 2, 4], [8, 16, 32]] resized 2x3 → 4x5, weights derived by hand.
    /// align_corners=false: rows src = (d+0.5)·2/4 − 0.5 = −0.25→0, 0.25, 0.75, 1.25 (i0 = i1 = 1);
    /// cols src = (d+0.5)·3/5 − 0.5 = −0.2→0, 0.4, 1.0, 1.6, 2.2 (i0 = i1 = 2).
    /// align_corners=true: rows src = d/3, cols src = d/2.
    #[test]
    fn scales_follow_pytorch() {
        assert_eq!(source_scale(16, 32, false), 0.5);
        assert_eq!(source_scale(16, 32, true), 15.0 / 31.0);
        assert_eq!(source_scale(5, 1, true), 0.0);
        let g = UpsampleBilinearGeometry::new([2, 3, 4, 5], (8, 10), true).unwrap();
        assert_eq!((g.planes, g.align_corners), (6, 1));
        assert!(UpsampleBilinearGeometry::new([1, 1, 0, 4], (2, 2), false).is_err());
        assert!(UpsampleBilinearGeometry::new([usize::MAX, 2, 1, 1], (2, 2), false).is_err());
    }

    #[test]
    fn golden_2x3_to_4x5() {
        let x = Tensor::from_vec(vec![1., 2., 4., 8., 16., 32.], &[1, 1, 2, 3]).unwrap();
        let y = upsample_bilinear_forward(&x, 4, 5, false).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 5]);
        #[rustfmt::skip]
        let want = [
            1.0,  1.4,  2.0,  3.2,  4.0,
            2.75, 3.85, 5.5,  8.8,  11.0,
            6.25, 8.75, 12.5, 20.0, 25.0,
            8.0,  11.2, 16.0, 25.6, 32.0,
        ];
        assert_close(&y.to_vec(), &want, "align_corners=false");

        let y = upsample_bilinear_forward(&x, 4, 5, true).unwrap();
        #[rustfmt::skip]
        let want = [
            1.0,       1.5, 2.0,        3.0,  4.0,
            10.0 / 3.0, 5.0, 20.0 / 3.0, 10.0, 40.0 / 3.0,
            17.0 / 3.0, 8.5, 34.0 / 3.0, 17.0, 68.0 / 3.0,
            8.0,       12.0, 16.0,      24.0, 32.0,
        ];
        assert_close(&y.to_vec(), &want, "align_corners=true");
    }

    /// Downsampling by 2 with align_corners=false samples at src = 2d + 0.5: the mean of each 2x2
    /// block. A 1x1 output with align_corners=true reads the top-left pixel (scale 0).
    #[test]
    fn golden_downsample_and_single_pixel() {
        let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 1, 4, 4]).unwrap();
        let y = upsample_bilinear_forward(&x, 2, 2, false).unwrap();
        assert_close(&y.to_vec(), &[2.5, 4.5, 10.5, 12.5], "4x4 → 2x2");
        let y = upsample_bilinear_forward(&x, 1, 1, true).unwrap();
        assert_close(&y.to_vec(), &[0.0], "4x4 → 1x1 align_corners");
        // Same size is the identity in both modes.
        for a in [false, true] {
            let y = upsample_bilinear_forward(&x, 4, 4, a).unwrap();
            assert_close(&y.to_vec(), &x.to_vec(), "identity");
        }
    }

    /// The backward is the exact adjoint of the forward: <up(x), g> = <x, up^T(g)>.
    #[test]
    fn backward_is_adjoint_of_forward() {
        for &(oh, ow, a) in &[(10, 6, false), (10, 6, true), (3, 2, false), (7, 11, true)] {
            let x = random_input(&[2, 3, 5, 4], 3);
            let g = random_input(&[2, 3, oh, ow], 4);
            let y = upsample_bilinear_forward(&x, oh, ow, a).unwrap();
            let dx = upsample_bilinear_backward(&g, 5, 4, a).unwrap();
            let lhs: f64 = y
                .to_vec()
                .iter()
                .zip(g.to_vec())
                .map(|(a, b)| (a * b) as f64)
                .sum();
            let rhs: f64 = x
                .to_vec()
                .iter()
                .zip(dx.to_vec())
                .map(|(a, b)| (a * b) as f64)
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{oh}x{ow} {a}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn gradcheck_upsample_bilinear() {
        for a in [false, true] {
            // x2 up, H != W
            let x = random_input(&[2, 2, 3, 5], 7);
            check_gradients("upsample_bilinear x2", vec![x], |t, v| {
                upsample_bilinear(t, &v[0], 6, 10, a)
            })
            .unwrap();
            // non-integer factors, up on one axis and down on the other
            let x = random_input(&[1, 3, 4, 7], 8);
            check_gradients("upsample_bilinear 4x7→9x5", vec![x], |t, v| {
                upsample_bilinear(t, &v[0], 9, 5, a)
            })
            .unwrap();
        }
    }

    #[test]
    fn errors_name_the_op() {
        let x = random_input(&[2, 3, 4], 1);
        let e = upsample_bilinear_forward(&x, 8, 8, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(OP) && e.contains("rank 4"), "{e}");
        let x = random_input(&[1, 1, 4, 4], 1);
        let e = upsample_bilinear_forward(&x, 0, 8, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(OP) && e.contains("0x8"), "{e}");
    }
}
