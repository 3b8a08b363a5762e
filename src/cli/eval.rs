//! `dcl eval`: count metrics and, with a localizer, localization scores on an annotated folder.
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::data::{DataOptions, Dataset, Format, SplitSpec};
use crate::eval::evaluate;

#[derive(Args, Debug)]
#[command(
    after_help = "Metrics: MAE = mean |predicted - true| over images. RMSE = sqrt(mean \
(predicted - true)^2): this is the column the DCL paper (and the crowd-counting literature) \
labels \"MSE\". MSE here is the true mean squared error, RMSE squared."
)]
pub struct EvalArgs {
    /// The networks; with a localizer, localization is scored too (precision, recall and F1
    /// of located cells).
    #[command(flatten)]
    pub nets: crate::cli::models::ModelChoice,
    /// Annotated folder (layout detected, or see --format).
    #[arg(long)]
    pub data: PathBuf,
    /// Force a layout: vgg, adi, mbm, dots[:SUFFIX], points-csv.
    #[arg(long)]
    pub format: Option<String>,
    /// Evaluate one part of a seeded split of --data (as `dcl train --split`), e.g. 10:9:1.
    #[arg(long)]
    pub split: Option<String>,
    /// The part of --split to evaluate: train, test or val.
    #[arg(long, default_value = "test", requires = "split")]
    pub part: String,
    /// Seed of --split (the training run's --seed).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Skip unreadable or badly annotated files, listing them.
    #[arg(long)]
    pub skip_bad: bool,
    /// Matching radius in network pixels (default 1.25 σ).
    #[arg(long)]
    pub radius: Option<f32>,
    /// Write per_image.csv, summary.json, plots, overlays and report.html here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let device = super::parse_device(&a.device)?;
    let chosen = a.nets.load(&device)?;
    let (counter, localizer) = (&chosen.nets.counter, &chosen.nets.localizer);
    a.gpu.apply(&counter.store().device())?;
    if let Some(out) = &a.out {
        // created, checked and marked before the work (so never read as input later)
        crate::fsutil::prepare_output_dir(out, "eval")?;
    }
    let format: Option<Format> = a.format.as_deref().map(str::parse).transpose()?;
    let opts = DataOptions {
        format,
        sigma: counter.config().sigma,
        skip_bad: a.skip_bad,
        ..DataOptions::default()
    };
    let ds = Arc::new(Dataset::open(&a.data, &opts)?);
    for (path, why) in ds.skipped() {
        eprintln!("skipped {}: {why}", path.display());
    }
    let idx: Vec<usize> = match &a.split {
        None => (0..ds.len()).collect(),
        Some(r) => {
            let split = ds.split(&SplitSpec {
                seed: a.split_seed,
                ratios: SplitSpec::parse_ratios(r)?,
                group: None,
            })?;
            match a.part.as_str() {
                "train" => split.train,
                "test" => split.test,
                "val" => split.val,
                other => anyhow::bail!("--part must be train, test or val, not '{other}'"),
            }
        }
    };
    if idx.is_empty() {
        anyhow::bail!("{}: no images to evaluate", a.data.display());
    }
    let e = evaluate(
        counter,
        localizer.as_ref(),
        &ds,
        &idx,
        a.batch_size,
        a.radius,
    )?;
    let (counts, m) = (&e.counts, &e.metrics);
    if let Some(c) = counts.iter().find(|c| !c.predicted.is_finite()) {
        anyhow::bail!(
            "{}: the counter {} gives a non-finite count ({}): its weights overflow on this image",
            c.image,
            chosen.counter_name.display(),
            c.predicted
        );
    }

