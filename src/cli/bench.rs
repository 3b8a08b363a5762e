//! `dcl bench`: on-device benchmarks. `dcl bench kernels` times every op at the networks' layer
//! shapes against the device's measured ceilings (see `crate::bench::kernels`).
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::bench::kernels::{format_table, run_kernel_bench, KernelBenchOptions};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Each op forward and backward at the paper's shapes, GB/s or TFLOP/s next to the device's
    /// ceilings, the three GMP kernels side by side, and full training steps.
    Kernels(KernelsArgs),
    /// One network's whole training step (or inference pass) on random data, timed: the Rust
    /// side of scripts/torch_cpu_bench.py, which runs it interleaved with PyTorch's.
    Step(StepArgs),
    /// The machine's measured peaks: FMA GFLOP/s of the instruction set in use and copy GB/s.
    Peaks(PeaksArgs),
}

#[derive(Args, Debug)]
pub struct StepArgs {
    /// counter, localizer (its frozen counter's inference pass included), count (the
    /// counter's inference pass) or count-pair (counter and localizer inference).
    #[arg(long, default_value = "counter")]
    pub what: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Input side (a multiple of 16).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Channel width multiplier of both networks (1 = the paper's widths).
    #[arg(long, default_value_t = 1.0)]
    pub width_mult: f32,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 8)]
    pub gmp_points: usize,
    /// Print per-op times of the timed reps (training steps).
    #[arg(long)]
    pub profile: bool,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PeaksArgs {
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Input side (a multiple of 16); default 256 on a GPU, 64 on the CPU (to keep a CPU run to
    /// a minute or two).
    #[arg(long)]
    pub size: Option<usize>,
    /// Channel width multiplier of both networks (1 = the paper's widths).
    #[arg(long, default_value_t = 1.0)]
    pub width_mult: f32,
    /// Timed repetitions (median reported); default 20 on a GPU, 3 on the CPU.
    #[arg(long)]
    pub reps: Option<usize>,
    /// Untimed repetitions before timing; default 3 on a GPU, 1 on the CPU.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// K, the GMP sampling points.
    #[arg(long, default_value_t = 8)]
    pub gmp_points: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Kernels(a) => kernels(a),
        BenchCommand::Step(a) => step(a),
        BenchCommand::Peaks(a) => peaks(a),
    }
}

fn write_json(p: &Option<PathBuf>, v: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = p {
        crate::fsutil::atomic_write(p, serde_json::to_string_pretty(v)?.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn step(a: StepArgs) -> anyhow::Result<()> {
    use crate::bench::step::{run_step_bench, StepBenchOptions, StepKind};
    let device = super::gpu::open_device(&a.device, &a.gpu)?;
    let o = StepBenchOptions {
        device,
        what: StepKind::parse(&a.what)?,
        width_mult: a.width_mult,
        size: a.size,
        batch: a.batch,
        reps: a.reps,
        warmup: a.warmup,
        gmp_points: a.gmp_points,
        profile: a.profile,
    };
    let r = run_step_bench(&o)?;
    println!(
        "{} width x{} N{} {}x{} on {} ({} threads, {}): median {:.1} ms, best {:.1} ms, \
         {:.2} images/s; reps {:?}",
        a.what,
        r.width_mult,
        r.batch,
        r.size,
        r.size,
        r.device,
        r.threads,
        r.isa,
        r.median_ms,
        r.min_ms,
        r.images_per_s,
        r.reps_ms
            .iter()
            .map(|v| v.round() as i64)
            .collect::<Vec<_>>()
    );
    if !r.reps_cpu_ms.is_empty() {
        let best = r.reps_cpu_ms.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "  CPU time per rep (all threads): best {best:.1} ms, reps {:?}",
            r.reps_cpu_ms
                .iter()
                .map(|v| v.round() as i64)
                .collect::<Vec<_>>()
        );
    }
    if !r.profile.is_empty() {
        let total: f64 = r.profile.iter().map(|p| p.1).sum();
        println!(
            "per op over {} reps (total {total:.1} ms):",
            r.reps_ms.len()
        );
        for (name, ms, calls) in &r.profile {
            println!(
                "  {name:40} {ms:10.1} ms {:5.1}%  {calls} calls",
                100.0 * ms / total
            );
        }
    }
    write_json(&a.json, &r)
}

fn peaks(a: PeaksArgs) -> anyhow::Result<()> {
    let p = crate::bench::step::measure_peaks();
    println!(
        "{} ({} threads): FMA {:.0} GFLOP/s ({}), copy {:.1} GB/s; fast paths use {}",
        p.cpu_model, p.threads, p.fma_gflops, p.isa_detected, p.copy_gb_per_s, p.isa
    );
    write_json(&a.json, &p)
}

fn kernels(a: KernelsArgs) -> anyhow::Result<()> {
    let device = super::gpu::open_device(&a.device, &a.gpu)?;
    let gpu = device.is_cuda();
    let mut notes = Vec::new();
    let size = a.size.unwrap_or(if gpu { 256 } else { 64 });
    if !gpu && a.size.is_none() {
        notes.push(
            "CPU run at a reduced default size (64x64, the paper's is 256x256) to keep it to a \
             minute or two; --size 256 for the paper's shapes"
                .to_string(),
        );
    }
    let reps = a.reps.unwrap_or(if gpu { 20 } else { 3 });
    let warmup = a.warmup.unwrap_or(if gpu { 3 } else { 1 });
    if device.is_cuda() {
        notes.push(format!(
            "{}; the conv rows time every convolution version in this arithmetic, the \
             training steps use the chosen ones",
            a.gpu.describe(&device)
        ));
    }
    let opts = KernelBenchOptions {
        device,
        batch: a.batch,
        size,
        width_mult: a.width_mult,
        reps,
        warmup,
        gmp_points: a.gmp_points,
        notes,
    };
    let rep = run_kernel_bench(&opts)?;
    print!("{}", format_table(&rep));
    if let Some(p) = &a.json {
        crate::fsutil::atomic_write(p, serde_json::to_string_pretty(&rep)?.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
