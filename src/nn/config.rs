//! The model configuration a checkpoint carries in its `dcl.config` metadata (DESIGN §1), so a
//! checkpoint alone rebuilds its network.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Counter,
    Localizer,
    /// The coupled baseline: one UNet learning the density map from the image alone.
    Coupled,
}

impl ModelKind {
    /// `counter`, `localizer` or `coupled`, as configurations spell it; names a run's files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Counter => "counter",
            ModelKind::Localizer => "localizer",
            ModelKind::Coupled => "coupled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    #[value(name = "vgg19")]
    Vgg19,
    #[value(name = "vgg19_bn")]
    Vgg19Bn,
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backbone::Vgg19 => "vgg19",
            Backbone::Vgg19Bn => "vgg19_bn",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model: ModelKind,
    pub backbone: Backbone,
    /// K sampling points of GMP; 0 means the `--no-gmp` ablation (identity).
    pub gmp_points: usize,
    /// Scales every channel count of both networks (1.0 = the paper's widths).
    pub width_mult: f32,
    /// UNet base width w (64 in the paper), before `width_mult`.
    pub unet_width: usize,
    /// Density maps are multiplied by this for the localizer's input and loss.
    pub density_scale: f32,
    /// Gaussian σ (pixels at network resolution) of the ground-truth density maps.
    pub sigma: f32,
    /// Reading out points (localizer): local maxima above this many cells per pixel.
    #[serde(default = "default_point_threshold")]
    pub point_threshold: f32,
    /// Reading out points: minimum distance in pixels between two located cells.
    #[serde(default = "default_min_distance")]
    pub min_distance: f32,
    /// Localizer: hash of the counter checkpoint it was trained on.
    #[serde(default)]
    pub counter_hash: Option<String>,
    /// Resize factor the training data was preprocessed with (network pixels per image pixel),
    /// applied to images before counting.
    #[serde(default = "one")]
    pub input_scale: f32,
}

fn default_point_threshold() -> f32 {
    0.01
}
fn default_min_distance() -> f32 {
    2.0
}
fn one() -> f32 {
    1.0
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model: ModelKind::Counter,
            backbone: Backbone::Vgg19Bn,
            gmp_points: 8,
            width_mult: 1.0,
            unet_width: 64,
            density_scale: 100.0,
            sigma: 3.0,
            point_threshold: default_point_threshold(),
            min_distance: default_min_distance(),
            counter_hash: None,
            input_scale: 1.0,
        }
    }
}

/// ` (field NAME)` for the JSON key last seen before `line`:`column` of `s` (serde's error
/// positions), so an error names the field; empty when there is none.
fn field_before(s: &str, line: usize, column: usize) -> String {
    let Some(text) = s.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let head: String = text.chars().take(column).collect();
    let Some(colon) = head.rfind("\":") else {
        return String::new();
    };
    match head[..colon].rfind('"') {
        Some(open) => format!(" (field {})", &head[open + 1..colon]),
        None => String::new(),
    }
}

