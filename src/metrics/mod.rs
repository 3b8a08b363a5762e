//! Scores of predictions against the truth (DESIGN §1): count metrics and one-to-one point
//! matching. Plain numbers in, numbers out: this module imports nothing of the crate, so
//! validation during training and `dcl eval` score alike.
mod count;
mod matching;

pub use count::{count_metrics, CountMetrics};
pub use matching::{hungarian, match_points, MatchCounts};
