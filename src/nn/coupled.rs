//! The coupled baseline (issue 14, the paper's Table 2): the common practice DCL argues
//! against, one network that learns the count through a full-resolution density map. It is
//! milesial's UNet (bilinear=True, n_channels=3) on the normalised image alone, trained with
//! MSE on density × density_scale; its count is the sum of its map (negative values clamped,
//! as the localizer's), so counting and locating come from one map.
use crate::autograd::Var;
use crate::error::Result;
use crate::nn::config::ModelConfig;
use crate::nn::layers::{check_image_batch, scaled, Forward};
use crate::nn::params::ParamStore;
use crate::nn::unet::Unet;
use crate::rng::Rng;
use crate::tensor::Tensor;

pub struct Coupled {
    pub config: ModelConfig,
    pub store: ParamStore,
    unet: Unet,
}

impl Coupled {
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Coupled> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut store = ParamStore::default();
        let w = scaled(config.unet_width, config.width_mult);
        let unet = Unet::new(&mut store, "coupled", 3, w, &mut rng);
        Ok(Coupled {
            config: config.clone(),
            store,
            unet,
        })
    }

    /// Predicted density × density_scale, [N,1,H,W], for images [N,3,H,W] (H, W multiples of
    /// 16).
    pub fn forward(&self, f: &Forward, images: &Var) -> Result<Var> {
        check_image_batch("coupled", images.dims())?;
        self.unet.forward(f, images)
    }

    /// `forward` in inference mode on images moved first to the network's device.
    pub fn infer(&self, images: Tensor) -> Result<Var> {
        let images = Var::constant(images.into_device(&self.store.device())?);
        Forward::inference(&self.store, |f| self.forward(f, &images))
    }

    /// The density maps on the host, cells per pixel (clamped at 0), [N·H·W] row-major.
    pub fn density(&self, images: Tensor) -> Result<Vec<f32>> {
        let inv = 1.0 / self.config.density_scale;
        let mut d = self.infer(images)?.value().to_host()?;
        d.iter_mut().for_each(|v| *v = v.max(0.0) * inv);
        Ok(d)
    }
}