impl ModelConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    pub fn from_json(s: &str) -> Result<ModelConfig> {
        let c: ModelConfig = serde_json::from_str(s).map_err(|e| {
            let at = field_before(s, e.line(), e.column());
            Error::Invalid(format!("bad model configuration{at}: {e}"))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every field against the bounds below, before anything is built from it: a
    /// configuration read from a file (a checkpoint's `dcl.config`) cannot make the program
    /// allocate more than a network of these bounds, nor run with read-out settings the
    /// command line refuses. The error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, want: &str, got: String| {
            Err(Error::Invalid(format!("{field} must be {want}, got {got}")))
        };
        let finite_in = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !(self.width_mult > 0.0 && self.width_mult <= MAX_WIDTH_MULT) {
            return bad("width_mult", "in (0, 4]", self.width_mult.to_string());
        }
        if !(1..=MAX_UNET_WIDTH).contains(&self.unet_width) {
            return bad(
                "unet_width",
                &format!("in [1, {MAX_UNET_WIDTH}]"),
                self.unet_width.to_string(),
            );
        }
        let w = crate::nn::layers::scaled(self.unet_width, self.width_mult);
        if w > MAX_UNET_CHANNELS {
            return bad(
                "unet_width x width_mult",
                &format!("at most {MAX_UNET_CHANNELS} channels"),
                format!("{} x {} = {w}", self.unet_width, self.width_mult),
            );
        }
        if self.gmp_points > MAX_GMP_POINTS {
            return bad(
                "gmp_points",
                &format!("at most {MAX_GMP_POINTS}"),
                self.gmp_points.to_string(),
            );
        }
        if !(self.density_scale > 0.0 && self.density_scale <= MAX_DENSITY_SCALE) {
            return bad(
                "density_scale",
                &format!("in (0, {MAX_DENSITY_SCALE:e}]"),
                self.density_scale.to_string(),
            );
        }
        if !(self.sigma > 0.0 && self.sigma <= MAX_SIGMA) {
            return bad(
                "sigma",
                &format!("in (0, {MAX_SIGMA}] pixels"),
                self.sigma.to_string(),
            );
        }
        if !finite_in(self.input_scale, MIN_INPUT_SCALE, MAX_INPUT_SCALE) {
            return bad(
                "input_scale",
                &format!("in [1/{}, {MAX_INPUT_SCALE}]", 1.0 / MIN_INPUT_SCALE),
                self.input_scale.to_string(),
            );
        }
        if !finite_in(self.point_threshold, 0.0, f32::MAX) {
            return bad(
                "point_threshold",
                "a number >= 0",
                self.point_threshold.to_string(),
            );
        }
        if !finite_in(self.min_distance, 0.0, MAX_MIN_DISTANCE) {
            return bad(
                "min_distance",
                &format!("in [0, {MAX_MIN_DISTANCE}] pixels"),
                self.min_distance.to_string(),
            );
        }
        if let Some(h) = &self.counter_hash {
            if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(
                    "counter_hash",
                    "a hexadecimal hash",
                    format!("{:?}", h.chars().take(80).collect::<String>()),
                );
            }
        }
        Ok(())
    }

    /// How many values (parameters and BatchNorm running statistics) the network of this
    /// configuration holds, computed without building it: a checkpoint whose tensors hold
    /// another number is refused before anything is allocated. Saturates instead of
    /// overflowing (configurations are validated first anyway).
    pub fn parameter_count(&self) -> u64 {
        use crate::nn::layers::scaled;
        let conv = |c_in: usize, c_out: usize, k: usize, bias: bool| -> u64 {
            (c_in as u64)
                .saturating_mul(c_out as u64)
                .saturating_mul((k * k) as u64)
                .saturating_add(if bias { c_out as u64 } else { 0 })
        };
        let bn = |c: usize| 4 * c as u64;
        match self.model {
            ModelKind::Counter => {
                let mut n = 0u64;
                let mut c_in = 3;
                for c in VGG19_CHANNELS.iter().flatten() {
                    let c_out = scaled(*c, self.width_mult);
                    n = n.saturating_add(conv(c_in, c_out, 3, true));
                    if self.backbone == Backbone::Vgg19Bn {
                        n = n.saturating_add(bn(c_out));
                    }
                    c_in = c_out;
                }
                if self.gmp_points > 0 {
                    n = n.saturating_add(conv(c_in, 2 * self.gmp_points, 1, true));
                }
                n.saturating_add(conv(c_in, 1, 1, true))
            }
            ModelKind::Localizer | ModelKind::Coupled => {
                let w = scaled(self.unet_width, self.width_mult);
                let c_in = if self.model == ModelKind::Localizer {
                    4
                } else {
                    3
                };
                let double = |a: usize, m: usize, b: usize| -> u64 {
                    conv(a, m, 3, false)
                        .saturating_add(bn(m))
                        .saturating_add(conv(m, b, 3, false))
                        .saturating_add(bn(b))
                };
                crate::nn::unet::layer_widths(c_in, w)
                    .iter()
                    .fold(conv(w, 1, 1, true), |n, &(a, m, b)| {
                        n.saturating_add(double(a, m, b))
                    })
            }
        }
    }
}

/// VGG-19's convolution widths in `features` order (pools left out).
const VGG19_CHANNELS: [Option<usize>; 16] = [
    Some(64),
    Some(64),
    Some(128),
    Some(128),
    Some(256),
    Some(256),
    Some(256),
    Some(256),
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    Some(512),
];

