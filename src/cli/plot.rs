//! `dcl plot RUNDIR`: training curves (loss, learning rate, validation scores) as PNG.
use std::path::PathBuf;

use clap::Args;

use crate::report::plot::{line_chart, save_png, stack_vertical, Series};
use crate::train::RunLog;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// A run folder written by `dcl train`.
    pub run: PathBuf,
    /// Output PNG (default: RUNDIR/curves.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let records = RunLog::read(&a.run)?;
    if records.is_empty() {
        anyhow::bail!("{}: metrics.jsonl holds no epochs yet", a.run.display());
    }
    let mut panels = Vec::new();
    for model in ["counter", "localizer"] {
        let rs: Vec<_> = records.iter().filter(|r| r.model == model).collect();
        if rs.is_empty() {
            continue;
        }
        let series = |label: &str, f: &dyn Fn(&crate::train::EpochRecord) -> Option<f64>| Series {
            label: label.to_string(),
            points: rs
                .iter()
                .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
                .collect(),
        };
        let loss_name = if model == "counter" {
            "train count loss (L1)"
        } else {
            "train loss (MSE)"
        };
        panels.push(line_chart(
            &format!("{model}: training loss"),
            "epoch",
            "loss",
            &[series(loss_name, &|r| Some(r.train_loss))],
            true,
        ));
        let val: Vec<Series> = [
            series("val MAE", &|r| r.val_mae),
            series("val RMSE", &|r| r.val_rmse),
            series("val MSE", &|r| r.val_mse),
        ]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
        if !val.is_empty() {
            panels.push(line_chart(
                &format!("{model}: validation"),
                "epoch",
                "score",
                &val,
                false,
            ));
        }
        panels.push(line_chart(
            &format!("{model}: learning rate"),
            "epoch",
            "lr",
            &[series("lr at epoch end", &|r| Some(r.lr))],
            true,
        ));
    }
    let out = a.out.unwrap_or_else(|| a.run.join("curves.png"));
    save_png(&stack_vertical(&panels), &out)?;
    println!("{}", out.display());
    Ok(())
}
