//! Progress bars for long jobs (training epochs, counting a folder), on stderr.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
