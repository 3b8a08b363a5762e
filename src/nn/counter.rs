//! The counter (DESIGN §1): VGG-19 features without the last max-pool, bilinear x2, global
//! message passing, and a 1x1 head giving the coarse map z; the count is Σ|z|.
use crate::autograd::Var;
use crate::error::Result;
use crate::nn::config::{Backbone, ModelConfig};
use crate::nn::layers::{check_image_batch, scaled, BatchNorm2d, Conv2d, ConvInit, Forward};
use crate::nn::params::ParamStore;
use crate::ops::gmp::gmp_residual;
use crate::ops::max_pool2d::max_pool2d;
use crate::ops::relu::relu;
use crate::ops::upsample_bilinear::upsample_bilinear;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// torchvision's `cfgs["E"]` (VGG-19) without its final "M".
const VGG19_CFG: [Option<usize>; 20] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    Some(512),
];

/// One entry of `features`, at its torchvision index.
enum Feature {
    Conv(Conv2d),
    Bn(BatchNorm2d),
    Relu,
    Pool,
}

/// Global message passing: y = x + mean_k x(p + offset_k(x)).
pub struct Gmp {
    offset: Conv2d,
}

impl Gmp {
    /// Offsets start as K distinct moves (directions spread around the circle, radii 2, 4 and 8
    /// feature pixels) with small random weights, so the K points differ from the first step.
    pub fn new(store: &mut ParamStore, name: &str, c: usize, k: usize, rng: &mut Rng) -> Gmp {
        let offset = Conv2d::new(
            store,
            name,
            c,
            2 * k,
            1,
            0,
            true,
            ConvInit::Normal(1e-3),
            rng,
        );
        let mut bias = vec![0f32; 2 * k];
        for i in 0..k {
            let angle = 2.0 * std::f32::consts::PI * i as f32 / k as f32;
            let radius = (2u32 << (i % 3)) as f32;
            bias[2 * i] = radius * angle.cos();
            bias[2 * i + 1] = radius * angle.sin();
        }
        let b = offset.bias.expect("offset conv has a bias");
        store
            .set(b, Tensor::from_vec(bias, &[2 * k]).expect("bias shape"))
            .expect("bias shape");
        Gmp { offset }
    }

    pub fn forward(&self, f: &Forward, x: &Var) -> Result<Var> {
        let o = self.offset.forward(f, x)?;
        gmp_residual(f.tape, x, &o)
    }
}

pub struct Counter {
    pub config: ModelConfig,
    pub store: ParamStore,
    features: Vec<Feature>,
    gmp: Option<Gmp>,
    head: Conv2d,
}

impl Counter {
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Counter> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut store = ParamStore::default();
        let mut features = Vec::new();
        let mut c_in = 3;
        for entry in VGG19_CFG {
            let idx = features.len();
            match entry {
                None => features.push(Feature::Pool),
                Some(c) => {
                    let c_out = scaled(c, config.width_mult);
                    let name = format!("counter.features.{idx}");
                    let conv = Conv2d::new(
                        &mut store,
                        &name,
                        c_in,
                        c_out,
                        3,
                        1,
                        true,
                        ConvInit::KaimingFanOut,
                        &mut rng,
                    );
                    features.push(Feature::Conv(conv));
                    if config.backbone == Backbone::Vgg19Bn {
                        let name = format!("counter.features.{}", idx + 1);
                        features.push(Feature::Bn(BatchNorm2d::new(&mut store, &name, c_out)));
                    }
                    features.push(Feature::Relu);
                    c_in = c_out;
                }
            }
        }
        let gmp = (config.gmp_points > 0).then(|| {
            Gmp::new(
                &mut store,
                "counter.gmp.offset",
                c_in,
                config.gmp_points,
                &mut rng,
            )
        });
        let head = Conv2d::new(
            &mut store,
            "counter.head",
            c_in,
            1,
            1,
            0,
            true,
            ConvInit::Default,
            &mut rng,
        );
        Ok(Counter {
            config: config.clone(),
            store,
            features,
            gmp,
            head,
        })
    }

    /// The counter's output stride: one coarse pixel per 8x8 network pixels.
    pub const STRIDE: usize = 8;

    /// The coarse map z [N,1,H/8,W/8] of normalised images [N,3,H,W] (H, W multiples of 16).
    pub fn forward(&self, f: &Forward, images: &Var) -> Result<Var> {
        check_image_batch("counter", images.dims())?;
        let mut h = images.clone();
        let mut layers = self.features.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                Feature::Conv(c) => c.forward(f, &h)?,
                // BatchNorm then ReLU (every BatchNorm here) as one op
                Feature::Bn(b) if matches!(layers.peek(), Some(Feature::Relu)) => {
                    layers.next();
                    b.forward_relu(f, &h)?
                }
                Feature::Bn(b) => b.forward(f, &h)?,
                Feature::Relu => relu(f.tape, &h)?,
                Feature::Pool => max_pool2d(f.tape, &h)?,
            };
        }
        let (oh, ow) = (h.dims()[2] * 2, h.dims()[3] * 2);
        h = upsample_bilinear(f.tape, &h, oh, ow, false)?;
        if let Some(g) = &self.gmp {
            h = g.forward(f, &h)?;
        }
        self.head.forward(f, &h)
    }

    /// `forward` in inference mode (see `Forward::inference`) on images moved first to the
    /// device the counter lives on.
    pub fn infer(&self, images: Tensor) -> Result<Var> {
        let images = Var::constant(images.into_device(&self.store.device())?);
        Forward::inference(&self.store, |f| self.forward(f, &images))
    }
}
