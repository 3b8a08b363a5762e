//! Reading out cell positions from a density map (DESIGN §1): local maxima of a 3x3
//! neighbourhood above a threshold, strongest first, at least `min_distance` apart, and at most
//! round(count) of them. Positions are continuous pixel coordinates: pixel (col, row) covers
//! [col, col+1) x [row, row+1), so a peak at pixel (c, r) is the point (c + 0.5, r + 0.5), the
//! convention of the annotations (a dot at pixel (c, r) is (c + 0.5, r + 0.5)) and of QuPath.
use serde::Serialize;

use super::Map;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    pub score: f32,
}

pub fn find_points(map: &Map, count: f64, threshold: f32, min_distance: f32) -> Vec<Point> {
    let (w, h) = (map.width, map.height);
    let row = |y: usize| &map.data[y * w..(y + 1) * w];
    let mut peaks = Vec::new();
    for y in 0..h {
        let prev = (y > 0).then(|| row(y - 1));
        let next = (y + 1 < h).then(|| row(y + 1));
        row_peaks(prev, row(y), next, y, threshold, &mut peaks);
    }
    select_points(peaks, count, min_distance)
}

/// The local maxima above `threshold` of row `y` (`cur`), given the rows above and below
/// (None at the map's border), appended to `out` in scan order: a map can be read a few rows
/// at a time (a streamed whole-slide map) with the same result as whole.
pub fn row_peaks(
    prev: Option<&[f32]>,
    cur: &[f32],
    next: Option<&[f32]>,
    y: usize,
    threshold: f32,
    out: &mut Vec<Point>,
) {
    let w = cur.len() as isize;
    let at = |x: isize, dy: isize| -> f32 {
        let r = match dy {
            -1 => prev,
            0 => Some(cur),
            _ => next,
        };
        match r {
            Some(r) if x >= 0 && x < w => r[x as usize],
            _ => f32::NEG_INFINITY,
        }
    };
    for x in 0..w {
        let v = cur[x as usize];
        if v <= threshold {
            continue;
        }
        // A plateau keeps only its first pixel in scan order: strict against earlier
        // neighbours, non-strict against later ones.
        let is_max = (-1..=1).all(|dy| {
            (-1..=1).all(|dx| {
                if dx == 0 && dy == 0 {
                    return true;
                }
                let n = at(x + dx, dy);
                if (dy, dx) < (0, 0) {
                    v > n
                } else {
                    v >= n
                }
            })
        });
        if is_max {
            out.push(Point {
                x: x as f32 + 0.5,
                y: y as f32 + 0.5,
                score: v,
            });
        }
    }
}

/// Of the peaks (in scan order), the strongest first, at least `min_distance` apart, at most
/// round(count) of them. Kept points are looked up in a grid of cells `min_distance` wide, so
/// a whole slide's hundreds of thousands of peaks take seconds; the result is the plain
/// "every kept point" test's (a point farther than `min_distance` along an axis is never
/// closer than it).
pub fn select_points(mut peaks: Vec<Point>, count: f64, min_distance: f32) -> Vec<Point> {
    peaks.sort_by(|a, b| b.score.total_cmp(&a.score));
    let limit = count.round().max(0.0) as usize;
    let d2 = min_distance * min_distance;
    // a hair wider than min_distance, so rounding in the division never splits a close pair
    // across two cells
    let cell = min_distance as f64 * 1.0001;
    let key = |p: &Point| {
        (
            (p.x as f64 / cell).floor() as i64,
            (p.y as f64 / cell).floor() as i64,
        )
    };
    let mut grid: std::collections::HashMap<(i64, i64), Vec<usize>> =
        std::collections::HashMap::new();
    let mut kept: Vec<Point> = Vec::new();
    for p in peaks {
        if kept.len() >= limit {
            break;
        }
        let free = if min_distance > 0.0 && min_distance.is_finite() {
            let (cx, cy) = key(&p);
            (-1..=1).all(|dy| {
                (-1..=1).all(|dx| {
                    grid.get(&(cx + dx, cy + dy)).is_none_or(|v| {
                        v.iter().all(|&i| {
                            let q = kept[i];
                            (q.x - p.x).powi(2) + (q.y - p.y).powi(2) >= d2
                        })
                    })
                })
            })
        } else {
            kept.iter()
                .all(|q| (q.x - p.x).powi(2) + (q.y - p.y).powi(2) >= d2)
        };
        if free {
            if min_distance > 0.0 && min_distance.is_finite() {
                grid.entry(key(&p)).or_default().push(kept.len());
            }
            kept.push(p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: usize, h: usize, peaks: &[(usize, usize, f32)]) -> Map {
        let mut m = Map::zeros(w, h);
        for &(x, y, v) in peaks {
            m.data[y * w + x] = v;
        }
        m
    }

    #[test]
    fn finds_strongest_maxima_up_to_count() {
        let m = map(
            10,
            8,
            &[(1, 1, 0.5), (7, 2, 0.9), (4, 6, 0.3), (9, 7, 0.05)],
        );
        let p = find_points(&m, 2.4, 0.1, 1.0);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].x, p[0].y), (7.5, 2.5));
        assert_eq!((p[1].x, p[1].y), (1.5, 1.5));
        let p = find_points(&m, 10.0, 0.1, 1.0);
        assert_eq!(p.len(), 3, "the 0.05 peak is under the threshold");
    }

    #[test]
    fn plateau_gives_one_point_and_min_distance_suppresses() {
        let m = map(6, 6, &[(2, 2, 0.5), (3, 2, 0.5)]);
        assert_eq!(find_points(&m, 5.0, 0.1, 1.0).len(), 1);
        let m = map(8, 8, &[(2, 2, 0.5), (4, 2, 0.4)]);
        assert_eq!(find_points(&m, 5.0, 0.1, 1.0).len(), 2);
        assert_eq!(find_points(&m, 5.0, 0.1, 3.0).len(), 1);
    }

    /// The grid lookup keeps exactly the points the plain test against every kept point keeps.
    #[test]
    fn grid_selection_equals_the_plain_test() {
        let mut rng = crate::rng::Rng::new(7);
        for &md in &[0.0f32, 0.5, 1.0, 2.0, 3.7, 10.0] {
            let peaks: Vec<Point> = (0..3000)
                .map(|_| Point {
                    x: rng.range(0.0, 200.0).floor() + 0.5,
                    y: rng.range(0.0, 150.0).floor() + 0.5,
                    score: rng.range(0.0, 1.0),
                })
                .collect();
            let mut plain_peaks = peaks.clone();
            plain_peaks.sort_by(|a, b| b.score.total_cmp(&a.score));
            let d2 = md * md;
            let mut plain: Vec<Point> = Vec::new();
            for p in plain_peaks {
                if plain.len() >= 2500 {
                    break;
                }
                if plain
                    .iter()
                    .all(|q| (q.x - p.x).powi(2) + (q.y - p.y).powi(2) >= d2)
                {
                    plain.push(p);
                }
            }
            assert_eq!(select_points(peaks, 2500.0, md), plain, "min_distance {md}");
        }
    }
}
