//! `dcl count`: counts (and with a localizer, locates) cells in files and folders.
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::cli::count_pipeline::{run_stages, Stages};
use crate::cli::count_scale::{count_streamed, route, Route, StreamCtx};
use crate::cli::csv_field;
use crate::cli::models::Chosen;
use crate::cli::outputs::CountsFolder;
use crate::data::files::collect_inputs;
use crate::data::image_io::{decode, header_pixels};
use crate::infer::points::Point;
use crate::infer::stream::Readout;
use crate::infer::{predict, InferOptions, Prediction};
use crate::nn::CountNet;

#[derive(Args, Debug)]
pub struct CountArgs {
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub nets: crate::cli::models::ModelChoice,
    /// Output folder: counts.csv, report.html, points/, overlays/ and density/ per image.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write each image's density map as 32-bit float TIFF into this folder.
    #[arg(long)]
    pub density_dir: Option<PathBuf>,
    /// Only files whose name matches this pattern (`*` and `?`), e.g. '*cell.png'.
    #[arg(long)]
    pub glob: Option<String>,
    /// In folders whose layout is an annotated one (vgg, adi, mbm, dots, points-csv), count
    /// the annotation images too (by default they are left out, saying how many).
    #[arg(long)]
    pub all_images: bool,
    #[command(flatten)]
    pub points: crate::cli::outputs::PointOptions,
    /// Print the counts as JSON instead of CSV.
    #[arg(long)]
    pub json: bool,
    /// Points: local maxima above this density (cells per pixel); default from the checkpoint.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Points: minimum distance in network pixels (after the checkpoint's input scale);
    /// default from the checkpoint.
    #[arg(long)]
    pub min_distance: Option<f32>,
    /// Tile side in network pixels for large images.
    #[arg(long, default_value_t = 256)]
    pub tile: usize,
    /// Minimum overlap of neighbouring tiles in network pixels.
    #[arg(long, default_value_t = 32)]
    pub overlap: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub scale: super::count_scale::ScaleArgs,
}

/// Pixels of decoded images in flight between decoding and writing (about 100 MB as 8-bit
/// RGB); a larger image is processed alone.
const PIXELS_IN_FLIGHT: u64 = 32 << 20;

/// An image with its prediction and points, on its way to the writer.
type Counted = (image::DynamicImage, Prediction, Option<Vec<Point>>);

#[derive(Serialize)]
struct CountRow {
    image: String,
    count: f64,
    width: usize,
    height: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    points: Option<usize>,
}

impl CountRow {
    /// Its counts.csv fields.
    fn record(&self, hash: &str) -> Vec<String> {
        vec![
            self.image.clone(),
            format!("{:.3}", self.count),
            self.width.to_string(),
            self.height.to_string(),
            hash.to_string(),
        ]
    }
}

/// A count or density map that is not finite (weights that overflow) is this image's error,
/// never a `NaN` row or an empty list of located cells.
fn check_finite(p: &Prediction, chosen: &Chosen) -> anyhow::Result<()> {
    if !p.count.is_finite() || p.coarse.data.iter().any(|v| !v.is_finite()) {
        anyhow::bail!(
            "the counter {} gives a non-finite count ({}): its weights overflow on this image",
            chosen.counter_name.display(),
            p.count
        );
    }
    if let (Some(d), Some(l)) = (&p.density, &chosen.localizer_name) {
        if d.data.iter().any(|v| !v.is_finite()) {
            anyhow::bail!(
                "the localizer {} gives a non-finite density map: its weights overflow on this \
                 image",
                l.display()
            );
        }
    }
    Ok(())
}

/// Two inputs whose outputs would share a name (a.png and a.tif, or x/a.png and y/a.png given
/// as files) would overwrite each other's files: refused before any work.
fn check_unique_names(files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (path, name) in files {
        if let Some(first) = seen.insert(name.as_str(), path) {
            anyhow::bail!(
                "{} and {} would both write outputs named '{name}'; count them in separate runs",
                first.display(),
                path.display()
            );
        }
    }
    Ok(())
}

