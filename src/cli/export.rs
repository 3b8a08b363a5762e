//! Tooling for the PyTorch parity check (scripts/torch_parity.py), hidden from `--help`:
//! `dcl init-checkpoint` writes a random-weight checkpoint whose BatchNorm layers have
//! non-trivial running statistics (so eval-mode BatchNorm is really exercised), and
//! `dcl export-io` writes deterministic inputs with our networks' eval-mode outputs.
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::autograd::{Tape, Var};
use crate::checkpoint::{load_counter, load_localizer, save_model, write_tensors};
use crate::data::{normalize_imagenet, synthetic};
use crate::device::Device;
use crate::nn::{
    apply_bn_updates, Backbone, Counter, Coupled, Forward, Localizer, ModelConfig, ModelKind,
    ParamStore,
};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Args, Debug)]
pub struct InitCheckpointArgs {
    #[arg(long, value_enum)]
    pub model: ModelKind,
    #[arg(long, value_enum, default_value_t = ModelConfig::default().backbone)]
    pub backbone: Backbone,
    /// K, the number of GMP sampling points (0: no GMP).
    #[arg(long, default_value_t = ModelConfig::default().gmp_points)]
    pub gmp_points: usize,
    #[arg(long, default_value_t = ModelConfig::default().width_mult)]
    pub width_mult: f32,
    #[arg(long, default_value_t = ModelConfig::default().unet_width)]
    pub unet_width: usize,
    #[arg(long, default_value_t = ModelConfig::default().density_scale)]
    pub density_scale: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GMP offset weights get standard deviation offset_std/sqrt(C): large enough that the K
    /// sampling points move with the features by about a pixel (the training init keeps them
    /// almost constant), small enough that most stay on the map.
    #[arg(long, default_value_t = 1.6)]
    pub offset_std: f32,
    /// Side of the two synthetic images whose batch statistics become the running statistics
    /// (the size the networks are used at keeps activations at a sane scale there).
    #[arg(long, default_value_t = 256)]
    pub calibrate_size: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportIoArgs {
    /// Counter checkpoint.
    #[arg(long)]
    pub counter: PathBuf,
    /// Localizer checkpoint (adds `localizer_input` and `density`).
    #[arg(long)]
    pub localizer: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of synthetic images.
    #[arg(long, default_value_t = 2)]
    pub images: usize,
    /// Image side in pixels (a multiple of 16, at least 32).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seed of the synthetic images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `n` normalised synthetic images [n,3,size,size]: image i of `seed`, as the loader feeds them.
pub fn synthetic_batch(n: usize, size: usize, seed: u64) -> crate::error::Result<Tensor> {
    synthetic::check_size(size)?;
    if n == 0 || !size.is_multiple_of(16) {
        return Err(crate::error::Error::Invalid(format!(
            "export-io: need at least one image and a side that is a multiple of 16, got {n} images of {size}"
        )));
    }
    let px = size * size;
    let mut data = vec![0f32; n * 3 * px];
    for (i, out) in data.chunks_exact_mut(3 * px).enumerate() {
        let im = synthetic::render(seed, i, size);
        let mut chw = vec![0f32; 3 * px];
        for p in 0..px {
            for c in 0..3 {
                chw[c * px + p] = im.rgb[3 * p + c] as f32 / 255.0;
            }
        }
        normalize_imagenet(&chw, out);
    }
    Tensor::from_vec(data, &[n, 3, size, size])
}

/// Moves every BatchNorm's running statistics to the statistics of one training-mode pass
/// (momentum 1), then perturbs them and every affine parameter deterministically, so eval mode
/// differs from training mode and from the identity (mean 0, var 1) a fresh network has.
fn calibrate_batch_norm(
    store: &mut ParamStore,
    rng: &mut Rng,
    pass: impl FnOnce(&Forward) -> crate::error::Result<Var>,
) -> crate::error::Result<()> {
    let tape = Tape::inference();
    let bound = store.bind(&tape, false);
    let f = Forward::new(&tape, &bound, store, true);
    pass(&f)?;
    let mut updates = f.take_bn_updates();
    drop(f);
    for u in &mut updates {
        u.momentum = 1.0;
    }
    apply_bn_updates(store, updates)?;
    perturb(store, rng)
}

/// Deterministic perturbations: BatchNorm γ in [0.6, 1.4], β in ±0.2, running mean shifted by
/// up to ±0.2 running std, running var scaled by [0.7, 1.4]; conv biases (zero at init) in ±0.05.
fn perturb(store: &mut ParamStore, rng: &mut Rng) -> crate::error::Result<()> {
    let ids: Vec<_> = store.iter().map(|(id, p)| (id, p.name.clone())).collect();
    let bn_prefixes: Vec<String> = ids
        .iter()
        .filter_map(|(_, n)| n.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    let is_bn = |name: &str| {
        bn_prefixes.iter().any(|p| {
            name.strip_prefix(p.as_str())
                .is_some_and(|s| s.starts_with('.'))
        })
    };
    for (id, name) in &ids {
        let mut v = store.value(*id).to_vec();
        let var_name = name.replace(".running_mean", ".running_var");
        let (lo, hi, mul) = if name.ends_with(".running_var") {
            (0.7, 1.4, true)
        } else if name.ends_with(".running_mean") {
            let var_id = store.find(&var_name).ok_or_else(|| {
                crate::error::Error::Invalid(format!("{name} has no {var_name} beside it"))
            })?;
            let var = store.value(var_id).to_vec();
            for (m, s) in v.iter_mut().zip(var) {
                *m += rng.range(-0.2, 0.2) * s.max(0.0).sqrt();
            }
            store.set(*id, Tensor::from_vec(v, store.value(*id).dims())?)?;
            continue;
        } else if is_bn(name) && name.ends_with(".weight") {
            (0.6, 1.4, false)
        } else if is_bn(name) && name.ends_with(".bias") {
            (-0.2, 0.2, false)
        } else if name.ends_with(".bias") && !name.contains("gmp.offset") {
            (-0.05, 0.05, false)
        } else {
            continue;
        };
        for x in v.iter_mut() {
            *x = if mul {
                *x * rng.range(lo, hi)
            } else {
                rng.range(lo, hi)
            };
        }
        store.set(*id, Tensor::from_vec(v, store.value(*id).dims())?)?;
    }
    Ok(())
}

pub fn init_checkpoint(a: InitCheckpointArgs) -> anyhow::Result<()> {
    let config = ModelConfig {
        model: a.model,
        backbone: a.backbone,
        gmp_points: a.gmp_points,
        width_mult: a.width_mult,
        unet_width: a.unet_width,
        density_scale: a.density_scale,
        ..ModelConfig::default()
    };
    let mut rng = Rng::new(a.seed).fork(0x5eed);
    // Calibration inputs: two synthetic images (BatchNorm needs more than one value).
    let cs = a.calibrate_size;
    let images = Var::constant(synthetic_batch(2, cs, a.seed)?);
    let store = match a.model {
        ModelKind::Counter => {
            let mut net = Counter::new(&config, a.seed)?;
            if let Some(id) = net.store.find("counter.gmp.offset.weight") {
                let w = net.store.value(id);
                let std = a.offset_std / (w.dims()[1] as f32).sqrt();
                let fresh = Tensor::randn(w.dims(), std, &mut rng);
                net.store.set(id, fresh)?;
            }
            let mut s = net.store.clone();
            calibrate_batch_norm(&mut s, &mut rng, |f| net.forward(f, &images))?;
            s
        }
        ModelKind::Localizer => {
            let net = Localizer::new(&config, a.seed)?;
            // A coarse map like a counter's, 1/8 of the image per side, mixed signs (|z| is
            // taken), about 0.5 cells per coarse pixel.
            let zs = cs / 8;
            let z: Vec<f32> = (0..2 * zs * zs).map(|_| rng.range(-1.0, 1.0)).collect();
            let z = Var::constant(Tensor::from_vec(z, &[2, 1, zs, zs])?);
            let mut s = net.store.clone();
            calibrate_batch_norm(&mut s, &mut rng, |f| net.forward(f, &images, &z))?;
            s
        }
        ModelKind::Coupled => {
            let net = Coupled::new(&config, a.seed)?;
            let mut s = net.store.clone();
            calibrate_batch_norm(&mut s, &mut rng, |f| net.forward(f, &images))?;
            s
        }
    };
    save_model(&a.out, &config, &store, 1)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({:?}, {} tensors, {} trainable values)",
        a.out.display(),
        a.model,
        store.len(),
        store.trainable_count()
    );
    Ok(())
}

pub fn export_io(a: ExportIoArgs) -> anyhow::Result<()> {
    let device: Device = super::parse_device(&a.device)?;
    // Compared with PyTorch at 1e-4 with TF32 off (scripts/torch_parity.py): strict FP32
    // convolutions, not the TF32 default of Ampere and later.
    crate::ops::conv2d::set_math(crate::ops::conv2d::ConvMath::Fp32);
    let (mut counter, _) = load_counter(&a.counter)?;
    counter.store.to_device(&device)?;
    let size = a.size;
    let images = synthetic_batch(a.images, size, a.seed)?;
    let z = counter.infer(images.clone())?;
    let z_host = z.value().to_device(&Device::Cpu)?;
    let mut tensors: Vec<(String, Tensor)> = vec![("input".into(), images.clone())];
    tensors.push(("z".into(), z_host));
    let mut meta = HashMap::new();
    meta.insert("dcl.counter".to_string(), counter.config.to_json());
    if let Some(path) = &a.localizer {
        let (mut loc, _) = load_localizer(path)?;
        loc.store.to_device(&device)?;
        // The 4-channel input on its own, so a mismatch can be told apart from the UNet's.
        let imgs = Var::constant(images.clone().into_device(&device)?);
        let x = Forward::inference(&loc.store, |f| loc.input(f, &imgs, &z))?;
        tensors.push(("localizer_input".into(), x.value().to_device(&Device::Cpu)?));
        let d = loc.infer(images, &z)?;
        tensors.push(("density".into(), d.value().to_device(&Device::Cpu)?));
        meta.insert("dcl.localizer".to_string(), loc.config.to_json());
    }
    meta.insert(
        "dcl.export".to_string(),
        serde_json::json!({
            "images": a.images,
            "size": size,
            "seed": a.seed,
            "device": device.name(),
        })
        .to_string(),
    );
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    write_tensors(&a.out, &refs, &[], meta).with_context(|| format!("{}", a.out.display()))?;
    let count: f32 = tensors[1].1.to_vec().iter().map(|v| v.abs()).sum();
    eprintln!(
        "wrote {}: {} image(s) of {size}x{size} on {}, total count {count:.3}{}",
        a.out.display(),
        a.images,
        device.name(),
        if a.localizer.is_some() {
            ", with the localizer's density"
        } else {
            ""
        }
    );
    Ok(())
}
