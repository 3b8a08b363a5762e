//! GMP sampling on the GPU (kernels/gmp.cu): the mean over K bilinear samples of DESIGN §1, in
//! three versions kept side by side (llm.c style) and selectable per call:
//! `naive` (one thread per output element), `unfused` (a kernel per stage through
//! `[N, K, C, H, W]` intermediates) and `fused` (one kernel each way, taps computed once per
//! position and channel group). All three compute the same function; the offsets' conv1x1 and
//! the residual belong to the layer.
use std::str::FromStr;

use cudarc::driver::LaunchConfig;

use crate::device::cuda::{
    check_len, dim_u32, launch, numel, CudaDevice, GpuBuffer, Kernel, KernelFile, KernelParam,
};
use crate::error::{Error, Result};

const FILE: &str = "gmp.cu";
const NAIVE_FWD: Kernel = Kernel::new(FILE, "gmp_naive_fwd_f32");
const NAIVE_BWD_DX: Kernel = Kernel::new(FILE, "gmp_naive_bwd_dx_f32");
const NAIVE_BWD_DOFF: Kernel = Kernel::new(FILE, "gmp_naive_bwd_doff_f32");
const UNF_COORDS: Kernel = Kernel::new(FILE, "gmp_unf_coords_f32");
const UNF_SAMPLE: Kernel = Kernel::new(FILE, "gmp_unf_sample_f32");
const UNF_MEAN: Kernel = Kernel::new(FILE, "gmp_unf_mean_f32");
const UNF_BWD_SAMPLE: Kernel = Kernel::new(FILE, "gmp_unf_bwd_sample_f32");
const UNF_BWD_REDUCE: Kernel = Kernel::new(FILE, "gmp_unf_bwd_reduce_f32");
const FUSED_FWD: Kernel = Kernel::new(FILE, "gmp_fused_fwd_f32");
const FUSED_BWD: Kernel = Kernel::new(FILE, "gmp_fused_bwd_f32");
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        NAIVE_FWD,
        NAIVE_BWD_DX,
        NAIVE_BWD_DOFF,
        UNF_COORDS,
        UNF_SAMPLE,
        UNF_MEAN,
        UNF_BWD_SAMPLE,
        UNF_BWD_REDUCE,
        FUSED_FWD,
        FUSED_BWD,
    ],
);

/// Largest K the fused kernels keep in registers (`GMP_FUSED_MAX_K` in kernels/gmp.cu).
pub const FUSED_MAX_K: usize = 16;

/// Which implementation runs (`--gmp-kernel naive|unfused|fused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum GmpKernel {
    Naive,
    Unfused,
    #[default]
    Fused,
}

impl GmpKernel {
    pub const ALL: [GmpKernel; 3] = [GmpKernel::Naive, GmpKernel::Unfused, GmpKernel::Fused];
    pub fn name(&self) -> &'static str {
        match self {
            GmpKernel::Naive => "naive",
            GmpKernel::Unfused => "unfused",
            GmpKernel::Fused => "fused",
        }
    }
}

impl FromStr for GmpKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "naive" => Ok(GmpKernel::Naive),
            "unfused" => Ok(GmpKernel::Unfused),
            "fused" => Ok(GmpKernel::Fused),
            other => Err(Error::Invalid(format!(
                "unknown GMP kernel '{other}' (expected naive, unfused or fused)"
            ))),
        }
    }
}

/// Mirrors `struct GmpParams` in kernels/gmp.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmpParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub c_per_group: u32,
}
// Safety: six u32, as `struct GmpParams` in the kernel.
unsafe impl KernelParam for GmpParams {}
const _: () = assert!(std::mem::size_of::<GmpParams>() == 24);

/// x `[n, c, h, w]`, offsets `[n, 2k, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmpShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

const OP: &str = "gmp_sample (cuda)";

impl GmpShape {
    fn params(&self, c_per_group: u32) -> Result<GmpParams> {
        if self.k == 0 {
            return Err(Error::shape(OP, "K = 0 sampling points"));
        }
        // The kernels index inside a plane with int.
        if numel(OP, &[self.h, self.w])? > i32::MAX as usize / 2 {
            return Err(Error::shape(
                OP,
                format!("plane {}x{} too large", self.h, self.w),
            ));
        }
        numel(
            OP,
            &[self.n, self.k.max(self.c), self.c.max(1), self.h, self.w],
        )?;
        Ok(GmpParams {
            n: dim_u32(OP, "N", self.n)?,
            c: dim_u32(OP, "C", self.c)?,
            h: dim_u32(OP, "H", self.h)?,
            w: dim_u32(OP, "W", self.w)?,
            k: dim_u32(OP, "K", self.k)?,
            c_per_group,
        })
    }
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn off_len(&self) -> usize {
        self.n * 2 * self.k * self.h * self.w
    }
    fn positions(&self) -> usize {
        self.n * self.h * self.w
    }
    fn check(&self, x: &GpuBuffer<f32>, offsets: &GpuBuffer<f32>) -> Result<()> {
        check_len(OP, "x", x, self.x_len())?;
        check_len(OP, "offsets", offsets, self.off_len())
    }
}

