//! `dcl bench step` and `dcl bench peaks`: one whole training step (or one inference pass) of
//! a network, timed the way `scripts/torch_cpu_bench.py` times PyTorch's, which runs this
//! command and PyTorch interleaved in one run and prints the ratios; and the machine's
//! measured peaks (FMA GFLOP/s of the instruction set in use, copy GB/s) they are read
//! against.
//!
//! What one rep is:
//! - `counter`: forward on a batch of random images, count loss, backward, Adam, BatchNorm
//!   running statistics (as `dcl train --model counter`);
//! - `localizer`: the frozen counter's inference pass on the batch, then the localizer's
//!   forward, MSE against a random density map, backward, Adam, running statistics (as `dcl
//!   train --model localizer`);
//! - `count`: the counter's inference pass (eval-mode BatchNorm, no tape), map read back;
//! - `count-pair`: the counter's then the localizer's inference passes.
use std::time::Instant;

use serde::Serialize;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{apply_bn_updates, Counter, Forward, Localizer, ModelConfig, ModelKind};
use crate::ops::loss::{count_l1_loss, mse_loss};
use crate::optim::{Adam, AdamConfig};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What one timed rep runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Counter,
    Localizer,
    Count,
    CountPair,
}

impl StepKind {
    pub fn parse(s: &str) -> Result<StepKind> {
        Ok(match s {
            "counter" => StepKind::Counter,
            "localizer" => StepKind::Localizer,
            "count" => StepKind::Count,
            "count-pair" => StepKind::CountPair,
            _ => {
                return Err(Error::Invalid(format!(
                    "bench step: unknown --what {s:?} (counter, localizer, count, count-pair)"
                )))
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct StepBenchOptions {
    pub device: Device,
    pub what: StepKind,
    pub width_mult: f32,
    pub size: usize,
    pub batch: usize,
    pub reps: usize,
    pub warmup: usize,
    pub gmp_points: usize,
    /// Per-op times of the timed reps (training steps only; `dcl train --profile`'s table).
    pub profile: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub what: StepKind,
    pub device: String,
    pub threads: usize,
    pub isa: String,
    pub width_mult: f32,
    pub size: usize,
    pub batch: usize,
    /// Every timed rep, in order, in milliseconds.
    pub reps_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Images per second at the best rep.
    pub images_per_s: f64,
    /// CPU time (all threads) of every timed rep, in milliseconds (empty where unavailable):
    /// on a shared machine the steadier measure of our own work.
    pub reps_cpu_ms: Vec<f64>,
    /// With `profile`: (op, total ms over the timed reps, calls), largest first; the frozen
    /// counter's inference pass of a localizer step is one entry.
    pub profile: Vec<(String, f64, usize)>,
}

/// The machine's measured ceilings.
#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    pub cpu_model: String,
    /// The instruction set the fast paths use in this process (`DCL_CPU_ISA` may lower it).
    pub isa: String,
    /// The best set this CPU has.
    pub isa_detected: String,
    pub threads: usize,
    /// FMA throughput of the detected (best) set on all threads (2 FLOP per lane per FMA).
    pub fma_gflops: f64,
    /// Read + write bandwidth of a 64 MiB copy on all threads.
    pub copy_gb_per_s: f64,
}

/// `model name` from /proc/cpuinfo (empty where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Best of a few runs of each ceiling.
pub fn measure_peaks() -> Peaks {
    use crate::device::cpu::simd::{self, Isa};
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let isa = simd::isa();
    let fma = (0..3)
        .map(|_| simd::fma_peak_gflops(Isa::detect(), threads, 100))
        .fold(0.0, f64::max);
    let n = 16usize << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    Peaks {
        cpu_model: cpu_model(),
        isa: isa.name().into(),
        isa_detected: Isa::detect().name().into(),
        threads,
        fma_gflops: fma,
        copy_gb_per_s: 2.0 * 4.0 * n as f64 / best / 1e9,
    }
}

fn config(kind: ModelKind, o: &StepBenchOptions) -> ModelConfig {
    ModelConfig {
        model: kind,
        width_mult: o.width_mult,
        gmp_points: o.gmp_points,
        ..ModelConfig::default()
    }
}

/// Runs `warmup` untimed and `reps` timed reps of `o.what`.
pub fn run_step_bench(o: &StepBenchOptions) -> Result<StepReport> {
    if o.size == 0 || !o.size.is_multiple_of(16) || o.batch == 0 || o.reps == 0 {
        return Err(Error::Invalid(format!(
            "bench step: --size must be a positive multiple of 16 and --batch, --reps positive \
             (got size {}, batch {}, reps {})",
            o.size, o.batch, o.reps
        )));
    }
    let dev = &o.device;
    if let Some(d) = dev.cuda() {
        crate::kernels::load_all(d)?;
    }
    let (n, s) = (o.batch, o.size);
    let mut rng = Rng::new(7);
    let images = Tensor::randn(&[n, 3, s, s], 1.0, &mut rng).into_device(dev)?;
    let mut counter = Counter::new(&config(ModelKind::Counter, o), 1)?;
    counter.store.to_device(dev)?;
    let mut loc = match o.what {
        StepKind::Localizer | StepKind::CountPair => {
            let mut l = Localizer::new(&config(ModelKind::Localizer, o), 2)?;
            l.store.to_device(dev)?;
            Some(l)
        }
        _ => None,
    };
    let mut adam = match o.what {
        StepKind::Counter => Some(Adam::new(AdamConfig::default(), &counter.store)?),
        StepKind::Localizer => Some(Adam::new(
            AdamConfig::default(),
            &loc.as_ref().expect("localizer").store,
        )?),
        _ => None,
    };
    let counts: Vec<f32> = (0..n).map(|i| 20.0 + 3.0 * i as f32).collect();
    let density = Tensor::randn(&[n, 1, s, s], 0.01, &mut rng).into_device(dev)?;

    let mut profile = crate::autograd::Profile::default();
    let mut rep = |counter: &mut Counter,
                   loc: &mut Option<Localizer>,
                   prof: Option<&mut crate::autograd::Profile>|
     -> Result<()> {
        let tape = Tape::new();
        tape.set_profiling(prof.is_some());
        let mut t_infer = std::time::Duration::ZERO;
        let r = match o.what {
            StepKind::Counter => {
                let (grads, updates) = {
                    let bound = counter.store.bind(&tape, true);
                    let f = Forward::new(&tape, &bound, &counter.store, true);
                    let z = counter.forward(&f, &Var::constant(images.clone()))?;
                    let loss = count_l1_loss(&tape, &z, &counts)?;
                    let v = loss.value().item()?;
                    if !v.is_finite() {
                        return Err(Error::Invalid(format!("bench step: counter loss {v}")));
                    }
                    let mut g = tape.backward(&loss)?;
                    (bound.take_grads(&mut g), f.take_bn_updates())
                };
                let adam = adam.as_mut().expect("adam");
                adam.update(&mut counter.store, &grads, 1e-6)?;
                apply_bn_updates(&mut counter.store, updates)
            }
            StepKind::Localizer => {
                let loc = loc.as_mut().expect("localizer");
                let t0 = Instant::now();
                let z = counter.infer(images.clone())?;
                dev.synchronize()?;
                t_infer = t0.elapsed();
                let (grads, updates) = {
                    let bound = loc.store.bind(&tape, true);
                    let f = Forward::new(&tape, &bound, &loc.store, true);
                    let pred = loc.forward(&f, &Var::constant(images.clone()), &z)?;
                    let loss = mse_loss(&tape, &pred, &density)?;
                    let v = loss.value().item()?;
                    if !v.is_finite() {
                        return Err(Error::Invalid(format!("bench step: localizer loss {v}")));
                    }
                    let mut g = tape.backward(&loss)?;
                    (bound.take_grads(&mut g), f.take_bn_updates())
                };
                let adam = adam.as_mut().expect("adam");
                adam.update(&mut loc.store, &grads, 1e-6)?;
                apply_bn_updates(&mut loc.store, updates)
            }
            StepKind::Count => {
                let z = counter.infer(images.clone())?;
                std::hint::black_box(z.value().to_host()?);
                Ok(())
            }
            StepKind::CountPair => {
                let z = counter.infer(images.clone())?;
                let d = loc.as_ref().expect("localizer").infer(images.clone(), &z)?;
                std::hint::black_box(d.value().to_host()?);
                Ok(())
            }
        };
        if let Some(p) = prof {
            if o.what == StepKind::Localizer {
                p.entries.push(("frozen counter inference".into(), t_infer));
            }
            p.entries.extend(tape.take_profile().entries);
        }
        r
    };
    for _ in 0..o.warmup {
        rep(&mut counter, &mut loc, None)?;
    }
    let mut reps_ms = Vec::with_capacity(o.reps);
    let mut reps_cpu_ms = Vec::with_capacity(o.reps);
    use crate::device::cpu::clock::process_cpu_secs;
    for _ in 0..o.reps {
        dev.synchronize()?;
        let (t, c) = (Instant::now(), process_cpu_secs());
        rep(&mut counter, &mut loc, o.profile.then_some(&mut profile))?;
        dev.synchronize()?;
        reps_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if let (Some(a), Some(b)) = (c, process_cpu_secs()) {
            reps_cpu_ms.push((b - a) * 1e3);
        }
    }
    let mut sorted = reps_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        0.5 * (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2])
    };
    Ok(StepReport {
        what: o.what,
        device: dev.name(),
        threads: rayon::current_num_threads(),
        isa: crate::device::cpu::simd::isa().name().into(),
        width_mult: o.width_mult,
        size: s,
        batch: n,
        median_ms,
        min_ms: sorted[0],
        images_per_s: n as f64 / (sorted[0] * 1e-3),
        reps_ms,
        reps_cpu_ms,
        profile: profile
            .totals()
            .into_iter()
            .map(|(n, d, c)| (n, d.as_secs_f64() * 1e3, c))
            .collect(),
    })
}
