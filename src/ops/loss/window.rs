//! An optional extra count loss on sub-windows (not in the paper): the coarse map of each image
//! is cut into a g x g grid of equal windows and each window's Σ|z| is held to the number of
//! annotated cells in it,
//!     L_win = (1/N) Σ_n Σ_windows | Σ_{window}|z_n| − y_{n,window} |.
//! Still counts only, no positions finer than a window; it makes the map's mass sit in the right
//! window, which is what a count over overlapping tiles of a large image relies on.
//!
//! Composed from taped ops that already have CPU and CUDA forms and gradients (abs, a conv with
//! a constant all-ones kernel as the window sum, add, sum, scale), so it needs no kernel of its
//! own and runs on either device.
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::conv2d::{conv2d, Conv2dArgs};
use crate::ops::elementwise::{abs, add, scale, scale_tensor, sum};
use crate::tensor::Tensor;

const OP: &str = "window_count_l1_loss";

/// Window side in coarse pixels for a [N, 1, h, w] map cut into `grid` x `grid` windows.
fn window_side(dims: &[usize], grid: usize) -> Result<usize> {
    let [_, c, h, w] = dims else {
        return Err(Error::shape(
            OP,
            format!("z must be [N, 1, h, w], got {dims:?}"),
        ));
    };
    if *c != 1 || grid == 0 || h != w || !h.is_multiple_of(grid) {
        return Err(Error::shape(
            OP,
            format!("z {dims:?} cannot be cut into a {grid}x{grid} grid of equal square windows"),
        ));
    }
    Ok(h / grid)
}

/// Cells per window, [N, 1, grid, grid] row-major, from each image's points (pixel
/// coordinates, pixel k spanning [k, k+1)) in images of `width` x `height` pixels.
pub fn window_counts(
    points: &[Vec<(f32, f32)>],
    width: usize,
    height: usize,
    grid: usize,
) -> Result<Tensor> {
    let mut out = vec![0f32; points.len() * grid * grid];
    let cell =
        |v: f32, len: usize| ((v.max(0.0) * grid as f32 / len as f32) as usize).min(grid - 1);
    for (n, pts) in points.iter().enumerate() {
        for &(x, y) in pts {
            out[n * grid * grid + cell(y, height) * grid + cell(x, width)] += 1.0;
        }
    }
    Tensor::from_vec(out, &[points.len(), 1, grid, grid])
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
    let ones =
        Tensor::from_vec(vec![1.0; side * side], &[1, 1, side, side])?.into_device(&device)?;
    let window_sums = conv2d(
        tape,
        &abs(tape, z)?,
        &Var::constant(ones),
        None,
        Conv2dArgs {
            stride: side,
            padding: 0,
        },
    )?;
    let minus_targets = Var::constant(scale_tensor(targets, -1.0)?.into_device(&device)?);
    let err = abs(tape, &add(tape, &window_sums, &minus_targets)?)?;
    scale(tape, &sum(tape, &err)?, 1.0 / n as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};
    use crate::ops::loss::{count_l1_loss, per_image_counts};

    #[test]
    fn points_fall_in_their_window() {
        let pts = vec![
            vec![(0.0, 0.0), (127.9, 10.0), (128.0, 10.0), (255.5, 255.9)],
            vec![],
        ];
        let t = window_counts(&pts, 256, 256, 2).unwrap();
        assert_eq!(t.dims(), &[2, 1, 2, 2]);
        assert_eq!(t.to_vec(), vec![2., 1., 0., 1., 0., 0., 0., 0.]);
        // a non-square image: windows follow each axis's own length
        let t = window_counts(&[vec![(299.0, 99.0)]], 300, 100, 3).unwrap();
        assert_eq!(t.to_vec()[8], 1.0);
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
        let t = Tape::inference();
        let sums = conv2d(
            &t,
            &abs(&t, &Var::constant(z.clone())).unwrap(),
            &Var::constant(Tensor::from_vec(vec![1.0; 4], &[1, 1, 2, 2]).unwrap()),
            None,
            Conv2dArgs {
                stride: 2,
                padding: 0,
            },
        )
        .unwrap()
        .value()
        .to_vec();
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