/// Channel groups of the fused kernels: enough (position, group) threads to fill the GPU about
/// once, at least 4 channels per thread so the taps are reused. Returns (groups, channels per
/// group), groups·per_group ≥ c.
pub fn fused_channel_groups(positions: usize, c: usize, sm_count: u32) -> (u32, u32) {
    let c = c.max(1);
    let target = sm_count.max(1) as usize * 2048;
    let want = target.div_ceil(positions.max(1));
    let groups = want.clamp(1, c.div_ceil(4).clamp(1, 65_535));
    let per = c.div_ceil(groups);
    (c.div_ceil(per) as u32, per as u32)
}

fn fused_cfg(dev: &CudaDevice, positions: usize, groups: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            launch::grid_size(positions as u64, dev.max_blocks()),
            groups,
            1,
        ),
        block_dim: (launch::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch over `n` elements (a zero count just runs an empty loop).
fn grid(dev: &CudaDevice, n: usize) -> LaunchConfig {
    launch::blocks(launch::grid_size(n as u64, dev.max_blocks()))
}

fn check_fused_k(s: &GmpShape) -> Result<()> {
    if s.k > FUSED_MAX_K {
        return Err(Error::shape(
            OP,
            format!(
                "the fused kernel supports K <= {FUSED_MAX_K}, got {}; use --gmp-kernel naive or unfused",
                s.k
            ),
        ));
    }
    Ok(())
}

/// a `[n, c, h, w]` = mean over K bilinear samples of x at (j + u_k, i + v_k).
pub fn forward(
    dev: &CudaDevice,
    version: GmpKernel,
    x: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    s: &GmpShape,
) -> Result<GpuBuffer<f32>> {
    let p = s.params(s.c.max(1) as u32)?;
    s.check(x, offsets)?;
    let mut a = dev.alloc::<f32>(s.x_len())?;
    if s.x_len() == 0 {
        return Ok(a);
    }
    match version {
        GmpKernel::Naive => {
            let cfg = grid(dev, s.x_len());
            dev.launch(NAIVE_FWD)
                .arg(&p)
                .buf(x)
                .buf(offsets)
                .out(&mut a)
                .run(Some(cfg))?;
        }
        GmpKernel::Unfused => {
            let taps = s.n * s.k * s.h * s.w;
            let mut tidx = dev.alloc::<i32>(taps * 4)?;
            let mut tw = dev.alloc::<f32>(taps * 4)?;
            let null: u64 = 0; // no derivative tables in the forward
            let cfg = grid(dev, taps);
            dev.launch(UNF_COORDS)
                .arg(&p)
                .buf(offsets)
                .out(&mut tidx)
                .out(&mut tw)
                .arg(&null)
                .arg(&null)
                .run(Some(cfg))?;
            let samples = taps * s.c;
            let mut sbuf = dev.alloc::<f32>(samples)?;
            let cfg = grid(dev, samples);
            dev.launch(UNF_SAMPLE)
                .arg(&p)
                .buf(x)
                .buf(&tidx)
                .buf(&tw)
                .out(&mut sbuf)
                .run(Some(cfg))?;
            let cfg = grid(dev, s.x_len());
            dev.launch(UNF_MEAN)
                .arg(&p)
                .buf(&sbuf)
                .out(&mut a)
                .run(Some(cfg))?;
        }
        GmpKernel::Fused => {
            check_fused_k(s)?;
            let (groups, per) = fused_channel_groups(s.positions(), s.c, dev.info().sm_count);
            let p = GmpParams {
                c_per_group: per,
                ..p
            };
            dev.launch(FUSED_FWD)
                .arg(&p)
                .buf(x)
                .buf(offsets)
                .out(&mut a)
                .run(Some(fused_cfg(dev, s.positions(), groups)))?;
        }
    }
    Ok(a)
}

/// (dx `[n, c, h, w]`, doffsets `[n, 2k, h, w]`) from da, the gradient of the sampled mean.
pub fn backward(
    dev: &CudaDevice,
    version: GmpKernel,
    x: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    da: &GpuBuffer<f32>,
    s: &GmpShape,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    let p = s.params(s.c.max(1) as u32)?;
    s.check(x, offsets)?;
    check_len(OP, "da", da, s.x_len())?;
    let mut dx = dev.alloc_zeros::<f32>(s.x_len())?;
    let mut doff = dev.alloc_zeros::<f32>(s.off_len())?;
    if s.off_len() == 0 {
        return Ok((dx, doff));
    }
    match version {
        GmpKernel::Naive => {
            dev.launch(NAIVE_BWD_DX)
                .arg(&p)
                .buf(offsets)
                .buf(da)
                .out(&mut dx)
                .run(dev.cfg(s.x_len() as u64))?;
            let cfg = grid(dev, s.n * s.k * s.h * s.w);
            dev.launch(NAIVE_BWD_DOFF)
                .arg(&p)
                .buf(x)
                .buf(offsets)
                .buf(da)
                .out(&mut doff)
                .run(Some(cfg))?;
        }
        GmpKernel::Unfused => {
            let taps = s.n * s.k * s.h * s.w;
            let mut tidx = dev.alloc::<i32>(taps * 4)?;
            let mut tw = dev.alloc::<f32>(taps * 4)?;
            let mut tdwx = dev.alloc::<f32>(taps * 4)?;
            let mut tdwy = dev.alloc::<f32>(taps * 4)?;
            let cfg = grid(dev, taps);
            dev.launch(UNF_COORDS)
                .arg(&p)
                .buf(offsets)
                .out(&mut tidx)
                .out(&mut tw)
                .out(&mut tdwx)
                .out(&mut tdwy)
                .run(Some(cfg))?;
            let samples = taps * s.c;
            let mut gpx = dev.alloc::<f32>(samples)?;
            let mut gpy = dev.alloc::<f32>(samples)?;
            dev.launch(UNF_BWD_SAMPLE)
                .arg(&p)
                .buf(x)
                .buf(da)
                .buf(&tidx)
                .buf(&tw)
                .buf(&tdwx)
                .buf(&tdwy)
                .out(&mut dx)
                .out(&mut gpx)
                .out(&mut gpy)
                .run(dev.cfg(samples as u64))?;
            dev.launch(UNF_BWD_REDUCE)
                .arg(&p)
                .buf(&gpx)
                .buf(&gpy)
                .out(&mut doff)
                .run(Some(cfg))?;
        }
        GmpKernel::Fused => {
            check_fused_k(s)?;
            if s.c > 0 {
                let (groups, per) = fused_channel_groups(s.positions(), s.c, dev.info().sm_count);
                let p = GmpParams {
                    c_per_group: per,
                    ..p
                };
                dev.launch(FUSED_BWD)
                    .arg(&p)
                    .buf(x)
                    .buf(offsets)
                    .buf(da)
                    .out(&mut dx)
                    .out(&mut doff)
                    .run(Some(fused_cfg(dev, s.positions(), groups)))?;
            }
        }
    }
    Ok((dx, doff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_round_trip() {
        for k in GmpKernel::ALL {
            assert_eq!(k.name().parse::<GmpKernel>().unwrap(), k);
        }
        assert!("fast"
            .parse::<GmpKernel>()
            .unwrap_err()
            .to_string()
            .contains("naive"));
    }

    #[test]
    fn channel_groups_cover_all_channels() {
        for (pos, c, sms) in [
            (8 * 32 * 32, 512, 132),
            (1, 3, 132),
            (1 << 20, 512, 132),
            (7, 1, 1),
            (100, 0, 80),
            (8 * 16 * 16, 513, 128),
        ] {
            let (g, per) = fused_channel_groups(pos, c, sms);
            assert!(g >= 1 && per >= 1);
            assert!((g * per) as usize >= c.max(1), "{pos} {c}: {g}x{per}");
            assert!(
                ((g - 1) * per) < c.max(1) as u32,
                "no empty group: {pos} {c}: {g}x{per}"
            );
            assert!(per >= 4 || per as usize == c.max(1) || g == 1 || c < 4);
        }
        // paper shape on an H100: 32 groups of 16 channels
        assert_eq!(fused_channel_groups(8 * 32 * 32, 512, 132), (32, 16));
        // a big map needs no split
        assert_eq!(fused_channel_groups(1 << 20, 512, 132), (1, 512));
    }

    #[test]
    fn params_refuse_bad_shapes() {
        let s = GmpShape {
            n: 1,
            c: 2,
            h: 3,
            w: 4,
            k: 0,
        };
        assert!(s.params(1).is_err());
        let s = GmpShape {
            n: 1,
            c: 2,
            h: 1 << 16,
            w: 1 << 16,
            k: 8,
        };
        assert!(s.params(1).is_err());
        let s = GmpShape {
            n: 2,
            c: 3,
            h: 5,
            w: 7,
            k: 17,
        };
        assert!(check_fused_k(&s).unwrap_err().to_string().contains("naive"));
    }
}
