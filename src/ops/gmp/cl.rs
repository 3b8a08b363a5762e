//! Launchers of kernels/gmp_cl.cu: GMP in channels-last with the channels on the warp
//! (`--gmp-kernel cl` and `cl4`), designed for bandwidth. Every tap is a coalesced read of
//! contiguous channels of `xt`, a channels-last copy of x `[N, H·W, C]`; the residual `x + a` is
//! folded into the forward and `dy + ∂a/∂x` into the backward; K runs in compile-time chunks of
//! 4 or 8 (any K).
//!
//! Where the layout costs: the forward transposes x once (`to_channels_last`, one read and one
//! write of x) and returns the copy, which the op saves for its backward; the backward
//! accumulates dx channels-last (`dxt`, zeroed, coalesced atomics) and transposes it once into
//! NCHW with dy added. y and dy stay NCHW: each block stages its 128-channel x 32-position tile
//! in shared memory and reads or writes whole NCHW rows. Every one of these passes is inside the
//! op, so the bench's timings include them.
//!
//! `cl` and `cl4` share the forward (float4 gathers when C % 4 == 0); their backwards differ:
//! `cl` gives each lane channels L, L+32, L+64, L+96 (scalar loads and atomics, each warp
//! instruction one full 128-byte line), `cl4` channels 4L..4L+3 (float4 loads and one float4
//! atomicAdd per tap, native on sm_90; on other GPUs the same layout with four scalar atomics).
use cudarc::driver::LaunchConfig;

use super::{GmpGeometry, GmpKernel};
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};

const FILE: &str = "gmp_cl.cu";
const TO_NHWC: Kernel = Kernel::new(FILE, "gmp_cl_to_nhwc_f32");
const TO_NCHW: Kernel = Kernel::new(FILE, "gmp_cl_to_nchw_f32");
// The forwards hold 16 sums a thread (48 registers on sm_80..90: 4 blocks of 256 per SM); the
// backwards the per-sample partial sums of a chunk of K as well (`__launch_bounds__(256, 3)`:
// at most 85 registers, 3 blocks per SM, no spills).
const FWD_K4_V1: Kernel = Kernel::new(FILE, "gmp_cl_fwd_k4_v1_f32");
const FWD_K4_V4: Kernel = Kernel::new(FILE, "gmp_cl_fwd_k4_v4_f32");
const FWD_K8_V1: Kernel = Kernel::new(FILE, "gmp_cl_fwd_k8_v1_f32");
const FWD_K8_V4: Kernel = Kernel::new(FILE, "gmp_cl_fwd_k8_v4_f32");
const BWD_K4_V1: Kernel = Kernel::new(FILE, "gmp_cl_bwd_k4_v1_f32").min_blocks(3);
const BWD_K4_V4: Kernel = Kernel::new(FILE, "gmp_cl_bwd_k4_v4_f32").min_blocks(3);
const BWD_K8_V1: Kernel = Kernel::new(FILE, "gmp_cl_bwd_k8_v1_f32").min_blocks(3);
const BWD_K8_V4: Kernel = Kernel::new(FILE, "gmp_cl_bwd_k8_v4_f32").min_blocks(3);
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        TO_NHWC, TO_NCHW, FWD_K4_V1, FWD_K4_V4, FWD_K8_V1, FWD_K8_V4, BWD_K4_V1, BWD_K4_V4,
        BWD_K8_V1, BWD_K8_V4,
    ],
);

/// Positions and channels of one block's tile (`CL_TP`, `CL_CCH` in the source).
const TILE_POSITIONS: usize = 32;
const TILE_CHANNELS: usize = 128;

const OP: &str = "gmp (cuda cl)";

/// The forward for `k` sampling points: chunks of 4 when K <= 4, else of 8; float4 lanes when
/// the channel rows are whole float4s.
fn fwd_kernel(g: &GmpGeometry) -> Kernel {
    match (g.k <= 4, g.c.is_multiple_of(4)) {
        (true, false) => FWD_K4_V1,
        (true, true) => FWD_K4_V4,
        (false, false) => FWD_K8_V1,
        (false, true) => FWD_K8_V4,
    }
}

/// The backward of `version` (float4 lanes and atomics only for `cl4`, and only when C % 4 ==
/// 0; otherwise `cl`'s).
fn bwd_kernel(version: GmpKernel, g: &GmpGeometry) -> Kernel {
    let v4 = version == GmpKernel::Cl4 && g.c.is_multiple_of(4);
    match (g.k <= 4, v4) {
        (true, false) => BWD_K4_V1,
        (true, true) => BWD_K4_V4,
        (false, false) => BWD_K8_V1,
        (false, true) => BWD_K8_V4,
    }
}

/// Whether `version` is one of this file's.
pub fn is_cl(version: GmpKernel) -> bool {
    matches!(version, GmpKernel::Cl | GmpKernel::Cl4)
}

