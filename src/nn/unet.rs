//! milesial's UNet (bilinear=True) body: `inc`, four `down`s, four `up`s and `outc`, with its
//! state-dict names under a prefix. The localizer feeds it RGB plus the counter's map (4
//! channels); the coupled baseline RGB alone (3).
use crate::autograd::Var;
use crate::error::Result;
use crate::nn::layers::{Conv2d, ConvInit, DoubleConv, Forward};
use crate::nn::params::ParamStore;
use crate::ops::concat::concat_channels;
use crate::ops::max_pool2d::max_pool2d;
use crate::ops::upsample_bilinear::upsample_bilinear;
use crate::rng::Rng;

pub struct Unet {
    inc: DoubleConv,
    downs: Vec<DoubleConv>,
    ups: Vec<DoubleConv>,
    outc: Conv2d,
}

/// (in, mid, out) of the down DoubleConvs for base width w: (in, out, out).
fn downs(w: usize) -> [(usize, usize, usize); 4] {
    [
        (w, 2 * w, 2 * w),
        (2 * w, 4 * w, 4 * w),
        (4 * w, 8 * w, 8 * w),
        (8 * w, 8 * w, 8 * w),
    ]
}

/// (in = skip + upsampled, mid, out) of the up DoubleConvs.
fn ups(w: usize) -> [(usize, usize, usize); 4] {
    [
        (16 * w, 8 * w, 4 * w),
        (8 * w, 4 * w, 2 * w),
        (4 * w, 2 * w, w),
        (2 * w, w, w),
    ]
}

/// Every DoubleConv's (in, mid, out), `inc` first, and the width `outc` reads: what the
/// parameter count of a configuration is computed from.
pub fn layer_widths(in_channels: usize, w: usize) -> Vec<(usize, usize, usize)> {
    let mut v = vec![(in_channels, w, w)];
    v.extend(downs(w));
    v.extend(ups(w));
    v
}

impl Unet {
    /// Parameters named `{prefix}.inc…`, `{prefix}.down1.maxpool_conv.1…`, `{prefix}.up1.conv…`,
    /// `{prefix}.outc.conv`, initialised in that order from `rng`.
    pub fn new(
        s: &mut ParamStore,
        prefix: &str,
        in_channels: usize,
        w: usize,
        rng: &mut Rng,
    ) -> Unet {
        let inc = DoubleConv::new(s, &format!("{prefix}.inc"), in_channels, w, w, rng);
        let downs = downs(w)
            .iter()
            .enumerate()
            .map(|(i, &(a, m, b))| {
                let name = format!("{prefix}.down{}.maxpool_conv.1", i + 1);
                DoubleConv::new(s, &name, a, m, b, rng)
            })
            .collect();
        let ups = ups(w)
            .iter()
            .enumerate()
            .map(|(i, &(a, m, b))| {
                let name = format!("{prefix}.up{}.conv", i + 1);
                DoubleConv::new(s, &name, a, m, b, rng)
            })
            .collect();
        let outc = Conv2d::new(
            s,
            &format!("{prefix}.outc.conv"),
            w,
            1,
            1,
            0,
            true,
            ConvInit::Default,
            rng,
        );
        Unet {
            inc,
            downs,
            ups,
            outc,
        }
    }

    /// The one-channel output [N,1,H,W] for an input [N,C,H,W] (H, W multiples of 16).
    pub fn forward(&self, f: &Forward, x: &Var) -> Result<Var> {
        let mut skips = vec![self.inc.forward(f, x)?];
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
}
