//! Max pooling, 2x2 window, stride 2, floor (an odd trailing row/column is dropped), as
//! PyTorch's `F.max_pool2d(x, 2)`. The forward records, per output element, the flat index of
//! its argmax within the (n, c) input plane; the backward scatters dy there, so the tape keeps
//! only the indices and the input dims, not the input. On a CPU with AVX2 or AVX-512 the
//! vectorised `cpu_fast.rs` runs, checked against the reference loops of cpu.rs.
mod cpu;
mod cpu_fast;
pub mod cuda;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::{GpuBuffer, KernelParam};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

const OP: &str = "max_pool2d";

/// One pooling's sizes: `planes` = N·C input planes of `h`×`w`, outputs of `oh`×`ow` =
/// (h/2)×(w/2). Used by the CPU reference, the launcher and, `#[repr(C)]`, as the kernel's
/// parameter struct (kernels/max_pool2d.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dGeometry {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
}
// Safety: five u32, as `struct MaxPool2dGeometry` in the kernel.
unsafe impl KernelParam for MaxPool2dGeometry {}
const _: () = assert!(std::mem::size_of::<MaxPool2dGeometry>() == 20);

impl MaxPool2dGeometry {
    /// Checks an input shape [N, C, H, W] with H, W ≥ 2 whose sizes and plane indices fit
    /// u32 (floor semantics: odd sizes drop the last row/column; an empty output is refused,
    /// as PyTorch does).
    pub fn new(what: &str, dims: &[usize]) -> Result<Self> {
        let [n, c, h, w] = dims else {
            return Err(Error::shape(
                OP,
                format!("{what} must have rank 4 [N, C, H, W], got {dims:?}"),
            ));
        };
        if *h < 2 || *w < 2 {
            return Err(Error::shape(
                OP,
                format!("{what} {dims:?}: a 2x2 window needs H and W of at least 2"),
            ));
        }
        let too_large = || Error::shape(OP, format!("{what} {dims:?}: too large for u32 indices"));
        let planes = n.checked_mul(*c).ok_or_else(too_large)?;
        let plane = h.checked_mul(*w).ok_or_else(too_large)?;
        planes.checked_mul(plane).ok_or_else(too_large)?;
        let u = |v: usize| u32::try_from(v).map_err(|_| too_large());
        u(plane)?;
        Ok(MaxPool2dGeometry {
            planes: u(planes)?,
            h: u(*h)?,
            w: u(*w)?,
            oh: u(h / 2)?,
            ow: u(w / 2)?,
        })
    }
    pub fn in_plane(&self) -> usize {
        self.h as usize * self.w as usize
    }
    pub fn out_plane(&self) -> usize {
        self.oh as usize * self.ow as usize
    }
    pub fn in_len(&self) -> usize {
        self.planes as usize * self.in_plane()
    }
    pub fn out_len(&self) -> usize {
        self.planes as usize * self.out_plane()
    }
}

/// Argmax indices on the device that computed them.
#[derive(Clone, Debug)]
pub enum PoolIndexStorage {
    Cpu(Vec<u32>),
    Cuda(GpuBuffer<u32>),
}

/// Per output element of [N, C, H/2, W/2], the flat index (row·W + col) of the maximum within
/// its (n, c) input plane, plus the input dims it refers to.
#[derive(Clone, Debug)]
pub struct PoolIndices {
    in_dims: [usize; 4],
    storage: PoolIndexStorage,
}

impl PoolIndices {
    pub fn in_dims(&self) -> [usize; 4] {
        self.in_dims
    }
    pub fn out_dims(&self) -> [usize; 4] {
        let [n, c, h, w] = self.in_dims;
        [n, c, h / 2, w / 2]
    }
    pub fn storage(&self) -> &PoolIndexStorage {
        &self.storage
    }
    /// The indices on the host (for tests and parity checks).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        match &self.storage {
            PoolIndexStorage::Cpu(v) => Ok(v.clone()),
            PoolIndexStorage::Cuda(b) => b.to_host(),
        }
    }

    fn device_name(&self) -> String {
        match &self.storage {
            PoolIndexStorage::Cpu(_) => "cpu".into(),
            PoolIndexStorage::Cuda(b) => format!("cuda:{}", b.device().ordinal()),
        }
    }
}

fn dims4(d: &[usize]) -> [usize; 4] {
    [d[0], d[1], d[2], d[3]]
}