pub fn run(a: CountArgs) -> anyhow::Result<()> {
    let opts = InferOptions {
        tile: a.tile,
        overlap: a.overlap,
        ..InferOptions::default()
    };
    opts.checked_tile()?;
    for (flag, v) in [
        ("--threshold", a.threshold),
        ("--min-distance", a.min_distance),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            anyhow::bail!("{flag} must be a number >= 0, got {v}");
        }
    }
    let device = super::parse_device(&a.device)?;
    let chosen = a.nets.load(&device)?;
    let (counter, localizer, hash) = (
        &chosen.nets.counter,
        &chosen.nets.localizer,
        &chosen.nets.counter_hash,
    );
    a.gpu.apply(&counter.store().device())?;
    let outputs: Vec<PathBuf> = a.out.iter().chain(&a.density_dir).cloned().collect();
    let inputs = collect_inputs(&a.paths, a.glob.as_deref(), &outputs, !a.all_images)?;
    if let Some(note) = inputs.skipped_note() {
        eprintln!("{note}");
    }
    let files = inputs.files;
    if files.is_empty() {
        anyhow::bail!("no image files (png, jpeg, tiff) found in the given paths");
    }
    // what a shard records of how it counted (merge refuses shards counted otherwise)
    let settings = match a.scale.shard {
        Some(_) => serde_json::json!({
            "counter": hash,
            "localizer": chosen.nets.localizer_hash,
            "tile": opts.checked_tile()?, "overlap": a.overlap,
            "threshold": a.threshold, "min_distance": a.min_distance,
        }),
        None => serde_json::Value::Null,
    };
    let shard = super::shard::plan(files, a.scale.shard, a.out.as_deref(), settings)?;
    let files = shard.files;
    if !outputs.is_empty() {
        check_unique_names(&files)?;
    }
    // Points are read out only from a density map (a localizer's, or a coupled model's), at
    // its tuned defaults unless overridden.
    let cfg = match (&localizer, &counter) {
        (Some(l), _) => Some(l.config.clone()),
        (None, CountNet::Coupled(c)) => Some(c.config.clone()),
        (None, CountNet::Counter(_)) => None,
    };
    let threshold = a
        .threshold
        .or(cfg.as_ref().map(|c| c.point_threshold))
        .unwrap_or(0.01);
    let min_distance = a
        .min_distance
        .or(cfg.as_ref().map(|c| c.min_distance))
        .unwrap_or(2.0);
    // Outputs: the folder is marked, locked against a second run, its earlier rows read;
    // this run's names are checked against the images that own them, all before any work.
    let mut folder = match &a.out {
        Some(out) => {
            let mut f = CountsFolder::open(out)?;
            crate::cli::outputs::prepare(out, cfg.is_some())?;
            f.reserve(&files)?;
            if let Some(rec) = &shard.record {
                super::shard::write_record(out, rec)?;
            }
            Some(f)
        }
        None => None,
    };
    let _density_lock = match &a.density_dir {
        Some(dir) => {
            crate::cli::outputs::prepare_dir(dir, "density")?;
            Some(crate::fsutil::DirLock::acquire(dir)?)
        }
        None => None,
    };
    // Up front, from each file's header: images larger than --max-pixels (or too large to
    // decode whole and not readable region by region) are refused now, before any work;
    // whole-slide images are counted region by region after the others.
    let routes: Vec<Route> = files.iter().map(|(p, _)| route(p, &a.scale)).collect();
    for r in &routes {
        if let Route::Refused(msg) = r {
            eprintln!("error: {msg}");
        }
    }
    let whole: Vec<(PathBuf, String)> = files
        .iter()
        .zip(&routes)
        .filter(|(_, r)| matches!(r, Route::Memory))
        .map(|(f, _)| f.clone())
        .collect();
    let report = |bar: &indicatif::ProgressBar, path: &std::path::Path, e: &anyhow::Error| {
        // one line naming the file (most errors name it already)
        let msg = format!("{e:#}").replace('\n', " ");
        let shown = path.display().to_string();
        if msg.contains(&shown) {
            bar.suspend(|| eprintln!("error: {msg}"));
        } else {
            bar.suspend(|| eprintln!("error: {shown}: {msg}"));
        }
    };
    let t0 = std::time::Instant::now();
    let bar = crate::progress::progress_bar(whole.len() as u64, "counting", a.quiet);
    let stages = Stages {
        cost: |(path, _): &(PathBuf, String)| header_pixels(path),
        decode: |(path, _): &(PathBuf, String)| Ok(decode(path)?),
        compute: |_: &(PathBuf, String), img: image::DynamicImage| {
            let p = predict(counter, localizer.as_ref(), &img, &opts)?;
            check_finite(&p, &chosen)?;
            let points = p.points(threshold, min_distance);
            Ok((img, p, points))
        },
        write: |(path, name): &(PathBuf, String), (img, p, points): Counted| {
            if let Some(dir) = &a.density_dir {
                crate::cli::outputs::write_density(dir, name, &p)?;
            }
            if let Some(out) = &a.out {
                crate::cli::outputs::write_image_outputs(
                    out,
                    name,
                    &img,
                    &p,
                    points.as_deref(),
                    &a.points,
                )?;
            }
            let row = CountRow {
                image: path.display().to_string(),
                count: p.count,
                width: p.width,
                height: p.height,
                points: points.map(|v| v.len()),
            };
            if let Some(f) = &folder {
                f.journal(&row.record(hash));
            }
            Ok(row)
        },
    };
    let (results, times) = run_stages(&whole, PIXELS_IN_FLIGHT, stages, |(path, _), r| {
        if let Err(e) = r {
            report(&bar, path, e);
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    // The whole-slide images, one at a time, each with its progress in tiles.
    let ctx = StreamCtx {
        counter,
        localizer: localizer.as_ref(),
        points: &a.points,
        readout: Readout {
            threshold,
            min_distance,
        },
        opts,
        out: a.out.as_deref(),
        density_dir: a.density_dir.as_deref(),
        quiet: a.quiet,
    };
    let mut streamed_time = std::time::Duration::ZERO;
    let mut whole_results = results.into_iter();
    let mut results = Vec::with_capacity(files.len());
    for ((path, name), r) in files.iter().zip(&routes) {
        results.push(match r {
            Route::Memory => whole_results.next().expect("one result per image"),
            Route::Refused(msg) => Err(anyhow::anyhow!("{msg}")),
            Route::Stream(probe) => {
                let t = std::time::Instant::now();
                let r = count_streamed(path, name, probe, &ctx).map(|s| {
                    let row = CountRow {
                        image: path.display().to_string(),
                        count: s.count,
                        width: s.width,
                        height: s.height,
                        points: s.points,
                    };
                    if let Some(f) = &folder {
                        f.journal(&row.record(hash));
                    }
                    row
                });
                streamed_time += t.elapsed();
                if let Err(e) = &r {
                    report(&indicatif::ProgressBar::hidden(), path, e);
                }
                r
            }
        });
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for ((path, _), r) in files.iter().zip(results) {
        match r {
            Ok(row) => rows.push(row),
            Err(_) => failed.push(path.clone()),
        }
    }
    // The counts go to stdout first, so they are never lost if counts.csv cannot be written
    // (and counts.csv is written even if stdout is gone, e.g. a closed pipe).
    let printed = (|| -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        if a.json {
            writeln!(o, "{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            writeln!(o, "image,count")?;
            for r in &rows {
                writeln!(o, "{},{:.3}", csv_field(&r.image), r.count)?;
            }
        }
        Ok(o.flush()?)
    })();
    if let Some(f) = folder.take() {
        f.finish(rows.iter().map(|r| r.record(hash)).collect())?;
        let out = a.out.as_deref().expect("a folder has its path");
        if let Err(e) = crate::cli::report::count_report(
            out,
            (a.tile, a.overlap),
            &a.device,
            &chosen,
            threshold,
            min_distance,
        ) {
            eprintln!("warning: {}: cannot write the report: {e:#}", out.display());
        }
    }
    printed.map_err(|e| e.context("cannot print the counts on stdout"))?;
    if !a.quiet {
        let wall = t0.elapsed().as_secs_f64();
        let busy = (times.compute + streamed_time).as_secs_f64();
        let rate = rows.len() as f64 / wall.max(1e-9);
        let rate = if rate >= 1.0 || rows.is_empty() {
            format!("{rate:.2} images/s")
        } else {
            format!("{:.2} s/image", 1.0 / rate)
        };
        eprintln!(
            "{} images in {wall:.2}s ({rate}); networks busy {:.2}s ({:.0}% of the time), \
             decoding {:.2}s and writing {:.2}s on their own threads",
            rows.len(),
            busy,
            100.0 * busy / wall.max(1e-9),
            times.decode.as_secs_f64(),
            times.write.as_secs_f64()
        );
    }
    if !failed.is_empty() {
        let mut names: Vec<String> = failed
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        if failed.len() > 3 {
            names.push(format!("and {} more", failed.len() - 3));
        }
        anyhow::bail!(
            "{} of {} images could not be counted: {} (each error above)",
            failed.len(),
            files.len(),
            names.join(", ")
        );
    }
    Ok(())
}
