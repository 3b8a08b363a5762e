//! What people see while jobs run: progress bars (hidden when stderr is not a terminal), one
//! summary line per epoch, and the per-op time breakdown of `--profile`.
pub mod font;
pub mod overlay;
pub mod plot;

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::autograd::Profile;
use crate::train::EpochRecord;

/// A bar with rate and ETA on stderr; invisible when `quiet` or stderr is not a terminal.
pub fn progress_bar(len: u64, message: &str, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

pub fn epoch_line(r: &EpochRecord) -> String {
    let mut s = format!(
        "{} epoch {:>3}  steps {:>6}  lr {:.2e}  loss {:.4}",
        r.model, r.epoch, r.steps, r.lr, r.train_loss
    );
    if let Some(m) = r.val_mae {
        s += &format!("  val MAE {m:.2}");
    }
    if let Some(m) = r.val_rmse {
        s += &format!("  val RMSE {m:.2}");
    }
    if let Some(m) = r.val_mse {
        s += &format!("  val MSE {m:.5}");
    }
    s + &format!("  ({:.1}s)", r.seconds)
}

static PROFILE: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

/// Adds one step's per-op timings to the process-wide profile.
pub fn record_profile(p: Profile) {
    PROFILE.lock().expect("profile lock").extend(p.entries);
}

/// The accumulated profile as a table: op, total ms, calls, share; largest first.
pub fn profile_table() -> String {
    let entries = std::mem::take(&mut *PROFILE.lock().expect("profile lock"));
    let totals = Profile { entries }.totals();
    let all: f64 = totals.iter().map(|t| t.1.as_secs_f64()).sum();
    let gpus: Vec<String> = crate::device::cuda::opened_devices()
        .iter()
        .map(|d| format!("cuda:{}", d.ordinal()))
        .collect();
    let mut s = if gpus.is_empty() {
        "per-op wall time (CPU)\n".to_string()
    } else {
        format!(
            "per-op time on {}: wall time with the CUDA stream synchronised before and after \
             each op, so it is the op's GPU time (plus launch overhead)\n",
            gpus.join(", ")
        )
    };
    s += &format!(
        "{:<28} {:>12} {:>8} {:>7}\n",
        "op", "total ms", "calls", "share"
    );
    for (name, d, calls) in totals {
        s += &format!(
            "{:<28} {:>12.2} {:>8} {:>6.1}%\n",
            name,
            d.as_secs_f64() * 1e3,
            calls,
            100.0 * d.as_secs_f64() / all.max(1e-12)
        );
    }
    s
}