pub fn max_pool2d_forward(x: &Tensor) -> Result<(Tensor, PoolIndices)> {
    let g = MaxPool2dGeometry::new("input x", x.dims())?;
    let (y, idx) = match x.storage() {
        Storage::Cpu(xs) => {
            let (y, idx) = cpu::forward(xs, &g);
            (Storage::Cpu(y), PoolIndexStorage::Cpu(idx))
        }
        Storage::Cuda(xs) => {
            let (y, idx) = cuda::forward(xs.device(), xs, &g)?;
            (Storage::Cuda(y), PoolIndexStorage::Cuda(idx))
        }
    };
    let idx = PoolIndices {
        in_dims: dims4(x.dims()),
        storage: idx,
    };
    Ok((Tensor::from_storage(y, &idx.out_dims()), idx))
}

/// dx [in_dims] from dy [N, C, H/2, W/2] and the forward's indices.
pub fn max_pool2d_backward(dy: &Tensor, idx: &PoolIndices, in_dims: &[usize]) -> Result<Tensor> {
    let g = MaxPool2dGeometry::new("in_dims", in_dims)?;
    if in_dims != idx.in_dims {
        return Err(Error::shape(
            OP,
            format!(
                "in_dims {in_dims:?} differ from the indices' input {:?}",
                idx.in_dims
            ),
        ));
    }
    let out = idx.out_dims();
    if dy.dims() != out {
        return Err(Error::shape(
            OP,
            format!(
                "output gradient dy is {} but the output is {out:?}",
                dy.shape()
            ),
        ));
    }
    let dx = match (dy.storage(), &idx.storage) {
        (Storage::Cpu(dys), PoolIndexStorage::Cpu(ix)) => Storage::Cpu(cpu::backward(dys, ix, &g)),
        (Storage::Cuda(dys), PoolIndexStorage::Cuda(ix))
            if dys.device().ordinal() == ix.device().ordinal() =>
        {
            Storage::Cuda(cuda::backward(dys.device(), dys, ix, &g)?)
        }
        _ => {
            return Err(Error::DeviceMismatch {
                op: OP,
                a: dy.device().name(),
                b: format!("the indices on {}", idx.device_name()),
            })
        }
    };
    Ok(Tensor::from_storage(dx, in_dims))
}

struct MaxPool2dBackward {
    idx: PoolIndices,
}

