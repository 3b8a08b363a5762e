//! Inference over an annotated data set, patch by patch as the loader serves them: per-image
//! counts, the localizer's loss and localization scores. Training validates with these and
//! `dcl eval` reports them.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::data::{Dataset, Loader};
use crate::error::Result;
use crate::infer::points::find_points;
use crate::infer::Map;
use crate::metrics::{match_points, MatchCounts};
use crate::nn::{Counter, ImageCounts, Localizer};
use crate::ops::elementwise::scale_tensor;
use crate::ops::loss::{mse_loss_forward, per_image_counts};

/// One source image's predicted and true count.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ImageCount {
    pub image: String,
    pub predicted: f64,
    pub truth: f64,
}

/// Predicted and true counts per source image of `indices` of a data set.
pub fn predict_counts(
    model: &impl ImageCounts,
    ds: &Arc<Dataset>,
    indices: &[usize],
    batch_size: usize,
) -> Result<Vec<ImageCount>> {
    let loader = Loader::new(ds.clone(), indices.to_vec(), batch_size, false, false, 0);
    let mut by_source: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let sources: Vec<String> = indices
        .iter()
        .map(|&i| ds.image_of(i).path.display().to_string())
        .collect();
    let mut k = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        for (pred, truth) in model
            .image_counts(batch.images)?
            .into_iter()
            .zip(&batch.counts)
        {
            let e = by_source.entry(sources[k].clone()).or_default();
            e.0 += pred as f64;
            e.1 += *truth as f64;
            k += 1;
        }
    }
    Ok(by_source
        .into_iter()
        .map(|(image, (predicted, truth))| ImageCount {
            image,
            predicted,
            truth,
        })
        .collect())
}

/// Mean over patches of the localizer's MSE against density × density_scale (its training
/// loss), on `indices` of a data set.
pub fn localizer_mse(
    counter: &Counter,
    localizer: &Localizer,
    ds: &Arc<Dataset>,
    indices: &[usize],
    batch_size: usize,
) -> Result<f64> {
    let loader = Loader::new(ds.clone(), indices.to_vec(), batch_size, false, false, 0);
    let (mut total, mut n) = (0f64, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let z = counter.infer(batch.images.clone())?;
        let pred = localizer.infer(batch.images, &z)?;
        let target = scale_tensor(
            &batch.density.into_device(&localizer.store.device())?,
            localizer.config.density_scale,
        )?;
        let b = batch.counts.len();
        total += mse_loss_forward(pred.value(), &target)? as f64 * b as f64;
        n += b;
    }
    Ok(if n == 0 { 0.0 } else { total / n as f64 })
}

/// Localization scores (true/false positives, misses within `radius`) of the points read out
/// of the localizer's maps for each (threshold, min_distance) candidate, over `indices` of an
/// annotated data set. The maps are computed once and shared by all candidates.
pub fn localization_scores(
    counter: &Counter,
    localizer: &Localizer,
    ds: &Arc<Dataset>,
    indices: &[usize],
    batch_size: usize,
    candidates: &[(f32, f32)],
    radius: f32,
) -> Result<Vec<MatchCounts>> {
    let mut totals = vec![MatchCounts::default(); candidates.len()];
    let loader = Loader::new(ds.clone(), indices.to_vec(), batch_size, false, false, 0);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (h, w) = (batch.images.dims()[2], batch.images.dims()[3]);
        let z = counter.infer(batch.images.clone())?;
        let counts = per_image_counts(z.value())?;
        let d = localizer.infer(batch.images, &z)?.value().to_host()?;
        for (k, truth) in batch.points.iter().enumerate() {
            let map = Map {
                width: w,
                height: h,
                data: d[k * h * w..(k + 1) * h * w]
                    .iter()
                    .map(|v| v.max(0.0) / localizer.config.density_scale)
                    .collect(),
            };
            for (t, &(threshold, min_distance)) in totals.iter_mut().zip(candidates) {
                let pts = find_points(&map, counts[k] as f64, threshold, min_distance);
                let pred: Vec<(f32, f32)> = pts.iter().map(|p| (p.x, p.y)).collect();
                t.add(match_points(&pred, truth, radius));
            }
        }
    }
    Ok(totals)
}
