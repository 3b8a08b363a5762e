//! Launch configurations. Every kernel uses 256-thread blocks and grid-stride loops with 64-bit
//! indices, so the grid can be clamped (a u64 element count never overflows a u32 grid size)
//! and a launch covers any size. `LaunchConfig::for_num_elems` (1024 threads, u32 count) is
//! never used.
use cudarc::driver::LaunchConfig;

/// Threads per block for every kernel (the reduction kernels rely on a multiple of 32).
pub const BLOCK: u32 = 256;

/// Upper bound of the grid for grid-stride kernels on a device with `sm_count` multiprocessors:
/// 32 blocks of 256 threads per SM is several waves of full occupancy, past which more blocks
/// only add scheduling.
pub fn max_blocks_for(sm_count: u32) -> u32 {
    sm_count.max(1).saturating_mul(32)
}

/// Blocks for `n` elements, one element per thread, clamped to `[1, max_blocks]`.
pub fn grid_size(n: u64, max_blocks: u32) -> u32 {
    let want = n.div_ceil(BLOCK as u64);
    want.clamp(1, max_blocks.max(1) as u64) as u32
}

/// Configuration for an elementwise grid-stride kernel over `n` elements; `None` when there is
/// nothing to do (a zero-sized grid is a launch error).
pub fn elementwise(n: u64, max_blocks: u32) -> Option<LaunchConfig> {
    (n > 0).then(|| blocks(grid_size(n, max_blocks)))
}

/// `blocks` blocks of [`BLOCK`] threads (per-row / per-channel kernels, partial reductions).
pub fn blocks(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per item (channel, image) for the per-item reduction kernels, which loop over
/// items with a stride of gridDim.x; clamped to the hardware's grid limit.
pub fn per_item(items: u64) -> Option<LaunchConfig> {
    (items > 0).then(|| blocks(items.min(i32::MAX as u64) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_small_sizes_exactly_and_clamps_large_ones() {
        let max = max_blocks_for(132);
        assert_eq!(max, 4224);
        assert!(elementwise(0, max).is_none());
        assert_eq!(grid_size(1, max), 1);
        assert_eq!(grid_size(256, max), 1);
        assert_eq!(grid_size(257, max), 2);
        assert_eq!(grid_size(1000, max), 4);
        assert_eq!(grid_size(u64::MAX, max), max);
        assert_eq!(grid_size(1 << 40, max), max);
        // either every element gets its own thread, or the grid is at its cap and the
        // grid-stride loop covers the rest
        for n in [1u64, 255, 256, 257, 65_535, 1 << 20, 3 << 30, 1 << 45] {
            let g = grid_size(n, max) as u64;
            assert!(g * BLOCK as u64 >= n || g == max as u64, "n={n}");
            assert!(g >= 1 && g <= max as u64);
        }
        let cfg = elementwise(1 << 33, 7).unwrap();
        assert_eq!(cfg.grid_dim, (7, 1, 1));
        assert_eq!(cfg.block_dim, (256, 1, 1));
        assert_eq!(max_blocks_for(0), 32);
    }

    #[test]
    fn per_item_grid() {
        assert!(per_item(0).is_none());
        assert_eq!(per_item(64).unwrap().grid_dim, (64, 1, 1));
        assert_eq!(per_item(1 << 40).unwrap().grid_dim.0, i32::MAX as u32);
    }
}
