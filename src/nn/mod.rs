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

#[cfg(test)]
mod tests;
