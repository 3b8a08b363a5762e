//! `predict` for images too large to hold: the image is read a band of rows at a time (a
//! `RowSource`: tiled or striped TIFF, PNG rows), resized on the fly by the checkpoint's
//! `input_scale` (`resample`), and cut into the same tiles, batched the same way, blended with
//! the same weights in the same order as `predict` does in memory; so the count, the coarse
//! map, the density map and the points are the in-memory path's, bit for bit.
//!
//! Memory: the counter's coarse map is held whole (1/64 of the network pixels, 4 bytes each:
//! 160 MB for 50000x50000); of the image, the rows from the oldest tile the localizer still
//! needs to the newest tile the counter has seen (about two rows of tiles); of the density map,
//! the rows that tiles still add to. Each density row is handed on (`Sinks::density_row`, e.g.
//! to a tiled TIFF) once final, and its local maxima kept (the candidate points; the read-out
//! needs the final count, so points are selected at the end).
//!
//! The localizer's 4th input is the blended coarse map, which is final for a row of tiles once
//! the counter has passed every tile that overlaps it: the counter runs ahead of the localizer
//! by about one row of tiles, so the image is read once (after a first pass for the border's
//! mean colour, the padding colour, which needs the last row).
use crate::autograd::Var;
use crate::data::stream::{Band, RowSource};
use crate::error::{Error, Result};
use crate::nn::{Counter, Localizer};
use crate::tensor::Tensor;

use super::points::{row_peaks, select_points, Point};
use super::tiling::{axis_weights, tile_starts};
use super::{border_samples, mean_of, tile_input_from, InferOptions, Map};

/// The largest coarse map a streamed image may have (4 bytes a value, held whole): 2^28
/// values, 1 GiB, for 131072x131072 network pixels.
pub const MAX_COARSE_VALUES: u64 = 1 << 28;

/// Rows read from the source at a time.
const READ_ROWS: u32 = 64;

/// Candidate points (local maxima) kept while a map streams by: when twice as many have
/// gathered, the weakest beyond this many are dropped (in scan order otherwise), so a noisy
/// map cannot fill memory (at most 400 MB). The strongest-first read-out never reaches them
/// unless it keeps fewer points than the count allows; `Streamed::dropped` says so.
pub const MAX_CANDIDATES: usize = 1 << 24;

/// Keeps the `keep` strongest of `peaks` (ties at the cut kept), in their order; returns the
/// number dropped.
fn prune(peaks: &mut Vec<Point>, keep: usize) -> u64 {
    if peaks.len() <= keep {
        return 0;
    }
    let mut scores: Vec<f32> = peaks.iter().map(|p| p.score).collect();
    let k = scores.len() - keep;
    let (_, cut, _) = scores.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    let cut = *cut;
    let before = peaks.len();
    peaks.retain(|p| p.score.total_cmp(&cut).is_ge());
    (before - peaks.len()) as u64
}

/// What a streamed image gives.
#[derive(Clone, Debug)]
pub struct Streamed {
    pub count: f64,
    pub width: usize,
    pub height: usize,
    pub scale: f32,
    /// The counter's coarse map, whole (cells per 8x8 network pixels).
    pub coarse: Map,
    /// With a localizer: the points, in image pixel coordinates.
    pub points: Option<Vec<Point>>,
    /// Size of the density map handed to `density_row` (network pixels).
    pub density_size: Option<(usize, usize)>,
    /// Tiles run (counter and localizer).
    pub tiles: u64,
    /// Candidate points dropped as the weakest beyond `MAX_CANDIDATES`, when the read-out then
    /// kept fewer points than the count allows (so the dropped ones might have been kept);
    /// 0 otherwise.
    pub dropped: u64,
}

/// Where a streamed image's results go while it is counted.
pub struct Sinks<'a> {
    /// Each final row of the density map (network pixels, cells per pixel), top to bottom.
    pub density_row: &'a mut dyn FnMut(&[f32]) -> Result<()>,
    /// Rows of the (resized) image as they pass in the first pass: the band and the rows
    /// [y0, y1) just added (for a preview).
    pub image_rows: &'a mut dyn FnMut(&Band, u32, u32),
    /// `n` more tiles done.
    pub progress: &'a dyn Fn(u64),
}

/// The read-out of points (`Prediction::points`).
#[derive(Clone, Copy, Debug)]
pub struct Readout {
    pub threshold: f32,
    pub min_distance: f32,
}