impl Backward for MaxPool2dBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(max_pool2d_backward(
            dy,
            &self.idx,
            &self.idx.in_dims,
        )?)])
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn max_pool2d(tape: &Tape, x: &Var) -> Result<Var> {
    let (y, idx) = tape.timed(OP, || max_pool2d_forward(x.value()))?;
    Ok(tape.record(y, &[x], MaxPool2dBackward { idx }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::check_gradients;
    use crate::rng::Rng;

    /// Distinct values 0.05 apart in random order: no ties, and a finite-difference step of
    /// 1e-3 never changes which element is the maximum.
    fn tie_free(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
        Rng::new(seed).shuffle(&mut v);
        Tensor::from_vec(v, dims).unwrap()
    }

    /// The fast path (each instruction set this CPU has) against the reference loops: odd
    /// sizes, ties, NaNs (the reference's rule: a later value wins if strictly greater or NaN).
    #[test]
    fn fast_path_matches_reference_loops() {
        use crate::device::cpu::simd::Isa;
        for isa in [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
        {
            for dims in [
                [2, 3, 7, 9],
                [1, 2, 16, 33],
                [1, 1, 2, 2],
                [1, 2, 5, 71],
                [2, 1, 4, 64],
            ] {
                let g = MaxPool2dGeometry::new("x", &dims).unwrap();
                let mut x: Vec<f32> = tie_free(&dims, 5).to_vec();
                for (i, v) in x.iter_mut().enumerate() {
                    match i % 11 {
                        3 => *v = f32::NAN,
                        5 => *v = 0.25, // ties
                        _ => {}
                    }
                }
                let (y, idx) = cpu::forward_reference(&x, &g);
                let (yf, idxf) = cpu_fast::forward(&x, &g, isa);
                assert_eq!(idxf, idx, "{isa:?} {dims:?}");
                let same = y
                    .iter()
                    .zip(&yf)
                    .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(same, "{isa:?} {dims:?}");
                let dy: Vec<f32> = (0..g.out_len()).map(|i| i as f32 - 3.5).collect();
                let want = cpu::backward_reference(&dy, &idx, &g);
                assert_eq!(cpu_fast::backward(&dy, &idx, &g, isa), want);
            }
        }
    }

    #[test]
    fn hand_case_with_odd_size_ties_and_nan() {
        // One 3x5 plane: the last row and column are dropped (floor), giving a 1x2 output.
        #[rustfmt::skip]
        let x = Tensor::from_vec(vec![
            1., 7., 3., 3., 99.,
            5., 2., 3., 3., 99.,
            99., 99., 99., 99., 99.,
        ], &[1, 1, 3, 5]).unwrap();
        let (y, idx) = max_pool2d_forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 1, 2]);
        assert_eq!(y.to_vec(), vec![7., 3.]);
        // the 7 sits at (0, 1); the second window is all 3s: the first in scan order wins.
        assert_eq!(idx.to_vec().unwrap(), vec![1, 2]);
        let dy = Tensor::from_vec(vec![10., 20.], &[1, 1, 1, 2]).unwrap();
        let dx = max_pool2d_backward(&dy, &idx, &[1, 1, 3, 5]).unwrap();
        let mut want = vec![0.0; 15];
        want[1] = 10.;
        want[2] = 20.;
        assert_eq!(dx.to_vec(), want);

        let x = Tensor::from_vec(vec![1., f32::NAN, 2., 3.], &[1, 1, 2, 2]).unwrap();
        let (y, idx) = max_pool2d_forward(&x).unwrap();
        assert!(y.to_vec()[0].is_nan());
        assert_eq!(idx.to_vec().unwrap(), vec![1]);
    }

    #[test]
    fn planes_are_independent() {
        // Two images x two channels of 4x4: each output and index refers to its own plane.
        let x = tie_free(&[2, 2, 4, 4], 5);
        let xs = x.to_vec();
        let (y, idx) = max_pool2d_forward(&x).unwrap();
        let (ys, ix) = (y.to_vec(), idx.to_vec().unwrap());
        for p in 0..4 {
            for o in 0..4 {
                let (i, j) = (o / 2, o % 2);
                let win = [0, 1, 4, 5].map(|d| 2 * i * 4 + 2 * j + d);
                let best = *win
                    .iter()
                    .max_by(|&&a, &&b| xs[p * 16 + a].total_cmp(&xs[p * 16 + b]))
                    .unwrap();
                assert_eq!(ix[p * 4 + o] as usize, best);
                assert_eq!(ys[p * 4 + o], xs[p * 16 + best]);
            }
        }
    }

    #[test]
    fn gradcheck_max_pool2d() {
        for (k, dims) in [[2, 3, 4, 6], [1, 2, 5, 7], [2, 1, 3, 2]]
            .iter()
            .enumerate()
        {
            let x = tie_free(dims, 40 + k as u64);
            check_gradients(&format!("max_pool2d {dims:?}"), vec![x], |t, v| {
                max_pool2d(t, &v[0])
            })
            .unwrap();
        }
    }

    #[test]
    fn geometry_floors_and_refuses_what_u32_cannot_hold() {
        let g = MaxPool2dGeometry::new("x", &[3, 5, 7, 4]).unwrap();
        assert_eq!((g.planes, g.h, g.w, g.oh, g.ow), (15, 7, 4, 3, 2));
        assert_eq!((g.in_len(), g.out_len()), (15 * 28, 15 * 6));
        assert!(MaxPool2dGeometry::new("x", &[usize::MAX, 2, 2, 2]).is_err());
        assert!(MaxPool2dGeometry::new("x", &[1, 1, 1 << 17, 1 << 16]).is_err());
    }

    #[test]
    fn shape_errors_name_max_pool2d() {
        let e = max_pool2d_forward(&tie_free(&[2, 4, 4], 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_pool2d") && e.contains("rank 4"), "{e}");
        let e = max_pool2d_forward(&tie_free(&[1, 1, 1, 4], 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_pool2d") && e.contains("at least 2"), "{e}");
        let (_, idx) = max_pool2d_forward(&tie_free(&[1, 2, 4, 4], 1)).unwrap();
        let dy = tie_free(&[1, 2, 2, 3], 2);
        let e = max_pool2d_backward(&dy, &idx, &[1, 2, 4, 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_pool2d") && e.contains("dy"), "{e}");
        let dy = tie_free(&[1, 2, 2, 2], 2);
        let e = max_pool2d_backward(&dy, &idx, &[1, 2, 4, 5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_pool2d") && e.contains("in_dims"), "{e}");
    }
}