/// Bounds of `ModelConfig::validate`.
pub const MAX_WIDTH_MULT: f32 = 4.0;
pub const MAX_UNET_WIDTH: usize = 1024;
/// The localizer's base width after `width_mult` (the paper: 64).
pub const MAX_UNET_CHANNELS: usize = 256;
pub const MAX_GMP_POINTS: usize = 64;
pub const MAX_DENSITY_SCALE: f32 = 1e6;
pub const MAX_SIGMA: f32 = 64.0;
/// Network pixels per image pixel: from 1/32 to 32 (the paper's data sets: 0.85 to 1.7).
pub const MIN_INPUT_SCALE: f32 = 1.0 / 32.0;
pub const MAX_INPUT_SCALE: f32 = 32.0;
pub const MAX_MIN_DISTANCE: f32 = 1e4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Counter, Localizer};

    fn numel(store: &crate::nn::ParamStore) -> u64 {
        store.iter().map(|(_, p)| p.value.numel() as u64).sum()
    }

    #[test]
    fn parameter_count_matches_the_built_networks() {
        for (backbone, k, wm, uw) in [
            (Backbone::Vgg19Bn, 8, 1.0 / 16.0, 64),
            (Backbone::Vgg19, 0, 1.0 / 8.0, 16),
            (Backbone::Vgg19Bn, 3, 0.1, 7),
        ] {
            let c = ModelConfig {
                backbone,
                gmp_points: k,
                width_mult: wm,
                unet_width: uw,
                ..ModelConfig::default()
            };
            assert_eq!(
                c.parameter_count(),
                numel(&Counter::new(&c, 0).unwrap().store)
            );
            let l = ModelConfig {
                model: ModelKind::Localizer,
                ..c
            };
            assert_eq!(
                l.parameter_count(),
                numel(&Localizer::new(&l, 0).unwrap().store)
            );
            let u = ModelConfig {
                model: ModelKind::Coupled,
                ..l
            };
            assert_eq!(
                u.parameter_count(),
                numel(&crate::nn::Coupled::new(&u, 0).unwrap().store)
            );
        }
    }

    /// Each field out of its bounds is refused with its name, before any network is built.
    #[test]
    fn out_of_bounds_fields_are_named() {
        let ok = ModelConfig::default();
        ok.validate().unwrap();
        let cases: Vec<(&str, ModelConfig)> = vec![
            (
                "input_scale",
                ModelConfig {
                    input_scale: 1e9,
                    ..ok.clone()
                },
            ),
            (
                "input_scale",
                ModelConfig {
                    input_scale: 1e-9,
                    ..ok.clone()
                },
            ),
            (
                "input_scale",
                ModelConfig {
                    input_scale: f32::NAN,
                    ..ok.clone()
                },
            ),
            (
                "unet_width",
                ModelConfig {
                    unet_width: 10_000_000,
                    ..ok.clone()
                },
            ),
            (
                "unet_width",
                ModelConfig {
                    unet_width: 0,
                    ..ok.clone()
                },
            ),
            (
                "unet_width x width_mult",
                ModelConfig {
                    unet_width: 1024,
                    width_mult: 4.0,
                    ..ok.clone()
                },
            ),
            (
                "width_mult",
                ModelConfig {
                    width_mult: f32::INFINITY,
                    ..ok.clone()
                },
            ),
            (
                "gmp_points",
                ModelConfig {
                    gmp_points: 65,
                    ..ok.clone()
                },
            ),
            (
                "density_scale",
                ModelConfig {
                    density_scale: f32::INFINITY,
                    ..ok.clone()
                },
            ),
            (
                "sigma",
                ModelConfig {
                    sigma: 1e30,
                    ..ok.clone()
                },
            ),
            (
                "point_threshold",
                ModelConfig {
                    point_threshold: -1.0,
                    ..ok.clone()
                },
            ),
            (
                "point_threshold",
                ModelConfig {
                    point_threshold: f32::NAN,
                    ..ok.clone()
                },
            ),
            (
                "min_distance",
                ModelConfig {
                    min_distance: -5.0,
                    ..ok.clone()
                },
            ),
            (
                "counter_hash",
                ModelConfig {
                    counter_hash: Some("../x".into()),
                    ..ok.clone()
                },
            ),
        ];
        for (field, c) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field} must be")), "{field}: {e}");
            assert!(Counter::new(&c, 0).is_err());
        }
        let e = ModelConfig::from_json(r#"{"model":"counter","backbone":"vgg19_bn","gmp_points":8,"width_mult":1,"unet_width":1e7,"density_scale":100,"sigma":3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unet_width"), "{e}");
    }
}
