//! The localizer (DESIGN §1): milesial's UNet (bilinear=True) on the normalised image plus the
//! counter's coarse map |z|, resized to the input and rescaled so it still sums to the count.
use crate::autograd::Var;
use crate::error::Result;
use crate::nn::config::ModelConfig;
use crate::nn::layers::{check_image_batch, scaled, Forward};
use crate::nn::params::ParamStore;
use crate::nn::unet::Unet;
use crate::ops::concat::concat_channels;
use crate::ops::elementwise::{abs, scale};
use crate::ops::upsample_bilinear::upsample_bilinear;
use crate::rng::Rng;
use crate::tensor::Tensor;

pub struct Localizer {
    pub config: ModelConfig,
    pub store: ParamStore,
    unet: Unet,
}

impl Localizer {
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Localizer> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut store = ParamStore::default();
        let w = scaled(config.unet_width, config.width_mult);
        let unet = Unet::new(&mut store, "localizer", 4, w, &mut rng);
        Ok(Localizer {
            config: config.clone(),
            store,
            unet,
        })
    }

    /// The 4-channel input: normalised RGB and |z| resized to the image (bilinear,
    /// align_corners=False), divided by the area factor and times `density_scale`.
    pub fn input(&self, f: &Forward, images: &Var, z: &Var) -> Result<Var> {
        let (h, w) = (images.dims()[2], images.dims()[3]);
        let (zh, zw) = (z.dims()[2], z.dims()[3]);
        let coarse = abs(f.tape, z)?;
        let up = upsample_bilinear(f.tape, &coarse, h, w, false)?;
        let area = (h * w) as f32 / (zh * zw) as f32;
        let up = scale(f.tape, &up, self.config.density_scale / area)?;
        concat_channels(f.tape, &[images, &up])
    }

    /// Predicted density × density_scale, [N,1,H,W], for images [N,3,H,W] (H, W multiples of
    /// 16) and the counter's coarse map z.
    pub fn forward(&self, f: &Forward, images: &Var, z: &Var) -> Result<Var> {
        check_image_batch("localizer", images.dims())?;
        let x = self.input(f, images, z)?;
        self.unet.forward(f, &x)
    }

    /// `forward` in inference mode (see `Forward::inference`) on images moved first to the
    /// device the localizer lives on; `z` must already be there.
    pub fn infer(&self, images: Tensor, z: &Var) -> Result<Var> {
        let images = Var::constant(images.into_device(&self.store.device())?);
        Forward::inference(&self.store, |f| self.forward(f, &images, z))
    }
}
