//! Whole training steps and Adam in `dcl bench kernels`.
use super::timing::{randn, Bench, Rows, F32};
use super::KernelBenchOptions;
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::nn::{apply_bn_updates, Counter, Forward, Localizer, ModelConfig, ModelKind};
use crate::ops::loss::{count_l1_loss, mse_loss};
use crate::optim::{Adam, AdamConfig};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Adam over all counter parameters, and one full training step of each network.
pub(super) fn rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, s) = (o.batch, o.size);
    let cfg = ModelConfig {
        model: ModelKind::Counter,
        width_mult: o.width_mult,
        gmp_points: o.gmp_points,
        ..ModelConfig::default()
    };
    let mut counter = Counter::new(&cfg, 1)?;
    counter.store.to_device(dev)?;
    let mut adam = Adam::new(AdamConfig::default(), &counter.store)?;
    let params = counter.store.trainable_count();
    let tensors = counter
        .store
        .iter()
        .filter(|(_, p)| p.kind == crate::nn::ParamKind::Trainable)
        .count();

    let images = randn(&[n, 3, s, s], 1.0, rng, dev)?;
    let counts: Vec<f32> = (0..n).map(|i| 20.0 + 3.0 * i as f32).collect();
    // One step outside the timer gives the gradients for the Adam measurement.
    let counter_step = |net: &mut Counter, adam: &mut Adam| -> Result<Vec<Option<Tensor>>> {
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = net.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &net.store, true);
            let z = net.forward(&f, &Var::constant(images.clone()))?;
            let loss = count_l1_loss(&tape, &z, &counts)?;
            let v = loss.value().item()?;
            if !v.is_finite() {
                return Err(Error::Invalid(format!("bench: counter loss {v}")));
            }
            let mut g = tape.backward(&loss)?;
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        adam.update(&mut net.store, &grads, 1e-6)?;
        apply_bn_updates(&mut net.store, updates)?;
        Ok(grads)
    };
    let grads = counter_step(&mut counter, &mut adam)?;
    let ta = b.time(|| adam.update(&mut counter.store, &grads, 1e-6))?;
    r.bw(
        "adam (all counter params)",
        "update",
        &format!("{params} parameters in {tensors} tensors"),
        ta,
        7.0 * params as f64 * F32,
        "fused per tensor; p, g, m, v read, p, m, v written".into(),
    );
    drop(grads);
    let tc = b.time(|| counter_step(&mut counter, &mut adam).map(drop))?;
    r.plain(
        "counter training step",
        "step",
        &format!("N{n} 3x{s}x{s} width x{}", o.width_mult),
        tc,
        format!(
            "fwd+loss+bwd+Adam+BN update, {:.1} images/s",
            n as f64 / (tc.median_ms * 1e-3)
        ),
    );

    let lcfg = ModelConfig {
        model: ModelKind::Localizer,
        width_mult: o.width_mult,
        gmp_points: o.gmp_points,
        ..ModelConfig::default()
    };
    let mut loc = Localizer::new(&lcfg, 2)?;
    loc.store.to_device(dev)?;
    let mut ladam = Adam::new(AdamConfig::default(), &loc.store)?;
    let density = randn(&[n, 1, s, s], 0.01, rng, dev)?;
    let tl = b.time(|| {
        // As the localizer's training step: the frozen counter's map, then the UNet.
        let z = counter.infer(images.clone())?;
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = loc.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &loc.store, true);
            let pred = loc.forward(&f, &Var::constant(images.clone()), &z)?;
            let loss = mse_loss(&tape, &pred, &density)?;
            loss.value().item()?;
            let mut g = tape.backward(&loss)?;
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        ladam.update(&mut loc.store, &grads, 1e-6)?;
        apply_bn_updates(&mut loc.store, updates)
    })?;
    r.plain(
        "localizer training step",
        "step",
        &format!("N{n} 4x{s}x{s} width x{}", o.width_mult),
        tl,
        format!(
            "frozen counter fwd + UNet fwd+MSE+bwd+Adam, {:.1} images/s",
            n as f64 / (tl.median_ms * 1e-3)
        ),
    );
    Ok(())
}
