//! The device's ceilings, measured in the same run as the ops: a large copy and a large SGEMM.
use super::timing::{random_values, Bench, F32};
use super::Ceilings;
use crate::error::Result;

pub(super) fn measure(b: &Bench) -> Result<Ceilings> {
    match b.dev.cuda() {
        Some(d) => {
            use crate::device::cuda::gemm::{sgemm, RowMajorGemm};
            // The host emulation runs on the CPU: the CPU's sizes.
            let (n, m) = if d.is_emulated() {
                (16usize << 20, 1024usize)
            } else {
                (128usize << 20, 8192usize) // 512 MiB each way
            };
            let src = d.htod(&random_values(n, 1))?;
            let mut dst = d.alloc::<f32>(n)?;
            let t = b.time(|| d.copy_dtod(&src, &mut dst))?;
            drop((src, dst));
            let copy_bytes = 2.0 * n as f64 * F32;
            let a = d.htod(&random_values(m * m, 2))?;
            let bb = d.htod(&random_values(m * m, 3))?;
            let mut c = d.alloc::<f32>(m * m)?;
            let g = RowMajorGemm::packed(m, m, m, false, false);
            let tg = b.time(|| sgemm(d, &g, &a, &bb, &mut c))?;
            Ok(Ceilings {
                copy_gb_per_s: copy_bytes / (t.median_ms * 1e-3) / 1e9,
                copy_bytes,
                gemm_tflop_per_s: 2.0 * (m as f64).powi(3) / (tg.median_ms * 1e-3) / 1e12,
                gemm_shape: format!("{m}x{m}x{m} cuBLAS SGEMM"),
                gemm_math: if d.tf32() { "tf32" } else { "fp32" }.into(),
            })
        }
        None => {
            use rayon::prelude::*;
            let n = 16usize << 20; // 64 MiB each way
            let src = random_values(n, 1);
            let mut dst = vec![0.0f32; n];
            let t = b.time(|| {
                dst.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })?;
            let copy_bytes = 2.0 * n as f64 * F32;
            let m = 1024usize;
            let a = random_values(m * m, 2);
            let bb = random_values(m * m, 3);
            let mut c = vec![0.0f32; m * m];
            let tg = b.time(|| {
                crate::device::cpu::sgemm(
                    m, m, m, &a, m as isize, 1, &bb, m as isize, 1, &mut c, 0.0,
                );
                Ok(())
            })?;
            Ok(Ceilings {
                copy_gb_per_s: copy_bytes / (t.median_ms * 1e-3) / 1e9,
                copy_bytes,
                gemm_tflop_per_s: 2.0 * (m as f64).powi(3) / (tg.median_ms * 1e-3) / 1e12,
                gemm_shape: format!("{m}x{m}x{m} gemm crate SGEMM"),
                gemm_math: "fp32".into(),
            })
        }
    }
}
