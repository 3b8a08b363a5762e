//! CPU backend helpers shared by the ops' reference implementations: the `gemm` crate's SGEMM,
//! run-time instruction-set selection ([`simd`]) and the SIMD micro-kernels of the fast paths
//! ([`kernels`]).
pub mod clock;
pub mod heap;
pub mod kernels;
pub mod par;
pub mod scratch;
pub mod simd;

/// Row-major single-precision GEMM on the CPU through the `gemm` crate (multithreaded, SIMD):
/// `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C`, where each operand has explicit row and column
/// strides so transposed views need no copy.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: isize,
    a_cs: isize,
    b: &[f32],
    b_rs: isize,
    b_cs: isize,
    c: &mut [f32],
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in c[..m * n].iter_mut() {
            *v *= beta;
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if m * n * k >= 32 * 32 * 32 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Safety: strides describe in-bounds views of the given slices (checked by debug asserts);
    // `gemm` reads C only when `read_dst` is true.
    debug_assert!(c.len() >= m * n);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sgemm_matches_naive_with_transposes_and_beta() {
        let (m, n, k) = (3, 5, 7);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // stored n×k
        let mut c: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
        let c0 = c.clone();
        sgemm(m, n, k, &a, k as isize, 1, &bt, 1, k as isize, &mut c, 0.5);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.5 * c0[i * n + j];
                for l in 0..k {
                    s += a[i * k + l] * bt[j * k + l];
                }
                assert!((c[i * n + j] - s).abs() < 1e-4);
            }
        }
    }
}