    let mut csv = String::from("image,predicted,true,error\n");
    for c in counts {
        csv += &format!(
            "{},{:.3},{},{:.3}\n",
            super::csv_field(&c.image),
            c.predicted,
            c.truth,
            c.predicted - c.truth
        );
    }
    print!("{csv}");
    println!(
        "images {}  MAE {:.3}  RMSE {:.3} (the paper's \"MSE\")  MSE {:.3}",
        m.n, m.mae, m.rmse, m.mse
    );
    let mut summary =
        serde_json::json!({ "images": m.n, "mae": m.mae, "rmse": m.rmse, "mse": m.mse });
    if let Some((radius, total)) = e.localization {
        println!(
            "localization (radius {radius:.2} px): precision {:.3}  recall {:.3}  F1 {:.3}",
            total.precision(),
            total.recall(),
            total.f1()
        );
        summary["radius"] = radius.into();
        summary["precision"] = total.precision().into();
        summary["recall"] = total.recall().into();
        summary["f1"] = total.f1().into();
    }
    if let Some(out) = &a.out {
        crate::fsutil::atomic_write(&out.join("per_image.csv"), csv.as_bytes())?;
        crate::fsutil::atomic_write(
            &out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        use crate::report::plot::{histogram, save_png, scatter};
        let xy: Vec<(f64, f64)> = counts.iter().map(|c| (c.truth, c.predicted)).collect();
        save_png(
            &scatter(
                "predicted vs true counts",
                "true count",
                "predicted count",
                &xy,
                true,
            ),
            &out.join("scatter.png"),
        )?;
        let errors: Vec<f64> = counts.iter().map(|c| c.predicted - c.truth).collect();
        save_png(
            &histogram(
                "count errors (predicted - true)",
                "error (cells)",
                &errors,
                20,
            ),
            &out.join("errors.png"),
        )?;
        let rows = write_overlays(out, &a, &ds, counts, counter, localizer.as_ref());
        let mut report_summary = vec![
            ("images".to_string(), m.n.to_string()),
            ("MAE".to_string(), format!("{:.3}", m.mae)),
            (
                "RMSE (the paper's \"MSE\")".to_string(),
                format!("{:.3}", m.rmse),
            ),
            ("MSE".to_string(), format!("{:.3}", m.mse)),
        ];
        let mut settings = vec![
            ("counter".to_string(), chosen.counter_setting()),
            ("data".to_string(), a.data.display().to_string()),
            (
                "layout".to_string(),
                ds.format().map_or("synthetic".into(), |f| f.to_string()),
            ),
        ];
        if let Some(s) = &a.split {
            settings.push((
                "split".into(),
                format!("{s} seed {} part {}", a.split_seed, a.part),
            ));
        }
        if let (Some(l), Some((radius, total))) = (chosen.localizer_setting(), e.localization) {
            settings.push(("localizer".into(), l));
            settings.push((
                "matching radius (network px)".into(),
                format!("{radius:.2}"),
            ));
            report_summary.push(("precision".into(), format!("{:.3}", total.precision())));
            report_summary.push(("recall".into(), format!("{:.3}", total.recall())));
            report_summary.push(("F1".into(), format!("{:.3}", total.f1())));
        }
        settings.push(("device".into(), a.device.clone()));
        crate::cli::report::eval_report(out, &rows, report_summary, settings)?;
    }
    Ok(())
}

/// Writes each evaluated image's overlay (with a localizer, its located cells ringed, read out
/// from the whole image as `dcl count` does; the predicted and true counts in the corner) and
/// thumbnail into `out`, and returns the report's rows. An image that cannot be drawn is
/// reported and keeps its row without an overlay.
fn write_overlays(
    out: &std::path::Path,
    a: &EvalArgs,
    ds: &Dataset,
    counts: &[crate::infer::dataset::ImageCount],
    counter: &crate::nn::CountNet,
    localizer: Option<&crate::nn::Localizer>,
) -> Vec<crate::cli::report::EvalRow> {
    let ready = ["overlays", "thumbs"]
        .iter()
        .try_for_each(|d| crate::fsutil::prepare_subdir(&out.join(d)));
    if let Err(e) = &ready {
        eprintln!("warning: {}: no overlays: {e}", out.display());
    }
    let mut rows = Vec::new();
    for c in counts {
        let info = ds
            .images()
            .iter()
            .find(|i| i.path.display().to_string() == c.image);
        let path = std::path::Path::new(&c.image);
        let rel = path
            .strip_prefix(&a.data)
            .unwrap_or(path)
            .with_extension("");
        let name = rel.to_string_lossy().replace(['/', '\\'], "__");
        let mut row = crate::cli::report::EvalRow {
            image: c.image.clone(),
            name: name.clone(),
            predicted: c.predicted,
            truth: c.truth,
            width: info.map_or(0, |i| i.width),
            height: info.map_or(0, |i| i.height),
            located: None,
        };
        if ready.is_ok() {
            let drawn = (|| -> anyhow::Result<Option<usize>> {
                let img = crate::data::image_io::decode(path)?;
                // located cells from a density map: the localizer's, or a coupled model's own
                let readout = match (localizer, counter) {
                    (Some(l), _) => Some(&l.config),
                    (None, crate::nn::CountNet::Coupled(c)) => Some(&c.config),
                    (None, crate::nn::CountNet::Counter(_)) => None,
                };
                let points = match readout {
                    Some(cfg) => crate::infer::predict(
                        counter,
                        localizer,
                        &img,
                        &crate::infer::InferOptions::default(),
                    )?
                    .points(cfg.point_threshold, cfg.min_distance),
                    None => None,
                };
                let text = format!("pred {:.1} / true {}", c.predicted, c.truth);
                let ov = crate::report::overlay::overlay_text(&img, points.as_deref(), &text);
                crate::cli::outputs::write_png(
                    &out.join("overlays").join(format!("{name}.png")),
                    &ov,
                )?;
                crate::cli::outputs::write_thumbnail(out, &name, &ov)?;
                Ok(points.map(|p| p.len()))
            })();
            match drawn {
                Ok(k) => row.located = k,
                Err(e) => eprintln!("warning: {}: no overlay: {e:#}", c.image),
            }
        }
        rows.push(row);
    }
    rows
}
