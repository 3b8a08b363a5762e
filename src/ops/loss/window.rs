//! An optional extra count loss on sub-windows (not in the paper): the coarse map of each image
//! is cut into a g x g grid of equal windows and each window's Σ|z| is held to the cells in it,
//! the window's sum of the ground-truth density (so the windows' targets add up to the image's
//! count target, mosaic crops with cut cells included),
//!     L_win = (1/N) Σ_n Σ_windows | Σ_{window}|z_n| − y_{n,window} |.
//! Still counts only, no positions finer than a window; it makes the map's mass sit in the right
//! window, which is what a count over overlapping tiles of a large image relies on.
//!
//! Composed from taped ops that already have CPU and CUDA forms and gradients (abs, a conv with
//! a constant all-ones kernel as the window sum, add, sum, scale), so it needs no kernel of its
//! own and runs on either device.
use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::conv2d::{conv2d, conv2d_forward, Conv2dArgs};
use crate::ops::elementwise::{abs, add, scale, scale_tensor, sum};
use crate::tensor::Tensor;

const OP: &str = "window_count_l1_loss";

/// Window side in pixels of a [N, 1, h, w] map cut into `grid` x `grid` windows.
fn window_side(dims: &[usize], grid: usize) -> Result<usize> {
    let [_, c, h, w] = dims else {
        return Err(Error::shape(
            OP,
            format!("map must be [N, 1, h, w], got {dims:?}"),
        ));
    };
    if *c != 1 || grid == 0 || h != w || !h.is_multiple_of(grid) {
        return Err(Error::shape(
            OP,
            format!("map {dims:?} cannot be cut into a {grid}x{grid} grid of equal square windows"),
        ));
    }
    Ok(h / grid)
}

/// Sums of `map` [N, 1, H, W] over a `grid` x `grid` grid of equal square windows, [N, 1, grid,
/// grid], on the map's device (the window loss's targets, from the density map).
pub fn window_sums(map: &Tensor, grid: usize) -> Result<Tensor> {
    let side = window_side(map.dims(), grid)?;
    conv2d_forward(map, &ones(side, &map.device())?, None, window_args(side))
}

/// An all-ones [1, 1, side, side] kernel: a strided conv with it sums each window.
fn ones(side: usize, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(vec![1.0; side * side], &[1, 1, side, side])?.into_device(device)
}

fn window_args(side: usize) -> Conv2dArgs {
    Conv2dArgs {
        stride: side,
        padding: 0,
    }
}

/// L_win for z [N, 1, h, w] (square, h divisible by `grid`) against `targets` [N, 1, grid,
/// grid], as a scalar `[]` Var on z's device.
pub fn window_count_l1_loss(tape: &Tape, z: &Var, grid: usize, targets: &Tensor) -> Result<Var> {
    let side = window_side(z.dims(), grid)?;
    let n = z.dims()[0];
    if targets.dims() != [n, 1, grid, grid] {
        return Err(Error::shape(
            OP,
            format!(
                "targets {} for z {:?} cut into {grid}x{grid} windows",
                targets.shape(),
                z.dims()
            ),
        ));
    }
    let device = z.value().device();
    let sums = conv2d(
        tape,
        &abs(tape, z)?,
        &Var::constant(ones(side, &device)?),
        None,
        window_args(side),
    )?;
    let minus_targets = Var::constant(scale_tensor(targets, -1.0)?.into_device(&device)?);
    let err = abs(tape, &add(tape, &sums, &minus_targets)?)?;
    scale(tape, &sum(tape, &err)?, 1.0 / n as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::abs_tensor;
    use crate::ops::gradcheck::{check_gradients, random_input};
    use crate::ops::loss::{count_l1_loss, per_image_counts};

    /// A 4x4 map of 0..16 in 2x2 windows: [0+1+4+5, 2+3+6+7, 8+9+12+13, 10+11+14+15].
    #[test]
    fn window_sums_add_each_window() {
        let m = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[1, 1, 4, 4]).unwrap();
        assert_eq!(
            window_sums(&m, 2).unwrap().to_vec(),
            vec![10., 18., 42., 50.]
        );
        assert_eq!(window_sums(&m, 1).unwrap().to_vec(), vec![120.]);
        let e = window_sums(&m, 3).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("3x3"), "{e}");
        assert!(window_sums(&m, 0).is_err());
    }

    /// z 1x1x4x4 with |z| = 1 everywhere: each 2x2 window sums to 4; targets [4, 5, 1, 4] give
    /// (0 + 1 + 3 + 0)/1 = 4.
    #[test]
    fn golden_window_loss() {
        let z = Tensor::from_vec(
            (0..16)
                .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
                .collect(),
            &[1, 1, 4, 4],
        )
        .unwrap();
        let y = Tensor::from_vec(vec![4., 5., 1., 4.], &[1, 1, 2, 2]).unwrap();
        let tape = Tape::new();
        let l = window_count_l1_loss(&tape, &tape.leaf(z), 2, &y).unwrap();
        assert_eq!(l.value().item().unwrap(), 4.0);
    }

    /// With one window the loss is Eq. 1's count loss.
    #[test]
    fn one_window_is_the_count_loss() {
        let z = random_input(&[3, 1, 4, 4], 7);
        let sums = per_image_counts(&z).unwrap();
        let counts = [sums[0] + 1.0, sums[1] - 2.0, sums[2] + 0.25];
        let y = Tensor::from_vec(counts.to_vec(), &[3, 1, 1, 1]).unwrap();
        let t = Tape::inference();
        let a = window_count_l1_loss(&t, &Var::constant(z.clone()), 1, &y).unwrap();
        let b = count_l1_loss(&t, &Var::constant(z), &counts).unwrap();
        let (a, b) = (a.value().item().unwrap(), b.value().item().unwrap());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    #[test]
    fn gradcheck_window_count_l1_loss() {
        let mut z = random_input(&[2, 1, 6, 6], 51);
        for v in z.as_cpu_mut().unwrap() {
            if v.abs() < 0.05 {
                *v += 0.1; // keep probes off the kink of |z|
            }
        }
        // targets well away from the window sums, on both sides
        let sums = window_sums(&abs_tensor(&z).unwrap(), 3).unwrap().to_vec();
        let y: Vec<f32> = sums
            .iter()
            .enumerate()
            .map(|(i, s)| if i % 2 == 0 { s + 1.5 } else { s - 1.5 })
            .collect();
        let y = Tensor::from_vec(y, &[2, 1, 3, 3]).unwrap();
        check_gradients(OP, vec![z], |tape, v| {
            window_count_l1_loss(tape, &v[0], 3, &y)
        })
        .unwrap();
    }

    #[test]
    fn errors_name_the_op_and_shapes() {
        let t = Tape::inference();
        let z = Var::constant(random_input(&[2, 1, 6, 4], 1));
        let y = Tensor::from_vec(vec![0.0; 8], &[2, 1, 2, 2]).unwrap();
        let e = window_count_l1_loss(&t, &z, 2, &y).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("[2, 1, 6, 4]"), "{e}");
        let z = Var::constant(random_input(&[2, 1, 6, 6], 1));
        let e = window_count_l1_loss(&t, &z, 3, &y).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("targets"), "{e}");
    }
}
