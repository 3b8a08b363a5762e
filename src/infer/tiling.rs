//! Tiling an image of any size into network-sized tiles with overlap, and the blending weights
//! that stitch the tiles' density maps without seams: along each axis every tile has a
//! trapezoidal weight (linear ramps across its overlaps, flat inside, no ramp at the image
//! border), and since tiles form a grid the weights normalise per axis, so a pixel's weights sum
//! to exactly 1 and no cell is counted twice or lost.

/// Start positions of tiles of `tile` pixels covering `len`, overlapping by at least `overlap`,
/// evenly spread and aligned to `align` (the network's output stride). One tile of the whole
/// length when it fits.
pub fn tile_starts(len: usize, tile: usize, overlap: usize, align: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    assert!(
        overlap < tile,
        "tile_starts: overlap {overlap} >= tile {tile}"
    );
    let stride = tile - overlap;
    let n = (len - overlap).div_ceil(stride);
    let last = len - tile;
    let mut starts: Vec<usize> = (0..n)
        .map(|i| {
            let s = (i as f64 * last as f64 / (n - 1) as f64).round() as usize;
            (s / align * align).min(last)
        })
        .collect();
    // The last tile must end at the border even when `last` is not aligned.
    *starts.last_mut().expect("n >= 2") = last;
    starts.dedup();
    starts
}

/// Per-axis blending weights: `weights[t][i]` is tile t's weight at position `starts[t] + i`
/// (i < tile), normalised so the weights of all tiles covering any position sum to 1.
pub fn axis_weights(len: usize, starts: &[usize], tile: usize) -> Vec<Vec<f32>> {
    let tile = tile.min(len);
    let raw: Vec<Vec<f64>> = starts
        .iter()
        .enumerate()
        .map(|(t, &s)| {
            let left = if t == 0 {
                0
            } else {
                (starts[t - 1] + tile).saturating_sub(s)
            };
            let right = if t + 1 == starts.len() {
                0
            } else {
                (s + tile).saturating_sub(starts[t + 1])
            };
            (0..tile)
                .map(|i| {
                    // ramps of width overlap+1 so the outermost pixel keeps a small weight
                    let up = if left > 0 {
                        (i + 1) as f64 / (left + 1) as f64
                    } else {
                        1.0
                    };
                    let down = if right > 0 {
                        (tile - i) as f64 / (right + 1) as f64
                    } else {
                        1.0
                    };
                    up.min(down).min(1.0)
                })
                .collect()
        })
        .collect();
    let mut total = vec![0f64; len];
    for (t, &s) in starts.iter().enumerate() {
        for (i, w) in raw[t].iter().enumerate() {
            total[s + i] += w;
        }
    }
    raw.iter()
        .zip(starts)
        .map(|(r, &s)| {
            r.iter()
                .enumerate()
                .map(|(i, w)| (w / total[s + i]) as f32)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_with_overlap_and_weights_sum_to_one() {
        for &(len, tile, overlap, align) in &[
            (256, 256, 32, 8),
            (100, 256, 32, 8),
            (257, 256, 32, 8),
            (481, 256, 32, 8),
            (1000, 256, 64, 8),
            (4096, 256, 32, 8),
            (513, 64, 16, 1),
        ] {
            let starts = tile_starts(len, tile, overlap, align);
            let t = tile.min(len);
            assert_eq!(starts[0], 0);
            assert_eq!(starts.last().unwrap() + t, len, "{len}: {starts:?}");
            for w in starts.windows(2) {
                assert!(
                    w[1] > w[0] && w[0] + t >= w[1] + overlap.min(t),
                    "{len}: {starts:?}"
                );
            }
            for s in &starts[..starts.len() - 1] {
                assert_eq!(s % align, 0);
            }
            let ws = axis_weights(len, &starts, tile);
            let mut sum = vec![0f64; len];
            for (k, &s) in starts.iter().enumerate() {
                for i in 0..t {
                    assert!(ws[k][i] >= 0.0);
                    sum[s + i] += ws[k][i] as f64;
                }
            }
            for (x, v) in sum.iter().enumerate() {
                assert!((v - 1.0).abs() < 1e-6, "len {len} pos {x}: {v}");
            }
        }
    }

    #[test]
    fn weights_are_continuous_across_a_seam() {
        let starts = tile_starts(480, 256, 32, 8);
        let ws = axis_weights(480, &starts, 256);
        // inside the overlap the first tile's weight falls monotonically
        let (a, b) = (starts[1], starts[0] + 256);
        for x in a..b - 1 {
            assert!(ws[0][x] >= ws[0][x + 1]);
        }
        assert!(ws[0][a] > 0.9 && ws[0][b - 1] < 0.1);
    }
}