/// One block per 32-position tile (grid-strided past the hardware's limit) and 128-channel
/// chunk.
fn tile_cfg(g: &GmpGeometry) -> Result<LaunchConfig> {
    let tiles = g.positions().div_ceil(TILE_POSITIONS);
    let chunks = (g.c as usize).div_ceil(TILE_CHANNELS);
    if chunks > 65_535 {
        return Err(Error::shape(
            OP,
            format!(
                "C = {} is more than the cl kernels' 65535 chunks of 128",
                g.c
            ),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (tiles.clamp(1, i32::MAX as usize) as u32, chunks as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// 32x32 transpose tiles, blocks of 32x8 (every grid dimension strided in the kernel).
fn transpose_cfg(g: &GmpGeometry) -> LaunchConfig {
    let pos_tiles = g.plane().div_ceil(32).clamp(1, i32::MAX as usize);
    let c_tiles = (g.c as usize).div_ceil(32).clamp(1, 65_535);
    LaunchConfig {
        grid_dim: (
            pos_tiles as u32,
            c_tiles as u32,
            (g.n as usize).clamp(1, 65_535) as u32,
        ),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// xt `[N, H·W, C]`, the channels-last copy of x `[N, C, H, W]` the cl kernels gather from.
pub fn to_channels_last(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    g: &GmpGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "x", x, g.x_len())?;
    let mut xt = dev.alloc::<f32>(g.x_len())?;
    dev.launch(TO_NHWC)
        .arg(g)
        .buf(x)
        .out(&mut xt)
        .run(Some(transpose_cfg(g)))?;
    Ok(xt)
}

/// (y, xt): y `[N, C, H, W]` = (x if `residual`) + the mean over K bilinear samples of x, and
/// the channels-last copy of x it gathered from (for the backward).
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    g: &GmpGeometry,
    residual: bool,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    check_len(OP, "offsets", offsets, g.off_len())?;
    let cfg = tile_cfg(g)?;
    let xt = to_channels_last(dev, x, g)?;
    let mut y = dev.alloc::<f32>(g.x_len())?;
    let residual = residual as u32;
    dev.launch(fwd_kernel(g))
        .arg(g)
        .buf(&xt)
        .buf(offsets)
        .arg(&residual)
        .out(&mut y)
        .run(Some(cfg))?;
    Ok((y, xt))
}

/// (dx `[N, C, H, W]`, doffsets `[N, 2K, H, W]`) from dy, given xt (the channels-last copy of x
/// the forward returned): dx = (dy if `residual`) + the scatter of dy/K through the bilinear
/// weights.
pub fn backward(
    dev: &CudaDevice,
    version: GmpKernel,
    xt: &GpuBuffer<f32>,
    offsets: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &GmpGeometry,
    residual: bool,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    check_len(OP, "xt", xt, g.x_len())?;
    check_len(OP, "offsets", offsets, g.off_len())?;
    check_len(OP, "dy", dy, g.x_len())?;
    let cfg = tile_cfg(g)?;
    let mut dxt = dev.alloc_zeros::<f32>(g.x_len())?;
    let mut doff = dev.alloc_zeros::<f32>(g.off_len())?;
    dev.launch(bwd_kernel(version, g))
        .arg(g)
        .buf(xt)
        .buf(offsets)
        .buf(dy)
        .out(&mut dxt)
        .out(&mut doff)
        .run(Some(cfg))?;
    let mut dx = dev.alloc::<f32>(g.x_len())?;
    let with_add = residual as u32;
    dev.launch(TO_NCHW)
        .arg(g)
        .buf(&dxt)
        .buf(dy)
        .arg(&with_add)
        .out(&mut dx)
        .run(Some(transpose_cfg(g)))?;
    Ok((dx, doff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_by_k_and_channels() {
        let g = |c, k| GmpGeometry::new(2, c, 3, 5, k).unwrap();
        assert_eq!(fwd_kernel(&g(5, 4)), FWD_K4_V1);
        assert_eq!(fwd_kernel(&g(8, 3)), FWD_K4_V4);
        assert_eq!(fwd_kernel(&g(3, 5)), FWD_K8_V1);
        assert_eq!(fwd_kernel(&g(512, 17)), FWD_K8_V4);
        assert_eq!(bwd_kernel(GmpKernel::Cl, &g(512, 8)), BWD_K8_V1);
        assert_eq!(bwd_kernel(GmpKernel::Cl4, &g(512, 8)), BWD_K8_V4);
        assert_eq!(bwd_kernel(GmpKernel::Cl4, &g(513, 8)), BWD_K8_V1);
        assert_eq!(bwd_kernel(GmpKernel::Cl4, &g(4, 1)), BWD_K4_V4);
        assert_eq!(bwd_kernel(GmpKernel::Cl, &g(4, 1)), BWD_K4_V1);
    }

    #[test]
    fn grids_cover_every_tile() {
        let g = GmpGeometry::new(8, 512, 32, 32, 8).unwrap();
        let c = tile_cfg(&g).unwrap();
        assert_eq!((c.grid_dim, c.block_dim), ((256, 4, 1), (256, 1, 1)));
        let t = transpose_cfg(&g);
        assert_eq!((t.grid_dim, t.block_dim), ((32, 16, 8), (32, 8, 1)));
        let g = GmpGeometry::new(3, 5, 7, 9, 4).unwrap();
        assert_eq!(tile_cfg(&g).unwrap().grid_dim, (6, 1, 1)); // 189 positions
        assert_eq!(transpose_cfg(&g).grid_dim, (2, 1, 3));
    }
}
