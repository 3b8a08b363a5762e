//! Which SIMD instruction set the CPU fast paths use, chosen at run time (never at build time:
//! the binary is built for baseline x86-64 and runs on Zen 3 / AVX2 machines and on AVX-512
//! ones alike).
//!
//! [`isa()`] is the detected set, optionally lowered by the environment variable
//! `DCL_CPU_ISA=avx512|avx2|scalar` (read once per process), so a run or a benchmark can take
//! the AVX2 path on an AVX-512 machine. Tests call the kernels with an explicit [`Isa`] and
//! check [`Isa::available`] first, or run whole ops and models under [`with_forced_isa`],
//! which sets the set for the calling thread only (tests run side by side in one process).
use std::cell::Cell;
use std::sync::OnceLock;

/// An instruction set a CPU kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No vector kernels: the ops take their portable paths (im2col + the `gemm` crate, plain
    /// loops).
    Scalar,
    /// AVX2 + FMA, 8 floats per vector, 16 vector registers (Zen 3, Haswell and later).
    Avx2,
    /// AVX-512F, 16 floats per vector, 32 vector registers (Zen 4/5, Skylake-SP and later).
    Avx512,
}

impl Isa {
    /// Every set, lowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Whether this CPU can run kernels of this set.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best set this CPU has.
    pub fn detect() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(&Isa::Scalar)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// f32 lanes of one vector register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" => Some(Isa::Scalar),
            "avx2" | "avx2+fma" => Some(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

thread_local! {
    /// The set [`with_forced_isa`] put in force on this thread, if any.
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The set the CPU fast paths use: on a thread inside [`with_forced_isa`] the set it forces;
/// otherwise the process's, [`Isa::detect`] lowered to `DCL_CPU_ISA` when that names an
/// available lower set (a higher or unknown one is ignored, with one line on stderr). Every op
/// reads it once on entry, on its caller's thread, before handing work to the rayon pool.
pub fn isa() -> Isa {
    FORCED.with(|f| f.get()).unwrap_or_else(process_isa)
}

/// Runs `f` with [`isa()`] returning `isa` on the calling thread (clamped to the best set
/// this CPU has; `Isa::Scalar` selects the reference loops), whatever `DCL_CPU_ISA` says: how
/// tests run each instruction set's fast paths, and the reference, on one machine. Ops called
/// by `f` on this thread see it, including the work they hand to rayon; ops that `f` itself
/// starts on other threads do not. Returns what `f` returns; nests, and restores the previous
/// setting on return or unwind.
pub fn with_forced_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(isa.min(Isa::detect())))));
    f()
}

fn process_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = Isa::detect();
        match std::env::var("DCL_CPU_ISA") {
            Ok(v) => match Isa::parse(&v) {
                Some(i) if i <= best => i,
                _ => {
                    eprintln!(
                        "DCL_CPU_ISA={v:?} ignored: this CPU runs {} at best (avx512, avx2 or \
                         scalar)",
                        best.name()
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}

/// Runs `f` with the code generation of `isa`: `f` is inlined into a function compiled with
/// that instruction set's target features, so plain loops in it (lane arrays, `mul_add`,
/// element-wise maps) are vectorised for AVX-512 or AVX2 + FMA instead of baseline SSE2, and
/// `mul_add` becomes one FMA instruction. Falls back to a plain call for [`Isa::Scalar`] or a
/// set this CPU lacks. Keep `f` a leaf loop: closures it hands to rayon are compiled apart.
///
/// **Mark the closure `#[inline(always)]`** (`with_isa(isa, #[inline(always)] || ...)`): the
/// compiler is free not to inline an unmarked closure, and one it did not inline is compiled
/// apart with the baseline features (SSE2), the wrapper only jumping to it. Before the marks,
/// 11 of the fast paths' closures (BatchNorm's backward and statistics, GMP's three passes,
/// bilinear resizing, max-pool, Adam, the transpose) ran that way: found by disassembling the
/// wrappers, after a profile of the resize showed 4-lane `mulps` on an AVX-512 machine.
#[inline(always)]
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if Isa::Avx512.available() => unsafe { run_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if Isa::Avx2.available() => unsafe { run_avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Measured peak of fused multiply-adds in GFLOP/s (2 FLOP per lane per FMA) of `isa` on
/// `threads` threads of the rayon pool: each thread runs independent FMA chains in registers
/// for about `millis` ms. The ceiling the convolutions are compared with.
pub fn fma_peak_gflops(isa: Isa, threads: usize, millis: u64) -> f64 {
    use rayon::prelude::*;
    let threads = threads.max(1);
    // Calibrate one thread's chunk to about 1 ms, then run every thread for `millis`.
    let chunk = |iters: u64| -> f64 { fma_loop(isa, iters) };
    let mut iters = 1u64 << 14;
    loop {
        let t = std::time::Instant::now();
        std::hint::black_box(chunk(iters));
        if t.elapsed().as_secs_f64() > 1e-3 || iters > 1 << 30 {
            break;
        }
        iters *= 2;
    }
    let reps = millis.max(1);
    let t = std::time::Instant::now();
    let _: f64 = (0..threads)
        .into_par_iter()
        .map(|_| (0..reps).map(|_| chunk(iters)).sum::<f64>())
        .sum();
    let secs = t.elapsed().as_secs_f64();
    let flops = threads as f64 * reps as f64 * iters as f64 * FMA_CHAINS as f64 * 2.0;
    flops * isa.lanes() as f64 / secs / 1e9
}

/// Runs `iters` steps of the peak loop of `isa` on the calling thread; returns the FLOP done.
pub fn fma_work(isa: Isa, iters: u64) -> f64 {
    std::hint::black_box(fma_loop(isa, iters));
    iters as f64 * FMA_CHAINS as f64 * 2.0 * isa.lanes() as f64
}

/// Independent accumulators in the peak loop: enough to cover FMA latency × throughput.
const FMA_CHAINS: usize = 12;

fn fma_loop(isa: Isa, iters: u64) -> f64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if Isa::Avx512.available() => unsafe { fma_loop_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if Isa::Avx2.available() => unsafe { fma_loop_avx2(iters) },
        _ => {
            let mut acc = [1.0f32; FMA_CHAINS];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = a.mul_add(0.999_999, 1e-7);
                }
            }
            acc.iter().map(|&v| v as f64).sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); FMA_CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().map(|&v| v as f64).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); FMA_CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_consistent() {
        let best = Isa::detect();
        assert!(best.available());
        assert!(isa() <= best);
        for i in Isa::ALL {
            if i <= best {
                assert!(i.available(), "{i:?} below the best set must be available");
            }
        }
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sse"), None);
    }

    #[test]
    fn forcing_is_per_thread_nested_and_clamped() {
        let outer = isa();
        with_forced_isa(Isa::Scalar, || {
            assert_eq!(isa(), Isa::Scalar);
            with_forced_isa(Isa::Avx512, || assert_eq!(isa(), Isa::detect()));
            assert_eq!(isa(), Isa::Scalar);
            let other = std::thread::spawn(isa).join().unwrap();
            assert_eq!(other, outer, "another thread keeps the process's set");
        });
        assert_eq!(isa(), outer);
        let r = std::panic::catch_unwind(|| with_forced_isa(Isa::Scalar, || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(isa(), outer, "restored on unwind");
    }

    #[test]
    fn fma_peak_is_positive() {
        for i in Isa::ALL.into_iter().filter(|i| i.available()) {
            let g = fma_peak_gflops(i, 1, 2);
            assert!(g > 0.0 && g.is_finite(), "{i:?}: {g}");
        }
    }
}
