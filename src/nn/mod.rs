//! Layers and the two networks, with parameter names as DESIGN §1 (torchvision VGG-19 features
//! and milesial's UNet state dicts map one to one).
pub mod config;
pub mod counter;
pub mod coupled;
pub mod layers;
pub mod localizer;
pub mod params;
pub mod unet;

pub use config::{Backbone, ModelConfig, ModelKind};
pub use counter::Counter;
pub use coupled::Coupled;
pub use layers::{apply_bn_updates, Forward};
pub use localizer::Localizer;
pub use params::{Bound, ParamId, ParamKind, ParamStore};

use crate::error::Result;

/// What training, checkpoints and tooling need of either network besides its forward pass:
/// which network it is, how to build it, its configuration and its parameters.
pub trait Network: Sized {
    const KIND: ModelKind;
    /// A freshly initialised network (`seed` drives the initialisation).
    fn new(config: &ModelConfig, seed: u64) -> Result<Self>;
    fn config(&self) -> &ModelConfig;
    fn store(&self) -> &ParamStore;
    fn store_mut(&mut self) -> &mut ParamStore;
}

/// Both networks keep their configuration and parameters in the fields `config` and `store`.
macro_rules! network {
    ($net:ident) => {
        impl Network for $net {
            const KIND: ModelKind = ModelKind::$net;
            fn new(config: &ModelConfig, seed: u64) -> Result<$net> {
                $net::new(config, seed)
            }
            fn config(&self) -> &ModelConfig {
                &self.config
            }
            fn store(&self) -> &ParamStore {
                &self.store
            }
            fn store_mut(&mut self) -> &mut ParamStore {
                &mut self.store
            }
        }
    };
}
network!(Counter);
network!(Localizer);
network!(Coupled);

/// A network that counts images: the decoupled counter, or the coupled baseline (whose count
/// is the sum of its density map). Evaluation and counting take either.
pub enum CountNet {
    Counter(Counter),
    Coupled(Coupled),
}

impl CountNet {
    pub fn config(&self) -> &ModelConfig {
        match self {
            CountNet::Counter(n) => &n.config,
            CountNet::Coupled(n) => &n.config,
        }
    }
    pub fn store(&self) -> &ParamStore {
        match self {
            CountNet::Counter(n) => &n.store,
            CountNet::Coupled(n) => &n.store,
        }
    }
    pub fn store_mut(&mut self) -> &mut ParamStore {
        match self {
            CountNet::Counter(n) => &mut n.store,
            CountNet::Coupled(n) => &mut n.store,
        }
    }
    /// The counter, for what only it has (a localizer's input).
    pub fn counter(&self) -> Option<&Counter> {
        match self {
            CountNet::Counter(n) => Some(n),
            CountNet::Coupled(_) => None,
        }
    }
}

/// What counts images: each image's predicted count, for images [N,3,H,W] (H, W multiples of
/// 16), in inference mode.
pub trait ImageCounts {
    fn image_counts(&self, images: crate::tensor::Tensor) -> Result<Vec<f32>>;
}

impl ImageCounts for Counter {
    fn image_counts(&self, images: crate::tensor::Tensor) -> Result<Vec<f32>> {
        crate::ops::loss::per_image_counts(self.infer(images)?.value())
    }
}

impl ImageCounts for Coupled {
    /// Σ max(d, 0) / density_scale per image, summed where the map lives (a GPU returns N
    /// numbers, not the maps).
    fn image_counts(&self, images: crate::tensor::Tensor) -> Result<Vec<f32>> {
        let d = crate::ops::relu::relu_forward(self.infer(images)?.value())?;
        let inv = 1.0 / self.config.density_scale;
        let sums = crate::ops::loss::per_image_counts(&d)?;
        Ok(sums.into_iter().map(|c| c * inv).collect())
    }
}

impl ImageCounts for CountNet {
    fn image_counts(&self, images: crate::tensor::Tensor) -> Result<Vec<f32>> {
        match self {
            CountNet::Counter(n) => n.image_counts(images),
            CountNet::Coupled(n) => n.image_counts(images),
        }
    }
}

#[cfg(test)]
mod tests;
