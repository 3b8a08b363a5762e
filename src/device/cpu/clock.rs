//! The process's CPU time (all threads), for benchmarks on shared machines: under other
//! processes' load the wall time includes waiting for a core, the CPU time mostly not.

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod sys {
    #[repr(C)]
    pub struct Timespec {
        pub sec: i64,
        pub nsec: i64,
    }
    extern "C" {
        pub fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    /// CLOCK_PROCESS_CPUTIME_ID on Linux.
    pub const PROCESS_CPUTIME: i32 = 2;
}

/// CPU seconds this process has used so far, or `None` where the clock is not available.
pub fn process_cpu_secs() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        let mut ts = sys::Timespec { sec: 0, nsec: 0 };
        // Safety: a valid clock id and out-pointer.
        let rc = unsafe { sys::clock_gettime(sys::PROCESS_CPUTIME, &mut ts) };
        (rc == 0).then_some(ts.sec as f64 + ts.nsec as f64 * 1e-9)
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_advances() {
        if let Some(a) = super::process_cpu_secs() {
            let mut x = 0u64;
            for i in 0..10_000_000u64 {
                x = x.wrapping_add(i * i);
            }
            std::hint::black_box(x);
            assert!(super::process_cpu_secs().unwrap() > a);
        }
    }
}
