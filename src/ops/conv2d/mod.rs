//! 2-D convolution, NCHW: x [N, C, H, W] ⊛ w [O, C, kh, kw] (+ b [O]) → [N, O, OH, OW] with
//! OH = (H + 2p − kh)/s + 1 (floor), zero padding, as PyTorch's `F.conv2d` (groups = 1,
//! dilation = 1). CPU: im2col + GEMM per image (see `cpu.rs`).
pub mod cpu;
pub mod cuda;

use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, expect_rank, same_device, Storage, Tensor};

const OP: &str = "conv2d";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dArgs {
    pub stride: usize,
    pub padding: usize,
}

/// Every size a conv2d kernel needs, derived and checked once from the operand shapes (the
/// CPU loops and, later, the CUDA launchers take this instead of re-deriving it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Conv2dGeometry {
    /// Checks x [N, C, H, W] against w [O, C, kh, kw]; errors name conv2d and both shapes.
    pub fn new(x: &Tensor, w: &Tensor, args: Conv2dArgs) -> Result<Self> {
        let xd = expect_rank(OP, "input x [N, C, H, W]", x, 4)?;
        let wd = expect_rank(OP, "weight w [O, C, kh, kw]", w, 4)?;
        let (n, c, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
        let (o, wc, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
        if args.stride == 0 {
            return Err(Error::shape(OP, "stride must be at least 1"));
        }
        if wc != c {
            return Err(Error::shape(
                OP,
                format!(
                    "input x {} has {c} channels but weight w {} expects {wc}",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        if c == 0 || h == 0 || wi == 0 || o == 0 || kh == 0 || kw == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "empty dimension in input x {} or weight w {}",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        let (ph, pw) = (h + 2 * args.padding, wi + 2 * args.padding);
        if ph < kh || pw < kw {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {kh}x{kw} larger than padded input {ph}x{pw} (x {}, padding {})",
                    x.shape(),
                    args.padding
                ),
            ));
        }
        Ok(Conv2dGeometry {
            n,
            c,
            h,
            w: wi,
            o,
            kh,
            kw,
            stride: args.stride,
            pad: args.padding,
            oh: (ph - kh) / args.stride + 1,
            ow: (pw - kw) / args.stride + 1,
        })
    }

    /// Rows of the column matrix: C·kh·kw.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix: OH·OW.
    pub fn col_cols(&self) -> usize {
        self.oh * self.ow
    }

    /// 1x1, stride 1, no padding: the input plane is already the column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    pub fn out_dims(&self) -> [usize; 4] {
        [self.n, self.o, self.oh, self.ow]
    }

    /// Multiply-adds ×2 of the forward pass (the backward's dX and dW are as much again each).
    pub fn forward_flops(&self) -> u64 {
        2 * (self.n * self.o * self.col_rows() * self.col_cols()) as u64
    }

    /// The same sizes in the CUDA launchers' terms.
    pub fn cuda_shape(&self) -> cuda::Conv2dShape {
        cuda::Conv2dShape {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

fn check_bias(b: &Tensor, o: usize) -> Result<()> {
    if b.dims() != [o] {
        return Err(Error::shape(
            OP,
            format!(
                "bias b must have shape [{o}] (one per output channel), got {}",
                b.shape()
            ),
        ));
    }
    Ok(())
}

pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    let g = Conv2dGeometry::new(x, w, args)?;
    if let Some(b) = b {
        check_bias(b, g.o)?;
        same_device(OP, &[x, w, b])?;
    } else {
        same_device(OP, &[x, w])?;
    }
    let out = match (x.storage(), w.storage(), b.map(Tensor::storage)) {
        (Storage::Cpu(xs), Storage::Cpu(ws), None) => Storage::Cpu(cpu::forward(xs, ws, None, &g)),
        (Storage::Cpu(xs), Storage::Cpu(ws), Some(Storage::Cpu(bs))) => {
            Storage::Cpu(cpu::forward(xs, ws, Some(bs), &g))
        }
        (Storage::Cuda(xs), Storage::Cuda(ws), bs) => {
            let bs = match bs {
                None => None,
                Some(Storage::Cuda(b)) => Some(b),
                Some(Storage::Cpu(_)) => return Err(device_mismatch(OP, &[x, w])),
            };
            Storage::Cuda(cuda::forward(xs.device(), xs, ws, bs, &g.cuda_shape())?)
        }
        _ => return Err(device_mismatch(OP, &[x, w])),
    };
    Ok(Tensor::from_storage(out, &g.out_dims()))
}

#[derive(Debug)]
pub struct Conv2dGrads {
    pub dx: Option<Tensor>,
    pub dw: Option<Tensor>,
    pub db: Option<Tensor>,
}

/// Gradients of conv2d from the forward operands and dy [N, O, OH, OW]; only the requested
/// ones are computed (the rest are `None`).
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    args: Conv2dArgs,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> Result<Conv2dGrads> {
    let g = Conv2dGeometry::new(x, w, args)?;
    if dy.dims() != g.out_dims() {
        return Err(Error::shape(
            OP,
            format!(
                "output gradient dy is {} but the output is {:?}",
                dy.shape(),
                g.out_dims()
            ),
        ));
    }
    same_device(OP, &[x, w, dy])?;
    let grads = match (x.storage(), w.storage(), dy.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(dys)) => {
            let gr = cpu::backward(xs, ws, dys, &g, need_dx, need_dw, need_db);
            (
                gr.dx.map(Storage::Cpu),
                gr.dw.map(Storage::Cpu),
                gr.db.map(Storage::Cpu),
            )
        }
        (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(dys)) => {
            let dev = xs.device();
            let needs = cuda::ConvNeeds {
                dx: need_dx,
                dw: need_dw,
                db: need_db,
            };
            let gr = cuda::backward(dev, xs, ws, dys, &g.cuda_shape(), needs)?;
            (
                gr.dx.map(Storage::Cuda),
                gr.dw.map(Storage::Cuda),
                gr.db.map(Storage::Cuda),
            )
        }
        _ => return Err(device_mismatch(OP, &[x, w, dy])),
    };
    Ok(Conv2dGrads {
        dx: grads.0.map(|s| Tensor::from_storage(s, x.dims())),
        dw: grads.1.map(|s| Tensor::from_storage(s, w.dims())),
        db: grads.2.map(|s| Tensor::from_storage(s, &[g.o])),
    })
}

/// Saves the operands by `Arc` (shared with their producers, not copied).
struct Conv2dBackward {
    x: Arc<Tensor>,
    w: Arc<Tensor>,
    has_bias: bool,
    args: Conv2dArgs,
}

impl Backward for Conv2dBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let need_db = self.has_bias && needs.get(2).copied().unwrap_or(false);
        let g = conv2d_backward(&self.x, &self.w, dy, self.args, needs[0], needs[1], need_db)?;
        let mut out = vec![g.dx, g.dw];
        if self.has_bias {
            out.push(g.db);
        }
        Ok(out)
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn conv2d(tape: &Tape, x: &Var, w: &Var, b: Option<&Var>, args: Conv2dArgs) -> Result<Var> {
    let y = tape.timed(OP, || {
        conv2d_forward(x.value(), w.value(), b.map(Var::value), args)
    })?;
    let bw = Conv2dBackward {
        x: x.value_arc(),
        w: w.value_arc(),
        has_bias: b.is_some(),
        args,
    };
    Ok(match b {
        Some(b) => tape.record(y, &[x, w, b], bw),
        None => tape.record(y, &[x, w], bw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    /// Direct convolution, the textbook sum (independent of im2col).
    fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: Conv2dArgs) -> Vec<f32> {
        let g = Conv2dGeometry::new(x, w, a).unwrap();
        let (xs, ws) = (x.to_vec(), w.to_vec());
        let bs = b.map(|b| b.to_vec());
        let mut y = vec![0.0f32; g.n * g.o * g.oh * g.ow];
        for n in 0..g.n {
            for o in 0..g.o {
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let mut s = bs.as_ref().map_or(0.0, |b| b[o] as f64);
                        for c in 0..g.c {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                                    let iw = (ow * g.stride + kj) as isize - g.pad as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        xs[((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize];
                                    let wv = ws[((o * g.c + c) * g.kh + ki) * g.kw + kj];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * g.o + o) * g.oh + oh) * g.ow + ow] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn args(stride: usize, padding: usize) -> Conv2dArgs {
        Conv2dArgs { stride, padding }
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    // (x dims, w dims, stride, padding): 3x3 pad 1, 1x1 fast path, stride 2, H != W, odd
    // sizes that leave a trailing row unused, a kernel wider than high.
    const CONFIGS: &[([usize; 4], [usize; 4], usize, usize)] = &[
        ([2, 3, 6, 6], [4, 3, 3, 3], 1, 1),
        ([2, 5, 4, 3], [3, 5, 1, 1], 1, 0),
        ([2, 3, 7, 6], [4, 3, 3, 3], 2, 1),
        ([1, 2, 5, 8], [3, 2, 3, 3], 1, 1),
        ([2, 2, 6, 5], [2, 2, 2, 3], 2, 0),
        ([1, 3, 4, 4], [2, 3, 1, 1], 2, 1),
    ];

    #[test]
    fn forward_matches_direct_convolution() {
        for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
            let x = random_input(&xd, 100 + i as u64);
            let w = random_input(&wd, 200 + i as u64);
            let b = random_input(&[wd[0]], 300 + i as u64);
            let y = conv2d_forward(&x, &w, Some(&b), args(s, p)).unwrap();
            assert_close(
                &y.to_vec(),
                &naive_conv(&x, &w, Some(&b), args(s, p)),
                1e-5,
                "y",
            );
            let y = conv2d_forward(&x, &w, None, args(s, p)).unwrap();
            assert_close(
                &y.to_vec(),
                &naive_conv(&x, &w, None, args(s, p)),
                1e-5,
                "y",
            );
        }
    }

    #[test]
    fn forward_hand_computed() {
        // x = 1..9 as a 3x3 image.
        let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), &[1, 1, 3, 3]).unwrap();
        // 2x2 kernel [[1,2],[3,4]], bias 0.5, stride 1, no padding:
        // top-left 1·1 + 2·2 + 3·4 + 4·5 = 37, then 47, 67, 77.
        let w = Tensor::from_vec(vec![1., 2., 3., 4.], &[1, 1, 2, 2]).unwrap();
        let b = Tensor::from_vec(vec![0.5], &[1]).unwrap();
        let y = conv2d_forward(&x, &w, Some(&b), args(1, 0)).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.to_vec(), vec![37.5, 47.5, 67.5, 77.5]);
        // 3x3 box filter, padding 1, stride 2: windows centred on the corners sum the 2x2
        // corner blocks: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9.
        let w = Tensor::full(&[1, 1, 3, 3], 1.0, &crate::device::Device::Cpu);
        let y = conv2d_forward(&x, &w, None, args(2, 1)).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.to_vec(), vec![12., 16., 24., 28.]);
    }

    /// All gradient elements (not just probes) against direct loops: dX and dW are correlations
    /// of dY with W and X, db the sum of dY.
    #[test]
    fn backward_matches_direct_loops() {
        for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
            let a = args(s, p);
            let x = random_input(&xd, 400 + i as u64);
            let w = random_input(&wd, 500 + i as u64);
            let g = Conv2dGeometry::new(&x, &w, a).unwrap();
            let dy = random_input(&g.out_dims(), 600 + i as u64);
            let (xs, ws, dys) = (x.to_vec(), w.to_vec(), dy.to_vec());
            let mut dx = vec![0.0f64; xs.len()];
            let mut dw = vec![0.0f64; ws.len()];
            let mut db = vec![0.0f64; g.o];
            for n in 0..g.n {
                for o in 0..g.o {
                    for oh in 0..g.oh {
                        for ow in 0..g.ow {
                            let d = dys[((n * g.o + o) * g.oh + oh) * g.ow + ow] as f64;
                            db[o] += d;
                            for c in 0..g.c {
                                for ki in 0..g.kh {
                                    for kj in 0..g.kw {
                                        let ih = (oh * s + ki) as isize - p as isize;
                                        let iw = (ow * s + kj) as isize - p as isize;
                                        if ih < 0
                                            || iw < 0
                                            || ih >= g.h as isize
                                            || iw >= g.w as isize
                                        {
                                            continue;
                                        }
                                        let xi =
                                            ((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize;
                                        let wi = ((o * g.c + c) * g.kh + ki) * g.kw + kj;
                                        dx[xi] += d * ws[wi] as f64;
                                        dw[wi] += d * xs[xi] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
            let gr = conv2d_backward(&x, &w, &dy, a, true, true, true).unwrap();
            assert_close(&gr.dx.unwrap().to_vec(), &f(dx), 1e-4, "dx");
            assert_close(&gr.dw.unwrap().to_vec(), &f(dw), 1e-4, "dw");
            assert_close(&gr.db.unwrap().to_vec(), &f(db), 1e-4, "db");
            // Only what is asked for is computed.
            let gr = conv2d_backward(&x, &w, &dy, a, false, true, false).unwrap();
            assert!(gr.dx.is_none() && gr.db.is_none() && gr.dw.is_some());
        }
    }

    #[test]
    fn gradcheck_conv2d() {
        for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
            let a = args(s, p);
            let x = random_input(&xd, 10 + i as u64);
            let w = random_input(&wd, 20 + i as u64);
            let b = random_input(&[wd[0]], 30 + i as u64);
            check_gradients(
                &format!("conv2d {i} with bias"),
                vec![x.clone(), w.clone(), b],
                |t, v| conv2d(t, &v[0], &v[1], Some(&v[2]), a),
            )
            .unwrap();
            check_gradients(&format!("conv2d {i} no bias"), vec![x, w], |t, v| {
                conv2d(t, &v[0], &v[1], None, a)
            })
            .unwrap();
        }
    }

    /// The first conv of a network: the input is a constant, so only dW and db come back.
    #[test]
    fn constant_input_gets_no_gradient() {
        let tape = Tape::new();
        let x = Var::constant(random_input(&[1, 3, 5, 5], 1));
        let w = tape.leaf(random_input(&[2, 3, 3, 3], 2));
        let b = tape.leaf(random_input(&[2], 3));
        let y = conv2d(&tape, &x, &w, Some(&b), args(1, 1)).unwrap();
        let loss = crate::ops::elementwise::sum(&tape, &y).unwrap();
        let grads = tape.backward(&loss).unwrap();
        assert_eq!(grads.len(), 2);
        // d(Σy)/db = number of output positions per channel.
        assert_eq!(grads.get(&b).unwrap().to_vec(), vec![25.0, 25.0]);
        assert!(grads.get(&w).is_some());
    }

    #[test]
    fn shape_errors_name_conv2d() {
        let x = random_input(&[1, 3, 5, 5], 1);
        let cases: Vec<(Tensor, Tensor, Option<Tensor>, &str)> = vec![
            (x.clone(), random_input(&[2, 4, 3, 3], 2), None, "channels"),
            (
                random_input(&[3, 5, 5], 1),
                random_input(&[2, 3, 3, 3], 2),
                None,
                "rank 4",
            ),
            (x.clone(), random_input(&[2, 3, 3], 2), None, "rank 4"),
            (
                x.clone(),
                random_input(&[2, 3, 3, 3], 2),
                Some(random_input(&[3], 3)),
                "bias",
            ),
            (x.clone(), random_input(&[2, 3, 7, 7], 2), None, "larger"),
        ];
        for (x, w, b, needle) in cases {
            let e = conv2d_forward(&x, &w, b.as_ref(), args(1, 0))
                .unwrap_err()
                .to_string();
            assert!(e.contains("conv2d") && e.contains(needle), "{e}");
        }
        let w = random_input(&[2, 3, 3, 3], 2);
        let e = conv2d_forward(&x, &w, None, args(0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d") && e.contains("stride"), "{e}");
        let bad_dy = random_input(&[1, 2, 4, 4], 3);
        let e = conv2d_backward(&x, &w, &bad_dy, args(1, 0), true, true, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d") && e.contains("dy"), "{e}");
    }
}
