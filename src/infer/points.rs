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
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            f32::NEG_INFINITY
        } else {
            map.data[y as usize * w + x as usize]
        }
    };
    let mut peaks = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let v = at(x, y);
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
                    let n = at(x + dx, y + dy);
                    if (dy, dx) < (0, 0) {
                        v > n
                    } else {
                        v >= n
                    }
                })
            });
            if is_max {
                peaks.push(Point {
                    x: x as f32 + 0.5,
                    y: y as f32 + 0.5,
                    score: v,
                });
            }
        }
    }
    peaks.sort_by(|a, b| b.score.total_cmp(&a.score));
    let limit = count.round().max(0.0) as usize;
    let d2 = min_distance * min_distance;
    let mut kept: Vec<Point> = Vec::new();
    for p in peaks {
        if kept.len() >= limit {
            break;
        }
        if kept
            .iter()
            .all(|q| (q.x - p.x).powi(2) + (q.y - p.y).powi(2) >= d2)
        {
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
}
