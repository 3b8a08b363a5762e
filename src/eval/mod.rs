//! Evaluation of a counter, and optionally a localizer, on annotated images: per-image counts
//! (a patch-wise data set's image count is the sum of its patches' counts) with their metrics,
//! and localization scores at the localizer's own read-out settings.
use std::sync::Arc;

use crate::data::Dataset;
use crate::error::Result;
use crate::infer::dataset::{localization_scores, predict_counts, ImageCount};
use crate::metrics::{count_metrics, CountMetrics, MatchCounts};
use crate::nn::{CountNet, Localizer};

/// What `dcl eval` reports.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Per source image, in path order.
    pub counts: Vec<ImageCount>,
    pub metrics: CountMetrics,
    /// With a localizer: the matching radius in network pixels and the scores within it.
    pub localization: Option<(f32, MatchCounts)>,
}

/// Evaluates on `indices` of `ds`. Points are read out with the localizer's configured
/// threshold and minimum distance and matched within `radius` (default 1.25 σ).
pub fn evaluate(
    model: &CountNet,
    localizer: Option<&Localizer>,
    ds: &Arc<Dataset>,
    indices: &[usize],
    batch_size: usize,
    radius: Option<f32>,
) -> Result<Evaluation> {
    let counts = predict_counts(model, ds, indices, batch_size)?;
    let pairs: Vec<(f64, f64)> = counts.iter().map(|c| (c.predicted, c.truth)).collect();
    let metrics = count_metrics(&pairs);
    let localization = match localizer {
        None => None,
        Some(loc) => {
            let counter = model.counter().ok_or_else(|| {
                crate::error::Error::Invalid(
                    "a localizer needs the counter it was trained on, not a coupled model".into(),
                )
            })?;
            let radius = radius.unwrap_or(1.25 * loc.config.sigma);
            let read_out = (loc.config.point_threshold, loc.config.min_distance);
            let scores =
                localization_scores(counter, loc, ds, indices, batch_size, &[read_out], radius)?;
            Some((radius, scores[0]))
        }
    };
    Ok(Evaluation {
        counts,
        metrics,
        localization,
    })
}