/// The network size of a `w` x `h` image at `scale`, checked against the streamed limit.
pub fn network_size(w: usize, h: usize, scale: f32) -> Result<(usize, usize)> {
    let (nw, nh) = (
        ((w as f32 * scale).round() as usize).max(1),
        ((h as f32 * scale).round() as usize).max(1),
    );
    let coarse = (nw.div_ceil(16) * 2) as u64 * (nh.div_ceil(16) * 2) as u64;
    if !scale.is_finite() || coarse > MAX_COARSE_VALUES || nw > u32::MAX as usize / 2 {
        return Err(Error::Invalid(format!(
            "a {w}x{h} image scaled by the checkpoint's input_scale {scale} is {nw}x{nh} \
             network pixels, more than the {} million coarse values a streamed image may have",
            MAX_COARSE_VALUES >> 20
        )));
    }
    Ok((nw, nh))
}

/// Counts (and with a localizer, maps and locates) an image read from `open()` (called twice:
/// a pass for the border colour, then the tiles). `coarse_of` as in `predict_with`.
pub fn predict_stream_with(
    coarse_of: impl Fn(Tensor) -> Result<Vec<f32>>,
    scale: f32,
    localizer: Option<(&Localizer, Readout)>,
    open: &dyn Fn() -> Result<Box<dyn RowSource>>,
    opts: &InferOptions,
    sinks: Sinks<'_>,
) -> Result<Streamed> {
    let sized = |src: Box<dyn RowSource>| -> Result<(Box<dyn RowSource>, usize, usize)> {
        let (w, h) = (src.width() as usize, src.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Invalid("empty image".into()));
        }
        let (nw, nh) = network_size(w, h, scale)?;
        let src: Box<dyn RowSource> = if (nw, nh) != (w, h) {
            Box::new(super::resample::Resampled::new(src, nw as u32, nh as u32))
        } else {
            src
        };
        Ok((src, w, h))
    };
    let bad = |e: String| Error::Invalid(e);

    // Pass 1: the border's mean colour (the padding), and the rows for a preview.
    let (mut src, width, height) = sized(open()?)?;
    let (nw, nh) = (src.width() as usize, src.height() as usize);
    let samples = border_samples(nw as u32, nh as u32);
    let mut sampled: Vec<Option<[f32; 3]>> = vec![None; samples.len()];
    let mut by_row: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &(_, y)) in samples.iter().enumerate() {
        by_row.entry(y).or_default().push(i);
    }
    let mut band = Band::new(nw as u32, nh as u32, src.color());
    while band.end() < nh as u32 {
        let y0 = band.end();
        band.drop_before(y0);
        band.fill_to(src.as_mut(), y0 + READ_ROWS).map_err(bad)?;
        for (_, idx) in by_row.range(y0..band.end()) {
            for &i in idx {
                let (x, y) = samples[i];
                sampled[i] = Some(band.region(x, y, 1, 1).to_rgb32f().get_pixel(0, 0).0);
            }
        }
        (sinks.image_rows)(&band, y0, band.end());
    }
    drop(band);
    drop(src);
    let pad = mean_of(
        sampled
            .into_iter()
            .map(|p| p.expect("every border row was read")),
    );

    // The tiling, as `predict_with`.
    let (pw, ph) = (nw.div_ceil(16) * 16, nh.div_ceil(16) * 16);
    let tile = opts.checked_tile()?;
    let (tw, th) = (tile.min(pw), tile.min(ph));
    let c = Counter::STRIDE;
    let (zw, zh) = (tw / c, th / c);
    let xs = tile_starts(pw, tw, opts.overlap, c);
    let ys = tile_starts(ph, th, opts.overlap, c);
    let coarse_starts = |v: &[usize]| v.iter().map(|s| s / c).collect::<Vec<_>>();
    let (cwx, cwy) = (
        axis_weights(pw / c, &coarse_starts(&xs), zw),
        axis_weights(ph / c, &coarse_starts(&ys), zh),
    );
    let tiles: Vec<(usize, usize)> = (0..ys.len())
        .flat_map(|ty| (0..xs.len()).map(move |tx| (ty, tx)))
        .collect();
    let groups: Vec<&[(usize, usize)]> = tiles.chunks(opts.batch.max(1)).collect();
    // Counter groups whose tiles must be done before localizer group g: every group holding a
    // tile of a row that overlaps g's last row.
    let last_row_needed = |g: usize| -> usize {
        let ty = groups[g].last().expect("non-empty group").0;
        (ty..ys.len())
            .take_while(|&t| ys[t] < ys[ty] + th)
            .last()
            .unwrap_or(ty)
    };
    let groups_through_row =
        |row: usize| -> usize { ((row + 1) * xs.len()).div_ceil(opts.batch.max(1)) };

    let (mut src, _, _) = sized(open()?)?;
    let mut band = Band::new(nw as u32, nh as u32, src.color());
    let mut coarse = Map::zeros(pw / c, ph / c);
    fn region(band: &Band) -> impl Fn(u32, u32, u32, u32) -> image::Rgb32FImage + '_ {
        move |x, y, w, h| band.region(x, y, w, h).to_rgb32f()
    }
    let size = (nw, nh);
    let mut tiles_run = 0u64;

    // The localizer's side: the density rows tiles still add to, and the candidate points.
    let (wx, wy) = (axis_weights(pw, &xs, tw), axis_weights(ph, &ys, th));
    let mut dband: Vec<f32> = Vec::new(); // rows [d_y0, ...) of width pw
    let mut d_y0 = 0usize;
    let mut peaks: Vec<Point> = Vec::new();
    let mut dropped = 0u64;
    let mut rows_kept: Vec<Vec<f32>> = Vec::new(); // the last two emitted rows, for maxima
    let mut emitted = 0usize;
    let (mut ci, mut li) = (0usize, 0usize);
    let mut emit = |upto: usize,
                    dband: &mut Vec<f32>,
                    d_y0: &mut usize,
                    emitted: &mut usize,
                    rows_kept: &mut Vec<Vec<f32>>,
                    peaks: &mut Vec<Point>,
                    dropped: &mut u64,
                    threshold: f32|
     -> Result<()> {
        // rows [emitted, upto) are final
        let upto = upto.min(nh);
        while *emitted < upto {
            let y = *emitted;
            let off = (y - *d_y0) * pw;
            let row = dband[off..off + nw].to_vec();
            if row.iter().any(|v| !v.is_finite()) {
                return Err(Error::Invalid(
                    "the localizer gives a non-finite density map: its weights overflow on \
                     this image"
                        .into(),
                ));
            }
            (sinks.density_row)(&row)?;
            rows_kept.push(row);
            if rows_kept.len() == 3 {
                let (prev, cur, next) = (&rows_kept[0], &rows_kept[1], &rows_kept[2]);
                row_peaks(Some(prev), cur, Some(next), y - 1, threshold, peaks);
                rows_kept.remove(0);
            } else if rows_kept.len() == 2 {
                // row 0: nothing above
                row_peaks(
                    None,
                    &rows_kept[0],
                    Some(&rows_kept[1]),
                    y - 1,
                    threshold,
                    peaks,
                );
            }
            *emitted += 1;
        }
        if *emitted == nh {
            // the last row: nothing below
            let n = rows_kept.len();
            let prev = (n == 2).then(|| rows_kept[0].as_slice());
            row_peaks(prev, &rows_kept[n - 1], None, nh - 1, threshold, peaks);
            rows_kept.clear();
            *emitted += 1; // done
        }
        if peaks.len() > 2 * MAX_CANDIDATES {
            *dropped += prune(peaks, MAX_CANDIDATES);
        }
        // drop what is emitted
        let keep_from = (*emitted).min(nh).max(*d_y0);
        let drop_rows = (keep_from - *d_y0).min(dband.len() / pw);
        dband.drain(..drop_rows * pw);
        *d_y0 += drop_rows;
        Ok(())
    };
    loop {
        let loc_ready = match localizer {
            Some(_) if li < groups.len() => {
                ci >= groups_through_row(last_row_needed(li)).min(groups.len())
            }
            _ => false,
        };
        if loc_ready {
            let (loc, readout) = localizer.expect("checked");
            let group = groups[li];
            band.fill_to(
                src.as_mut(),
                (ys[group.last().expect("non-empty").0] + th) as u32,
            )
            .map_err(bad)?;
            let mut buf = Vec::with_capacity(group.len() * 3 * tw * th);
            let mut zbuf = Vec::with_capacity(group.len() * zw * zh);
            for &(ty, tx) in group {
                buf.extend(tile_input_from(
                    &region(&band),
                    size,
                    xs[tx],
                    ys[ty],
                    tw,
                    th,
                    pad,
                ));
                for i in 0..zh {
                    let row = (ys[ty] / c + i) * coarse.width + xs[tx] / c;
                    zbuf.extend_from_slice(&coarse.data[row..row + zw]);
                }
            }
            let n = group.len();
            let images = Tensor::from_vec(buf, &[n, 3, th, tw])?;
            let z = Tensor::from_vec(zbuf, &[n, 1, zh, zw])?.into_device(&loc.store.device())?;
            let z = Var::constant(z);
            let mut dv = loc.infer(images, &z)?.value().to_host()?;
            let inv = 1.0 / loc.config.density_scale;
            dv.iter_mut().for_each(|v| *v = v.max(0.0) * inv);
            for (k, &(ty, tx)) in group.iter().enumerate() {
                let plane = &dv[k * th * tw..(k + 1) * th * tw];
                let need = (ys[ty] + th - d_y0) * pw;
                if dband.len() < need {
                    dband.resize(need, 0.0);
                }
                // as `blend`, into the band's rows
                for i in 0..th {
                    let row = &mut dband[(ys[ty] + i - d_y0) * pw + xs[tx]..][..tw];
                    for (j, out) in row.iter_mut().enumerate() {
                        *out += wy[ty][i] * wx[tx][j] * plane[i * tw + j];
                    }
                }
            }
            li += 1;
            tiles_run += n as u64;
            (sinks.progress)(n as u64);
            // rows above the next group's first tile row are final
            let final_rows = if li < groups.len() {
                ys[groups[li][0].0]
            } else {
                ph
            };
            emit(
                final_rows,
                &mut dband,
                &mut d_y0,
                &mut emitted,
                &mut rows_kept,
                &mut peaks,
                &mut dropped,
                readout.threshold,
            )?;
        } else if ci < groups.len() {
            let group = groups[ci];
            band.fill_to(
                src.as_mut(),
                (ys[group.last().expect("non-empty").0] + th) as u32,
            )
            .map_err(bad)?;
            let mut buf = Vec::with_capacity(group.len() * 3 * tw * th);
            for &(ty, tx) in group {
                buf.extend(tile_input_from(
                    &region(&band),
                    size,
                    xs[tx],
                    ys[ty],
                    tw,
                    th,
                    pad,
                ));
            }
            let maps = coarse_of(Tensor::from_vec(buf, &[group.len(), 3, th, tw])?)?;
            for (k, &(ty, tx)) in group.iter().enumerate() {
                let plane = &maps[k * zh * zw..(k + 1) * zh * zw];
                let (x0, y0) = (xs[tx] / c, ys[ty] / c);
                super::blend(&mut coarse, plane, zw, zh, x0, y0, &cwx[tx], &cwy[ty]);
            }
            ci += 1;
            tiles_run += group.len() as u64;
            (sinks.progress)(group.len() as u64);
        } else {
            break;
        }
        // image rows no tile still needs
        let next_row = |g: usize| groups.get(g).map_or(nh, |grp| ys[grp[0].0]);
        let keep = if localizer.is_some() {
            next_row(li).min(next_row(ci))
        } else {
            next_row(ci)
        };
        band.drop_before(keep as u32);
    }
    if localizer.is_some() && emitted <= nh {
        return Err(Error::Invalid(format!(
            "internal: {emitted} of {nh} density rows were final at the end"
        )));
    }
    let count = coarse.sum();
    if !count.is_finite() || coarse.data.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the counter gives a non-finite count ({count}): its weights overflow on this image"
        )));
    }
    let points = localizer.map(|(_, r)| {
        let kept = select_points(std::mem::take(&mut peaks), count, r.min_distance);
        if kept.len() >= count.round().max(0.0) as usize {
            dropped = 0; // the read-out stopped at the count: the dropped ones were never reached
        }
        kept.into_iter()
            .map(|q| Point {
                x: q.x / scale,
                y: q.y / scale,
                score: q.score,
            })
            .collect()
    });
    Ok(Streamed {
        count,
        width,
        height,
        scale,
        coarse,
        points,
        density_size: localizer.map(|_| (nw, nh)),
        tiles: tiles_run,
        dropped,
    })
}

/// `predict_stream_with` with the counter network.
pub fn predict_stream(
    counter: &Counter,
    localizer: Option<(&Localizer, Readout)>,
    open: &dyn Fn() -> Result<Box<dyn RowSource>>,
    opts: &InferOptions,
    sinks: Sinks<'_>,
) -> Result<Streamed> {
    let coarse_of = |images: Tensor| -> Result<Vec<f32>> {
        let z = counter.infer(images)?.value().to_host()?;
        Ok(z.into_iter().map(f32::abs).collect())
    };
    predict_stream_with(
        coarse_of,
        counter.config.input_scale,
        localizer,
        open,
        opts,
        sinks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_strongest_in_order() {
        let p = |x: f32, score: f32| Point { x, y: 0.0, score };
        let mut v = vec![
            p(0.0, 0.5),
            p(1.0, 0.1),
            p(2.0, 0.9),
            p(3.0, 0.5),
            p(4.0, 0.2),
        ];
        assert_eq!(prune(&mut v, 2), 2); // the two at 0.5 tie at the cut: both kept
        assert_eq!(v, vec![p(0.0, 0.5), p(2.0, 0.9), p(3.0, 0.5)]);
        assert_eq!(prune(&mut v, 5), 0);
    }
}
