//! `dcl bench kernels`: every op forward and backward at the networks' own layer shapes (the
//! paper's: batch 8, 256x256, full width), timed on the device (CUDA events around each rep on
//! a GPU, `Instant` on the CPU; warm-up reps first, the median reported), with the achieved
//! GB/s (bytes that must move) or TFLOP/s next to ceilings measured in the same run: a large
//! copy and a large SGEMM. Convolutions also report their GEMMs against a plain GEMM of the same
//! shape and im2col / col2im on their own; GMP runs every CUDA version side by side (gmp.rs); and
//! one full counter and localizer training step is timed.

mod ceilings;
mod conv;
mod conv_cuda;
mod gmp;
mod layers;
mod step;
mod table;
mod timing;

use serde::Serialize;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;

pub use table::format_table;
pub use timing::Timing;
use timing::{Bench, Rows};

/// What to run.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    pub device: Device,
    pub batch: usize,
    /// Input side in pixels (a multiple of 16).
    pub size: usize,
    pub width_mult: f32,
    /// Timed repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Untimed repetitions first (NVRTC compilation, pool warm-up, caches).
    pub warmup: usize,
    /// K of the GMP layer.
    pub gmp_points: usize,
    /// Lines printed above the table (why a size or rep count was chosen, etc.).
    pub notes: Vec<String>,
}

/// One measured op and pass.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub op: String,
    pub pass: String,
    pub shape: String,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Bytes that must move (each input read once, each output written once).
    pub bytes: Option<f64>,
    pub flops: Option<f64>,
    pub gb_per_s: Option<f64>,
    pub tflop_per_s: Option<f64>,
    /// Achieved rate as a percentage of the run's copy (GB/s) or GEMM (TFLOP/s) ceiling.
    pub pct_of_ceiling: Option<f64>,
    pub note: String,
}

/// The device's ceilings, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// Read + write bandwidth of a large copy.
    pub copy_gb_per_s: f64,
    pub copy_bytes: f64,
    pub gemm_tflop_per_s: f64,
    pub gemm_shape: String,
    /// "fp32", "tf32" (cuBLAS math mode) or "gemm crate fp32" on the CPU.
    pub gemm_math: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub device: String,
    pub device_info: String,
    pub timing: String,
    pub batch: usize,
    pub size: usize,
    pub width_mult: f32,
    pub reps: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
}

fn not_cuda(what: &str) -> Error {
    Error::Device(format!("bench: {what} is not on the GPU"))
}

/// Runs every measurement. Errors name the op that failed.
pub fn run_kernel_bench(o: &KernelBenchOptions) -> Result<KernelReport> {
    if o.size == 0 || !o.size.is_multiple_of(16) || o.batch == 0 || o.reps == 0 {
        return Err(Error::Invalid(format!(
            "bench kernels: --size must be a positive multiple of 16 and --batch, --reps positive \
             (got size {}, batch {}, reps {})",
            o.size, o.batch, o.reps
        )));
    }
    let dev = &o.device;
    if let Some(d) = dev.cuda() {
        crate::kernels::load_all(d)?;
    }
    let b = Bench {
        dev,
        reps: o.reps,
        warmup: o.warmup,
    };
    let ceil = ceilings::measure(&b)?;
    let mut r = Rows {
        ceil: ceil.clone(),
        rows: Vec::new(),
    };
    let (n, s, wm) = (o.batch, o.size, o.width_mult);
    let mut rng = Rng::new(2024);

    conv::rows(&b, &mut r, o, &mut rng)?;
    layers::rows(&b, &mut r, o, &mut rng)?;
    gmp::rows(&b, &mut r, o, &mut rng)?;
    step::rows(&b, &mut r, o, &mut rng)?;

    Ok(KernelReport {
        device: dev.name(),
        device_info: match dev.cuda() {
            Some(d) => d.info().to_string(),
            None => format!("CPU, {} rayon threads", rayon::current_num_threads()),
        },
        timing: match dev {
            Device::Cpu => "std::time::Instant around each rep".into(),
            Device::Cuda(_) => "CUDA events recorded on the stream around each rep".into(),
        },
        batch: n,
        size: s,
        width_mult: wm,
        reps: o.reps,
        warmup: o.warmup,
        notes: o.notes.clone(),
        ceilings: ceil,
        rows: r.rows,
    })
}
