//! GMP sampling on the GPU (kernels/gmp.cu, kernels/gmp_cl.cu): the mean over K bilinear samples
//! of DESIGN §1, in versions kept side by side (llm.c style) and selectable per call:
//! `naive` (one thread per output element), `unfused` (a kernel per stage through
//! `[N, K, C, H, W]` intermediates), `fused` (one kernel each way, taps computed once per
//! position and channel group; `fused16` its first version) and `cl` / `cl4` (channels-last
//! with the channels on the warp, the residual folded in: `super::cl`). All compute the same
//! function. The GMP layer's op `y = x + a` ([`residual_forward`], [`residual_backward`]) runs
//! the residual inside the `cl` kernels and as a separate elementwise pass for the others; the
//! offsets' conv1x1 belongs to the layer.
use std::str::FromStr;

use cudarc::driver::LaunchConfig;

use super::{cl, GmpGeometry};
use crate::device::cuda::{check_len, launch, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};
use crate::ops::elementwise::cuda as elementwise;

const FILE: &str = "gmp.cu";
const NAIVE_FWD: Kernel = Kernel::new(FILE, "gmp_naive_fwd_f32");
const NAIVE_BWD_DX: Kernel = Kernel::new(FILE, "gmp_naive_bwd_dx_f32");
const NAIVE_BWD_DOFF: Kernel = Kernel::new(FILE, "gmp_naive_bwd_doff_f32");
const UNF_COORDS: Kernel = Kernel::new(FILE, "gmp_unf_coords_f32");
const UNF_SAMPLE: Kernel = Kernel::new(FILE, "gmp_unf_sample_f32");
const UNF_MEAN: Kernel = Kernel::new(FILE, "gmp_unf_mean_f32");
const UNF_BWD_SAMPLE: Kernel = Kernel::new(FILE, "gmp_unf_bwd_sample_f32");
const UNF_BWD_REDUCE: Kernel = Kernel::new(FILE, "gmp_unf_bwd_reduce_f32");
const FUSED4_FWD: Kernel = Kernel::new(FILE, "gmp_fused_k4_fwd_f32").min_blocks(2);
const FUSED8_FWD: Kernel = Kernel::new(FILE, "gmp_fused_k8_fwd_f32").min_blocks(2);
const FUSED_BWD: Kernel = Kernel::new(FILE, "gmp_fused_bwd_f32").min_blocks(2);
// The fused kernels hold K cells and sums per thread: 2 blocks of 256 threads per SM (at most
// 128 registers, `__launch_bounds__(256, 2)` in the source). The first version, kept as the
// baseline, fits one.
const FUSED16_FWD: Kernel = Kernel::new(FILE, "gmp_fused16_fwd_f32").min_blocks(1);
const FUSED16_BWD: Kernel = Kernel::new(FILE, "gmp_fused16_bwd_f32").min_blocks(1);
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
        FUSED4_FWD,
        FUSED8_FWD,
        FUSED_BWD,
        FUSED16_FWD,
        FUSED16_BWD,
    ],
);

/// Largest K the fused kernels keep in registers (`GMP_FUSED_MAX_K` in kernels/gmp.cu).
pub const FUSED_MAX_K: usize = 16;

/// Which implementation runs (`--gmp-kernel naive|unfused|fused|fused16|cl|cl4`): `fused` sizes
/// its forward's per-thread arrays for the smallest of 4, 8, 16 that holds K and walks K in
/// chunks of 4 in the backward; `fused16` is its first version, arrays for 16 whatever K,
/// kept as the baseline it is timed against; `cl` and `cl4` gather from a channels-last copy
/// of x with the channels on the warp and fold the residual in (`super::cl`; `cl4`'s backward
/// uses float4 atomics, native on sm_90).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum GmpKernel {
    Naive,
    Unfused,
    #[default]
    Fused,
    Fused16,
    Cl,
    Cl4,
}

impl GmpKernel {
    pub const ALL: [GmpKernel; 6] = [
        GmpKernel::Naive,
        GmpKernel::Unfused,
        GmpKernel::Fused,
        GmpKernel::Fused16,
        GmpKernel::Cl,
        GmpKernel::Cl4,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            GmpKernel::Naive => "naive",
            GmpKernel::Unfused => "unfused",
            GmpKernel::Fused => "fused",
            GmpKernel::Fused16 => "fused16",
            GmpKernel::Cl => "cl",
            GmpKernel::Cl4 => "cl4",
        }
    }

    /// Largest K the version runs (the fused kernels keep K cells in registers), if any.
    pub fn max_k(&self) -> Option<usize> {
        matches!(self, GmpKernel::Fused | GmpKernel::Fused16).then_some(FUSED_MAX_K)
    }
}

