//! Localization scores (DESIGN §1): predicted and true points matched one to one (Hungarian
//! algorithm, minimum total distance) and a match counts when within radius r.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MatchCounts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl MatchCounts {
    pub fn add(&mut self, o: MatchCounts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// Minimum-cost assignment of each row to a distinct column (rows ≤ columns), O(n²m):
/// the shortest-augmenting-path Hungarian algorithm with potentials. Returns the column of
/// each row.
pub fn hungarian(cost: &[Vec<f64>]) -> Vec<usize> {
    let n = cost.len();
    if n == 0 {
        return vec![];
    }
    let m = cost[0].len();
    assert!(n <= m, "hungarian: more rows than columns");
    let inf = f64::INFINITY;
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; m + 1]);
    let (mut p, mut way) = (vec![0usize; m + 1], vec![0usize; m + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let (mut delta, mut j1) = (inf, 0);
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col = vec![0; n];
    for j in 1..=m {
        if p[j] > 0 {
            col[p[j] - 1] = j - 1;
        }
    }
    col
}

/// True positives, false positives and misses of `pred` against `truth` within `radius`.
pub fn match_points(pred: &[(f32, f32)], truth: &[(f32, f32)], radius: f32) -> MatchCounts {
    if pred.is_empty() || truth.is_empty() {
        return MatchCounts {
            tp: 0,
            fp: pred.len(),
            fn_: truth.len(),
        };
    }
    // Out-of-radius pairs cost more than any set of in-radius ones, so the assignment first
    // maximises the number of matches, then minimises their distance.
    let big = 1e3 * (radius as f64 + 1.0) * (pred.len() + truth.len()) as f64;
    let (rows, cols) = if pred.len() <= truth.len() {
        (pred, truth)
    } else {
        (truth, pred)
    };
    let dist =
        |a: (f32, f32), b: (f32, f32)| (((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)) as f64).sqrt();
    let cost: Vec<Vec<f64>> = rows
        .iter()
        .map(|&a| {
            cols.iter()
                .map(|&b| {
                    let d = dist(a, b);
                    if d <= radius as f64 {
                        d
                    } else {
                        big
                    }
                })
                .collect()
        })
        .collect();
    let assign = hungarian(&cost);
    let tp = assign
        .iter()
        .enumerate()
        .filter(|&(i, &j)| dist(rows[i], cols[j]) <= radius as f64)
        .count();
    MatchCounts {
        tp,
        fp: pred.len() - tp,
        fn_: truth.len() - tp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hungarian_finds_the_optimum() {
        // greedy would take (0,0)=1 then (1,1)=10: total 11; the optimum is 2 + 3 = 5
        let c = vec![vec![1.0, 2.0], vec![3.0, 10.0]];
        assert_eq!(hungarian(&c), vec![1, 0]);
        let c = vec![
            vec![4.0, 1.0, 3.0],
            vec![2.0, 0.0, 5.0],
            vec![3.0, 2.0, 2.0],
        ];
        let a = hungarian(&c);
        let total: f64 = a.iter().enumerate().map(|(i, &j)| c[i][j]).sum();
        assert_eq!(total, 5.0);
    }

    #[test]
    fn matching_is_one_to_one_within_radius() {
        // two predictions near one true point: one match, one false positive
        let m = match_points(&[(0.0, 0.0), (0.5, 0.0)], &[(0.2, 0.0)], 1.0);
        assert_eq!((m.tp, m.fp, m.fn_), (1, 1, 0));
        // greedy nearest matching would pair (1,0)-(0.9,0) and lose (0,0); one-to-one finds 2
        let m = match_points(&[(0.0, 0.0), (1.0, 0.0)], &[(0.9, 0.0), (1.8, 0.0)], 1.0);
        assert_eq!((m.tp, m.fp, m.fn_), (2, 0, 0));
        let m = match_points(&[(0.0, 0.0)], &[(5.0, 0.0)], 1.0);
        assert_eq!((m.tp, m.fp, m.fn_), (0, 1, 1));
        assert!((m.f1() - 0.0).abs() < 1e-12);
        let m = MatchCounts {
            tp: 3,
            fp: 1,
            fn_: 2,
        };
        assert!((m.precision() - 0.75).abs() < 1e-12 && (m.recall() - 0.6).abs() < 1e-12);
    }
}
