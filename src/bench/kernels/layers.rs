//! The memory-bound ops' rows of `dcl bench kernels`.
use super::timing::{nchw, randn, Bench, Rows, F32};
use super::KernelBenchOptions;
use crate::error::Result;
use crate::nn::layers::scaled;
use crate::ops::batch_norm2d::{
    batch_norm2d_backward, batch_norm2d_train_forward, BatchNormMode, BatchNormNeeds,
};
use crate::ops::concat::{concat_channels_backward, concat_channels_forward};
use crate::ops::loss::{
    count_l1_loss_backward, count_l1_loss_forward, mse_loss_backward, mse_loss_forward,
};
use crate::ops::max_pool2d::{max_pool2d_backward, max_pool2d_forward};
use crate::ops::relu::{relu_backward, relu_forward};
use crate::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use crate::rng::Rng;

/// Pooling, batch norm and ReLU at the counter's stages, the bilinear resizes and
/// concatenations of both networks, and the two losses.
pub(super) fn rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, s, wm) = (o.batch, o.size, o.width_mult);
    // Pooling, batch norm and ReLU at the counter's stages.
    let stages: Vec<(usize, usize)> = [
        (64, s),
        (128, s / 2),
        (256, s / 4),
        (512, s / 8),
        (512, s / 16),
    ]
    .iter()
    .map(|&(c, hw)| (scaled(c, wm), hw))
    .collect();
    for &(c, hw) in &stages[..4] {
        let x = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
        let shape = nchw(x.dims());
        let (_, idx) = max_pool2d_forward(&x)?;
        let dy = randn(&idx.out_dims(), 1.0, rng, dev)?;
        let tf = b.time(|| max_pool2d_forward(&x).map(drop))?;
        let tb = b.time(|| max_pool2d_backward(&dy, &idx, x.dims()).map(drop))?;
        let (inb, outb) = (x.numel() as f64 * F32, dy.numel() as f64 * F32);
        r.bw(
            "max_pool2d",
            "fwd",
            &shape,
            tf,
            inb + 2.0 * outb,
            "y and u32 argmax".into(),
        );
        r.bw(
            "max_pool2d",
            "bwd",
            &shape,
            tb,
            inb + 2.0 * outb,
            String::new(),
        );
    }
    for &(c, hw) in &stages {
        let x = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
        let shape = nchw(x.dims());
        let gamma = randn(&[c], 0.5, rng, dev)?;
        let beta = randn(&[c], 0.5, rng, dev)?;
        let dy = randn(x.dims(), 1.0, rng, dev)?;
        let (_, saved, _) = batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5)?;
        let tf = b.time(|| batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5).map(drop))?;
        let tb = b.time(|| {
            let all = BatchNormNeeds::ALL;
            batch_norm2d_backward(&x, &gamma, &saved, &dy, BatchNormMode::Train, all).map(drop)
        })?;
        let nb = x.numel() as f64 * F32;
        r.bw(
            "batch_norm2d (train)",
            "fwd",
            &shape,
            tf,
            2.0 * nb,
            "x read once, y written".into(),
        );
        r.bw(
            "batch_norm2d (train)",
            "bwd",
            &shape,
            tb,
            3.0 * nb,
            "x, dy read, dx written".into(),
        );
        let y = relu_forward(&x)?;
        let tf = b.time(|| relu_forward(&x).map(drop))?;
        let tb = b.time(|| relu_backward(&y, &dy).map(drop))?;
        r.bw("relu", "fwd", &shape, tf, 2.0 * nb, String::new());
        r.bw("relu", "bwd", &shape, tb, 3.0 * nb, String::new());
    }

    // Bilinear resizes: the counter's x2 (align_corners=false), the UNet decoder's x2
    // (align_corners=true) and the localizer's input map (S/8 -> S).
    let w64 = scaled(64, wm);
    let ups = [
        (scaled(512, wm), s / 16, s / 8, false, "counter x2"),
        (8 * w64, s / 16, s / 8, true, "localizer up1 x2"),
        (4 * w64, s / 8, s / 4, true, "localizer up2 x2"),
        (2 * w64, s / 4, s / 2, true, "localizer up3 x2"),
        (w64, s / 2, s, true, "localizer up4 x2"),
        (1, s / 8, s, false, "localizer input x8"),
    ];
    for (c, ih, oh, align, what) in ups {
        let x = randn(&[n, c, ih, ih], 1.0, rng, dev)?;
        let dy = randn(&[n, c, oh, oh], 1.0, rng, dev)?;
        let op = format!("upsample_bilinear align_corners={align}");
        let shape = format!("{} -> {oh}x{oh} ({what})", nchw(x.dims()));
        let bytes = (x.numel() + dy.numel()) as f64 * F32;
        let tf = b.time(|| upsample_bilinear_forward(&x, oh, oh, align).map(drop))?;
        let tb = b.time(|| upsample_bilinear_backward(&dy, ih, ih, align).map(drop))?;
        r.bw(&op, "fwd", &shape, tf, bytes, String::new());
        r.bw(
            &op,
            "bwd",
            &shape,
            tb,
            bytes,
            "atomic scatter on GPU".into(),
        );
    }

    // Concatenations of the localizer: its input and each decoder level.
    let cats = [
        (3, 1, s, "localizer input"),
        (8 * w64, 8 * w64, s / 8, "up1"),
        (4 * w64, 4 * w64, s / 4, "up2"),
        (2 * w64, 2 * w64, s / 2, "up3"),
        (w64, w64, s, "up4"),
    ];
    for (ca, cb, hw, what) in cats {
        let a = randn(&[n, ca, hw, hw], 1.0, rng, dev)?;
        let bb = randn(&[n, cb, hw, hw], 1.0, rng, dev)?;
        let dy = randn(&[n, ca + cb, hw, hw], 1.0, rng, dev)?;
        let shape = format!("N{n} C{ca}+{cb} {hw}x{hw} ({what})");
        let bytes = 2.0 * dy.numel() as f64 * F32;
        let tf = b.time(|| concat_channels_forward(&[&a, &bb]).map(drop))?;
        let tb = b.time(|| concat_channels_backward(&dy, &[ca, cb]).map(drop))?;
        r.bw("concat_channels", "fwd", &shape, tf, bytes, String::new());
        r.bw("concat_channels", "bwd", &shape, tb, bytes, String::new());
    }

    // Losses.
    let z = randn(&[n, 1, s / 8, s / 8], 0.1, rng, dev)?;
    let counts: Vec<f32> = (0..n).map(|i| 10.0 + i as f32).collect();
    let shape = nchw(z.dims());
    let zb = z.numel() as f64 * F32;
    let tf = b.time(|| count_l1_loss_forward(&z, &counts).map(drop))?;
    let tb = b.time(|| count_l1_loss_backward(&z, &counts, 1.0).map(drop))?;
    r.bw(
        "count_l1_loss",
        "fwd",
        &shape,
        tf,
        zb,
        "includes reading the loss back".into(),
    );
    r.bw("count_l1_loss", "bwd", &shape, tb, 2.0 * zb, String::new());
    let pred = randn(&[n, 1, s, s], 1.0, rng, dev)?;
    let target = randn(&[n, 1, s, s], 1.0, rng, dev)?;
    let shape = nchw(pred.dims());
    let pb = pred.numel() as f64 * F32;
    let tf = b.time(|| mse_loss_forward(&pred, &target).map(drop))?;
    let tb = b.time(|| mse_loss_backward(&pred, &target, 1.0).map(drop))?;
    r.bw(
        "mse_loss",
        "fwd",
        &shape,
        tf,
        2.0 * pb,
        "includes reading the loss back".into(),
    );
    r.bw("mse_loss", "bwd", &shape, tb, 3.0 * pb, String::new());

    Ok(())
}
