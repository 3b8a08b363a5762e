//! Concatenation along dim 1 (channels) of NCHW tensors with equal N, H, W: the UNet decoder's
//! `cat([skip, upsampled])`. The backward splits dy into the inputs' channel ranges.
mod cpu;
pub mod cuda;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::{GpuBuffer, KernelParam};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, expect_rank, same_device, Storage, Tensor};

const OP: &str = "concat_channels";

/// Where one input sits in the concatenation: per image it is `part` = C_t·H·W contiguous
/// floats inside the image's `whole` = ΣC·H·W, starting at `offset`. Used by the CPU reference,
/// the launcher and, `#[repr(C)]`, as the kernel's parameter struct (kernels/concat.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatPart {
    pub images: u64,
    pub part: u64,
    pub whole: u64,
    pub offset: u64,
}
// Safety: four u64, as `struct ConcatPart` in the kernel.
unsafe impl KernelParam for ConcatPart {}
const _: () = assert!(std::mem::size_of::<ConcatPart>() == 32);

impl ConcatPart {
    /// Floats of this input (all images).
    pub fn len(&self) -> usize {
        (self.images * self.part) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Floats of the whole concatenation (all images).
    pub fn whole_len(&self) -> usize {
        (self.images * self.whole) as usize
    }
}

/// The placement of each input of `chans` channels, for `n` images of `hw` pixels.
pub fn concat_parts(n: usize, chans: &[usize], hw: usize) -> Result<Vec<ConcatPart>> {
    if chans.is_empty() {
        return Err(Error::shape(OP, "needs at least one input"));
    }
    let too_large = || Error::shape(OP, format!("{n} images of {chans:?} x {hw} overflow"));
    let total_c = chans
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(too_large)?;
    let whole = total_c.checked_mul(hw).ok_or_else(too_large)?;
    whole.checked_mul(n).ok_or_else(too_large)?;
    let mut offset = 0usize;
    Ok(chans
        .iter()
        .map(|&c| {
            let p = ConcatPart {
                images: n as u64,
                part: (c * hw) as u64,
                whole: whole as u64,
                offset: offset as u64,
            };
            offset += c * hw;
            p
        })
        .collect())
}

/// Checks the inputs; returns (N, H, W) and each input's channel count.
fn check_inputs(xs: &[&Tensor]) -> Result<((usize, usize, usize), Vec<usize>)> {
    let Some(first) = xs.first() else {
        return Err(Error::shape(OP, "needs at least one input"));
    };
    let &[n, _, h, w] = expect_rank(OP, "input 0", first, 4)? else {
        unreachable!("rank checked")
    };
    let mut chans = Vec::with_capacity(xs.len());
    for (t, x) in xs.iter().enumerate() {
        let &[xn, xc, xh, xw] = expect_rank(OP, &format!("input {t}"), x, 4)? else {
            unreachable!("rank checked")
        };
        if (xn, xh, xw) != (n, h, w) {
            return Err(Error::shape(
                OP,
                format!(
                    "input {t} {} differs from input 0 {} outside the channel dim",
                    x.shape(),
                    first.shape()
                ),
            ));
        }
        chans.push(xc);
    }
    same_device(OP, xs)?;
    Ok(((n, h, w), chans))
}

/// `[N, ΣC_t, H, W]`, inputs in order.
pub fn concat_channels_forward(xs: &[&Tensor]) -> Result<Tensor> {
    let ((n, h, w), chans) = check_inputs(xs)?;
    let parts = concat_parts(n, &chans, h * w)?;
    let dims = [n, chans.iter().sum(), h, w];
    match xs[0].storage() {
        Storage::Cpu(_) => {
            let slices = xs.iter().map(|x| x.as_cpu()).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::from_storage(cpu::forward(&slices, &parts), &dims))
        }
        Storage::Cuda(first) => {
            let bufs = xs
                .iter()
                .map(|x| x.gpu_buffer().ok_or_else(|| device_mismatch(OP, xs)))
                .collect::<Result<Vec<&GpuBuffer<f32>>>>()?;
            Ok(Tensor::from_storage(
                cuda::forward(first.device(), &bufs, &parts)?,
                &dims,
            ))
        }
    }
}

