//! What people see of results: plots, count overlays, and the per-op time breakdown of
//! `--profile`.
pub mod exchange;
pub mod html;
pub mod overlay;
pub mod plot;
pub mod text;

use crate::autograd::Profile;

/// A profile as a table: op, total ms, calls, share; largest first.
pub fn profile_table(profile: &Profile) -> String {
    let totals = profile.totals();
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