impl FromStr for GmpKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GmpKernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown GMP kernel '{s}' (expected naive, unfused, fused, fused16, cl or cl4)"
                ))
            })
    }
}

/// The (forward, backward) fused kernels `version` runs for `k` sampling points.
fn fused_kernels(version: GmpKernel, k: u32) -> (Kernel, Kernel) {
    match version {
        GmpKernel::Fused if k <= 4 => (FUSED4_FWD, FUSED_BWD),
        GmpKernel::Fused if k <= 8 => (FUSED8_FWD, FUSED_BWD),
        GmpKernel::Fused => (FUSED16_FWD, FUSED_BWD),
        _ => (FUSED16_FWD, FUSED16_BWD),
    }
}

const OP: &str = "gmp_sample (cuda)";

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

fn check_inputs(g: &GmpGeometry, x: &GpuBuffer<f32>, offsets: &GpuBuffer<f32>) -> Result<()> {
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "offsets", offsets, g.off_len())
}

fn check_fused_k(g: &GmpGeometry) -> Result<()> {
    if g.k as usize > FUSED_MAX_K {
        return Err(Error::shape(
            OP,
            format!(
                "the fused kernel supports K <= {FUSED_MAX_K}, got {}; use --gmp-kernel naive, unfused, cl or cl4",
                g.k
            ),
        ));
    }
    Ok(())
}

/// The fused kernels' parameters and grid: `g` with the channel group size of this device,
/// one thread per (position, channel group).
fn fused_launch(dev: &CudaDevice, g: &GmpGeometry) -> Result<(GmpGeometry, LaunchConfig)> {
    check_fused_k(g)?;
    let (groups, per) = fused_channel_groups(g.positions(), g.c as usize, dev.info().sm_count);
    let p = GmpGeometry {
        c_per_group: per,
        ..*g
    };
    Ok((p, fused_cfg(dev, g.positions(), groups)))
}

/// Elements of each of the unfused version's tap tables, `[N, K, H, W, 4]`.
fn tap_table_len(g: &GmpGeometry) -> usize {
    g.sample_points() * 4
}

/// Elements of each of the unfused version's per-sample buffers, `[N, K, C, H, W]`.
fn sample_buffer_len(g: &GmpGeometry) -> usize {
    g.sample_points() * g.c as usize
}

/// Stage 1 of the unfused version: the tap tables (indices, weights) it returns and, for the
/// backward, the weights' derivatives `(d/dx, d/dy)` into `derivatives`.
fn unfused_taps(
    dev: &CudaDevice,
    g: &GmpGeometry,
    offsets: &GpuBuffer<f32>,
    derivatives: Option<(&mut GpuBuffer<f32>, &mut GpuBuffer<f32>)>,
) -> Result<(GpuBuffer<i32>, GpuBuffer<f32>)> {
    let mut idx = dev.alloc::<i32>(tap_table_len(g))?;
    let mut w = dev.alloc::<f32>(tap_table_len(g))?;
    let null: u64 = 0; // no derivative tables
    let launch = dev
        .launch(UNF_COORDS)
        .arg(g)
        .buf(offsets)
        .out(&mut idx)
        .out(&mut w);
    match derivatives {
        Some((dwx, dwy)) => launch.out(dwx).out(dwy),
        None => launch.arg(&null).arg(&null),
    }
    .run(Some(grid(dev, g.sample_points())))?;
    Ok((idx, w))
}

