//! Count metrics (DESIGN §1): MAE, RMSE (the paper's "MSE" column, by crowd-counting
//! convention) and the true mean squared error.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CountMetrics {
    pub n: usize,
    pub mae: f64,
    /// √(mean squared error): what the paper's tables call "MSE".
    pub rmse: f64,
    /// The true mean squared error.
    pub mse: f64,
}

/// Metrics over (predicted, true) count pairs.
pub fn count_metrics(pairs: &[(f64, f64)]) -> CountMetrics {
    let n = pairs.len();
    if n == 0 {
        return CountMetrics::default();
    }
    let mae = pairs.iter().map(|(p, t)| (p - t).abs()).sum::<f64>() / n as f64;
    let mse = pairs.iter().map(|(p, t)| (p - t) * (p - t)).sum::<f64>() / n as f64;
    CountMetrics {
        n,
        mae,
        rmse: mse.sqrt(),
        mse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metrics_by_hand() {
        let m = count_metrics(&[(10.0, 12.0), (5.0, 1.0), (3.0, 3.0)]);
        assert_eq!(m.n, 3);
        assert!((m.mae - 2.0).abs() < 1e-12);
        assert!((m.mse - 20.0 / 3.0).abs() < 1e-12);
        assert!((m.rmse - (20.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(count_metrics(&[]).n, 0);
    }
}