/// The gradient of each input: dy's channel ranges, in input order.
pub fn concat_channels_backward(dy: &Tensor, chans: &[usize]) -> Result<Vec<Tensor>> {
    let &[n, c, h, w] = expect_rank(OP, "gradient dy", dy, 4)? else {
        unreachable!("rank checked")
    };
    if chans.iter().sum::<usize>() != c {
        return Err(Error::shape(
            OP,
            format!(
                "gradient dy {} does not have {chans:?} channels",
                dy.shape()
            ),
        ));
    }
    let parts = concat_parts(n, chans, h * w)?;
    let grads: Vec<Storage> = match dy.storage() {
        Storage::Cpu(dys) => cpu::backward(dys, &parts)
            .into_iter()
            .map(Storage::Cpu)
            .collect(),
        Storage::Cuda(dys) => cuda::backward(dys.device(), dys, &parts)?
            .into_iter()
            .map(Storage::Cuda)
            .collect(),
    };
    Ok(grads
        .into_iter()
        .zip(chans)
        .map(|(g, &ct)| Tensor::from_storage(g, &[n, ct, h, w]))
        .collect())
}

/// Only the channel counts are needed to split dy.
struct ConcatChannelsBackward {
    chans: Vec<usize>,
}

impl Backward for ConcatChannelsBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(concat_channels_backward(dy, &self.chans)?
            .into_iter()
            .zip(needs)
            .map(|(g, &need)| need.then_some(g))
            .collect())
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn concat_channels(tape: &Tape, xs: &[&Var]) -> Result<Var> {
    let values: Vec<&Tensor> = xs.iter().map(|v| v.value()).collect();
    let y = tape.timed(OP, || concat_channels_forward(&values))?;
    let chans = values.iter().map(|t| t.dims()[1]).collect();
    Ok(tape.record(y, xs, ConcatChannelsBackward { chans }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    #[test]
    fn forward_interleaves_per_image() {
        // a: N=2, C=1, 1x2; b: N=2, C=2, 1x2.
        let a = Tensor::from_vec(vec![1., 2., 3., 4.], &[2, 1, 1, 2]).unwrap();
        let b = Tensor::from_vec((10..18).map(|v| v as f32).collect(), &[2, 2, 1, 2]).unwrap();
        let y = concat_channels_forward(&[&a, &b]).unwrap();
        assert_eq!(y.dims(), &[2, 3, 1, 2]);
        assert_eq!(
            y.to_vec(),
            vec![1., 2., 10., 11., 12., 13., 3., 4., 14., 15., 16., 17.]
        );
        let parts = concat_channels_backward(&y, &[1, 2]).unwrap();
        assert_eq!(parts[0].to_vec(), a.to_vec());
        assert_eq!(parts[1].to_vec(), b.to_vec());
    }

    #[test]
    fn gradcheck_concat() {
        let a = random_input(&[2, 3, 2, 3], 1);
        let b = random_input(&[2, 1, 2, 3], 2);
        let c = random_input(&[2, 2, 2, 3], 3);
        check_gradients("concat_channels", vec![a, b, c], |t, v| {
            concat_channels(t, &[&v[0], &v[1], &v[2]])
        })
        .unwrap();
    }

    /// Only the inputs that need a gradient get one (a constant skip, a recorded branch).
    #[test]
    fn constant_inputs_get_no_gradient() {
        let tape = Tape::new();
        let a = Var::constant(random_input(&[1, 2, 2, 2], 1));
        let b = tape.leaf(random_input(&[1, 1, 2, 2], 2));
        let y = concat_channels(&tape, &[&a, &b]).unwrap();
        let loss = crate::ops::elementwise::sum(&tape, &y).unwrap();
        let g = tape.backward(&loss).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g.get(&b).unwrap().to_vec(), vec![1.0; 4]);
    }

    #[test]
    fn errors_name_the_op() {
        let e = concat_channels_forward(&[]).unwrap_err().to_string();
        assert!(e.contains(OP), "{e}");
        let a = random_input(&[2, 3, 4, 5], 1);
        let b = random_input(&[2, 3, 4, 6], 2);
        let e = concat_channels_forward(&[&a, &b]).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("input 1"), "{e}");
        let b = random_input(&[2, 3, 4], 2);
        let e = concat_channels_forward(&[&a, &b]).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("rank 4"), "{e}");
    }
}
