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
    }
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
