//! The localizer (DESIGN §1): milesial's UNet (bilinear=True) on the normalised image plus the
//! counter's coarse map |z|, resized to the input and rescaled so it still sums to the count.
use crate::autograd::Var;
use crate::error::Result;
use crate::nn::config::ModelConfig;
use crate::nn::layers::{check_image_batch, scaled, Conv2d, ConvInit, DoubleConv, Forward};
use crate::nn::params::ParamStore;
use crate::ops::concat::concat_channels;
use crate::ops::elementwise::{abs, scale};
use crate::ops::max_pool2d::max_pool2d;
use crate::ops::upsample_bilinear::upsample_bilinear;
use crate::rng::Rng;
use crate::tensor::Tensor;

pub struct Localizer {
    pub config: ModelConfig,
    pub store: ParamStore,
    inc: DoubleConv,
    downs: Vec<DoubleConv>,
    ups: Vec<DoubleConv>,
    outc: Conv2d,
}

impl Localizer {
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Localizer> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut s = ParamStore::default();
        let w = scaled(config.unet_width, config.width_mult);
        let inc = DoubleConv::new(&mut s, "localizer.inc", 4, w, w, &mut rng);
        let down = [(w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w)];
        let downs = down
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let name = format!("localizer.down{}.maxpool_conv.1", i + 1);
                DoubleConv::new(&mut s, &name, a, b, b, &mut rng)
            })
            .collect();
        // (in = skip + upsampled, mid, out)
        let up = [
            (16 * w, 8 * w, 4 * w),
            (8 * w, 4 * w, 2 * w),
            (4 * w, 2 * w, w),
            (2 * w, w, w),
        ];
        let ups = up
            .iter()
            .enumerate()
            .map(|(i, &(a, m, b))| {
                let name = format!("localizer.up{}.conv", i + 1);
                DoubleConv::new(&mut s, &name, a, m, b, &mut rng)
            })
            .collect();
        let outc = Conv2d::new(
            &mut s,
            "localizer.outc.conv",
            w,
            1,
            1,
            0,
            true,
            ConvInit::Default,
            &mut rng,
        );
        Ok(Localizer {
            config: config.clone(),
            store: s,
            inc,
            downs,
            ups,
            outc,
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
        let mut skips = vec![self.inc.forward(f, &x)?];
        for down in &self.downs {
            let p = max_pool2d(f.tape, skips.last().expect("non-empty"))?;
            skips.push(down.forward(f, &p)?);
        }
        let mut h = skips.pop().expect("five levels");
        for up in &self.ups {
            let skip = skips.pop().expect("one skip per level");
            let (sh, sw) = (skip.dims()[2], skip.dims()[3]);
            let u = upsample_bilinear(f.tape, &h, sh, sw, true)?;
            h = up.forward(f, &concat_channels(f.tape, &[&skip, &u])?)?;
        }
        self.outc.forward(f, &h)
    }

    /// `forward` in inference mode (see `Forward::inference`) on images moved first to the
    /// device the localizer lives on; `z` must already be there.
    pub fn infer(&self, images: Tensor, z: &Var) -> Result<Var> {
        let images = Var::constant(images.into_device(&self.store.device())?);
        Forward::inference(&self.store, |f| self.forward(f, &images, z))
    }
}