/// a `[n, c, h, w]` = mean over K bilinear samples of x at (j + u_k, i + v_k).
pub fn forward(
    dev: &CudaDevice,
    version: GmpKernel,
    x: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    g: &GmpGeometry,
) -> Result<GpuBuffer<f32>> {
    check_inputs(g, x, offsets)?;
    if cl::is_cl(version) {
        return cl::forward(dev, x, offsets, g, false).map(|(a, _xt)| a);
    }
    let mut a = dev.alloc::<f32>(g.x_len())?;
    match version {
        GmpKernel::Naive => {
            dev.launch(NAIVE_FWD)
                .arg(g)
                .buf(x)
                .buf(offsets)
                .out(&mut a)
                .run(Some(grid(dev, g.x_len())))?;
        }
        GmpKernel::Unfused => {
            let (tidx, tw) = unfused_taps(dev, g, offsets, None)?;
            let samples = sample_buffer_len(g);
            let mut sbuf = dev.alloc::<f32>(samples)?;
            dev.launch(UNF_SAMPLE)
                .arg(g)
                .buf(x)
                .buf(&tidx)
                .buf(&tw)
                .out(&mut sbuf)
                .run(Some(grid(dev, samples)))?;
            dev.launch(UNF_MEAN)
                .arg(g)
                .buf(&sbuf)
                .out(&mut a)
                .run(Some(grid(dev, g.x_len())))?;
        }
        v @ (GmpKernel::Fused | GmpKernel::Fused16) => {
            let (p, cfg) = fused_launch(dev, g)?;
            dev.launch(fused_kernels(v, g.k).0)
                .arg(&p)
                .buf(x)
                .buf(offsets)
                .out(&mut a)
                .run(Some(cfg))?;
        }
        GmpKernel::Cl | GmpKernel::Cl4 => unreachable!("returned above"),
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
    g: &GmpGeometry,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    check_inputs(g, x, offsets)?;
    check_len(OP, "da", da, g.x_len())?;
    if cl::is_cl(version) {
        let xt = cl::to_channels_last(dev, x, g)?;
        return cl::backward(dev, version, &xt, offsets, da, g, false);
    }
    let mut dx = dev.alloc_zeros::<f32>(g.x_len())?;
    let mut doff = dev.alloc_zeros::<f32>(g.off_len())?;
    match version {
        GmpKernel::Naive => {
            dev.launch(NAIVE_BWD_DX)
                .arg(g)
                .buf(offsets)
                .buf(da)
                .out(&mut dx)
                .run(dev.cfg(g.x_len() as u64))?;
            dev.launch(NAIVE_BWD_DOFF)
                .arg(g)
                .buf(x)
                .buf(offsets)
                .buf(da)
                .out(&mut doff)
                .run(Some(grid(dev, g.sample_points())))?;
        }
        GmpKernel::Unfused => {
            let mut tdwx = dev.alloc::<f32>(tap_table_len(g))?;
            let mut tdwy = dev.alloc::<f32>(tap_table_len(g))?;
            let (tidx, tw) = unfused_taps(dev, g, offsets, Some((&mut tdwx, &mut tdwy)))?;
            let samples = sample_buffer_len(g);
            let mut gpx = dev.alloc::<f32>(samples)?;
            let mut gpy = dev.alloc::<f32>(samples)?;
            dev.launch(UNF_BWD_SAMPLE)
                .arg(g)
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
                .arg(g)
                .buf(&gpx)
                .buf(&gpy)
                .out(&mut doff)
                .run(Some(grid(dev, g.sample_points())))?;
        }
        v @ (GmpKernel::Fused | GmpKernel::Fused16) => {
            let (p, cfg) = fused_launch(dev, g)?;
            dev.launch(fused_kernels(v, g.k).1)
                .arg(&p)
                .buf(x)
                .buf(offsets)
                .buf(da)
                .out(&mut dx)
                .out(&mut doff)
                .run(Some(cfg))?;
        }
        GmpKernel::Cl | GmpKernel::Cl4 => unreachable!("returned above"),
    }
    Ok((dx, doff))
}

/// The GMP layer's forward, y = x + a: (y, the channels-last copy of x when the version made
/// one, which [`residual_backward`] reuses). `cl` and `cl4` fold the residual into their
/// kernel; the other versions add x in a separate elementwise pass.
pub fn residual_forward(
    dev: &CudaDevice,
    version: GmpKernel,
    x: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    g: &GmpGeometry,
) -> Result<(GpuBuffer<f32>, Option<GpuBuffer<f32>>)> {
    check_inputs(g, x, offsets)?;
    if cl::is_cl(version) {
        let (y, xt) = cl::forward(dev, x, offsets, g, true)?;
        return Ok((y, Some(xt)));
    }
    let a = forward(dev, version, x, offsets, g)?;
    Ok((elementwise::add(dev, x, &a)?, None))
}

/// The GMP layer's backward: (dx = dy + ∂a/∂x·dy, doffsets). `xt` is the channels-last copy
/// [`residual_forward`] returned (the `cl` versions make it again without one).
pub fn residual_backward(
    dev: &CudaDevice,
    version: GmpKernel,
    x: &GpuBuffer<f32>,
    xt: Option<&GpuBuffer<f32>>,
    offsets: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &GmpGeometry,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    check_inputs(g, x, offsets)?;
    check_len(OP, "dy", dy, g.x_len())?;
    if cl::is_cl(version) {
        let made;
        let xt = match xt {
            Some(xt) => xt,
            None => {
                made = cl::to_channels_last(dev, x, g)?;
                &made
            }
        };
        return cl::backward(dev, version, xt, offsets, dy, g, true);
    }
    let (dxs, doff) = backward(dev, version, x, offsets, dy, g)?;
    Ok((elementwise::add(dev, dy, &dxs)?, doff))
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
        assert!(GmpGeometry::new(1, 2, 3, 4, 0).is_err());
        assert!(GmpGeometry::new(1, 2, 1 << 16, 1 << 16, 8).is_err());
        let g = GmpGeometry::new(2, 3, 5, 7, 17).unwrap();
        assert!(check_fused_k(&g).unwrap_err().to_string().contains("naive"));
    }
}
