//! The model configuration a checkpoint carries in its `dcl.config` metadata (DESIGN §1), so a
//! checkpoint alone rebuilds its network.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Counter,
    Localizer,
}

impl ModelKind {
    /// `counter` or `localizer`, as configurations spell it; names a run's files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Counter => "counter",
            ModelKind::Localizer => "localizer",
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

impl ModelConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    pub fn from_json(s: &str) -> Result<ModelConfig> {
        let c: ModelConfig = serde_json::from_str(s)
            .map_err(|e| Error::Invalid(format!("bad model configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.width_mult > 0.0 && self.width_mult <= 4.0) {
            return Err(Error::Invalid(format!(
                "width_mult must be in (0, 4], got {}",
                self.width_mult
            )));
        }
        if self.unet_width == 0 {
            return Err(Error::Invalid("unet_width must be positive".into()));
        }
        if !(self.density_scale > 0.0 && self.sigma > 0.0 && self.input_scale > 0.0) {
            return Err(Error::Invalid(
                "density_scale, sigma and input_scale must be positive".into(),
            ));
        }
        if self.gmp_points > 64 {
            return Err(Error::Invalid(format!(
                "gmp_points {} is more than 64",
                self.gmp_points
            )));
        }
        Ok(())
    }
}
