//! Layers and the two networks, with parameter names as DESIGN §1 (torchvision VGG-19 features
//! and milesial's UNet state dicts map one to one).
pub mod config;
pub mod counter;
pub mod layers;
pub mod localizer;
pub mod params;

pub use config::{Backbone, ModelConfig, ModelKind};
pub use counter::Counter;
pub use layers::{apply_bn_updates, Forward};
pub use localizer::Localizer;
pub use params::{Bound, ParamId, ParamKind, ParamStore};

#[cfg(test)]
mod tests;
