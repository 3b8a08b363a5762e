//! Timing on one device (CUDA events on a GPU, `Instant` on the CPU; warm-up reps first, the
//! median reported; optionally the L2 cache flushed before each rep) and the rows it produces
//! against the run's ceilings.
use std::time::Instant;

use serde::Serialize;

use super::{Ceilings, Row};
use crate::device::cuda::GpuBuffer;
use crate::device::Device;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Median and minimum of the timed reps, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
}

/// Times closures on one device.
pub(super) struct Bench<'a> {
    pub(super) dev: &'a Device,
    pub(super) reps: usize,
    pub(super) warmup: usize,
}

impl Bench<'_> {
    pub(super) fn time(&self, f: impl FnMut() -> Result<()>) -> Result<Timing> {
        self.time_after(|| Ok(()), f)
    }

    /// As [`Bench::time`], with the L2 cache flushed before every rep, outside the timed
    /// interval (the events are recorded after the flush on the same stream).
    pub(super) fn time_cold(&self, l2: &L2Flush, f: impl FnMut() -> Result<()>) -> Result<Timing> {
        self.time_after(|| l2.flush(), f)
    }

    /// Times `f`, running `before` untimed ahead of each rep (warm-up reps included).
    fn time_after(
        &self,
        mut before: impl FnMut() -> Result<()>,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Timing> {
        for _ in 0..self.warmup {
            before()?;
            f()?;
        }
        self.dev.synchronize()?;
        let mut ms = Vec::with_capacity(self.reps);
        match self.dev.cuda() {
            Some(d) => {
                let mut events = Vec::with_capacity(self.reps);
                for _ in 0..self.reps {
                    before()?;
                    let a = d.record_event()?;
                    f()?;
                    let b = d.record_event()?;
                    events.push((a, b));
                }
                for (a, b) in &events {
                    ms.push(d.elapsed_ms(a, b)?);
                }
            }
            None => {
                for _ in 0..self.reps {
                    before()?;
                    let t = Instant::now();
                    f()?;
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        Ok(Timing {
            median_ms: median(&ms),
            min_ms: ms[0],
            reps: ms.len(),
        })
    }
}

/// What [`Bench::time_cold`] reads before each rep so that it starts with a cold L2 cache, as
/// an op does in a training step (the layers between two calls evict its data): a buffer larger
/// than any GPU's L2 (256 MiB; H100/H200 have 50 MB), summed. A read, not a memset, which would
/// leave the cache full of dirty lines whose write-back the timed kernel would then pay. On the
/// CPU nothing; on the host emulation 1 MiB (its timings mean nothing, the path is exercised).
pub(super) struct L2Flush {
    buf: Option<GpuBuffer<f32>>,
}

/// Bytes [`L2Flush`] reads on a GPU.
pub(super) const L2_FLUSH_BYTES: usize = 256 << 20;

impl L2Flush {
    pub(super) fn new(dev: &Device) -> Result<Self> {
        let buf = match dev.cuda() {
            Some(d) => {
                let bytes = if d.is_emulated() {
                    1 << 20
                } else {
                    L2_FLUSH_BYTES
                };
                Some(d.alloc_zeros::<f32>(bytes / F32 as usize)?)
            }
            None => None,
        };
        Ok(L2Flush { buf })
    }

    /// What a row timed with this flush says about it.
    pub(super) fn note(&self) -> String {
        match &self.buf {
            Some(b) => format!("L2 flushed before each rep ({} MiB read)", b.len() >> 18),
            None => "no L2 flush on the CPU".into(),
        }
    }

    fn flush(&self) -> Result<()> {
        if let Some(b) = &self.buf {
            crate::ops::elementwise::cuda::sum(b.device(), b)?;
        }
        Ok(())
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Builds rows against the ceilings.
pub(super) struct Rows {
    pub(super) ceil: Ceilings,
    pub(super) rows: Vec<Row>,
}

impl Rows {
    fn push(&mut self, op: &str, pass: &str, shape: &str, t: Timing, note: String) -> &mut Row {
        self.rows.push(Row {
            op: op.into(),
            pass: pass.into(),
            shape: shape.into(),
            median_ms: t.median_ms,
            min_ms: t.min_ms,
            bytes: None,
            flops: None,
            gb_per_s: None,
            tflop_per_s: None,
            pct_of_ceiling: None,
            note,
        });
        self.rows.last_mut().expect("just pushed")
    }
    /// A memory-bound op: `bytes` that must move, against the copy ceiling.
    pub(super) fn bw(
        &mut self,
        op: &str,
        pass: &str,
        shape: &str,
        t: Timing,
        bytes: f64,
        note: String,
    ) {
        let ceiling = self.ceil.copy_gb_per_s;
        let gbs = bytes / (t.median_ms * 1e-3) / 1e9;
        let row = self.push(op, pass, shape, t, note);
        row.bytes = Some(bytes);
        row.gb_per_s = Some(gbs);
        row.pct_of_ceiling = Some(100.0 * gbs / ceiling);
    }
    /// A compute-bound op: `flops`, against the GEMM ceiling.
    pub(super) fn flop(
        &mut self,
        op: &str,
        pass: &str,
        shape: &str,
        t: Timing,
        flops: f64,
        note: String,
    ) {
        let ceiling = self.ceil.gemm_tflop_per_s;
        let tf = flops / (t.median_ms * 1e-3) / 1e12;
        let row = self.push(op, pass, shape, t, note);
        row.flops = Some(flops);
        row.tflop_per_s = Some(tf);
        row.pct_of_ceiling = Some(100.0 * tf / ceiling);
    }
    /// A timing with no rate (whole steps).
    pub(super) fn plain(&mut self, op: &str, pass: &str, shape: &str, t: Timing, note: String) {
        self.push(op, pass, shape, t, note);
    }
}

/// Bytes of an f32.
pub(super) const F32: f64 = 4.0;

/// `n` uniform values in [-1, 1) from `seed`: GEMM and copy operands are random, since zeros
/// let the hardware save power and raise clocks, which flatters the ceilings by ~10%.
pub(super) fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.range(-1.0, 1.0)).collect()
}

pub(super) fn randn(dims: &[usize], std: f32, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    Tensor::randn(dims, std, rng).into_device(dev)
}

pub(super) fn nchw(d: &[usize]) -> String {
    format!("N{} C{} {}x{}", d[0], d[1], d[2], d[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }
}
