//! The C heap's policy for the CPU backend's buffers. Every op's output is a fresh `Vec`, and
//! glibc's malloc serves a block above its mmap threshold (128 KB, rising to at most 32 MB as
//! blocks are freed) with newly mapped pages and unmaps them on free, and returns the heap's
//! free top above its trim threshold to the system: so each training step faults in, and the
//! kernel zeroes, its activations and gradients again (on this project's machines touching
//! fresh pages runs at about 1–2 GB/s). [`keep_freed_memory`] makes freed memory stay in the
//! process for the next step instead (the step's allocation pattern repeats, so the heap
//! reaches a steady size; peak memory is unchanged).
//!
//! Measured (BENCHMARKS.md, "after the heap, inlining and memory-bound fixes", item 1): the
//! width-1 counter step at 256², batch 8, faulted 1.27 M pages per warm-up + step before,
//! 0.57 M after, and ran in 8246 ms instead of 9573.

/// Keeps freed memory mapped for reuse: no block is served by its own mapping (`M_MMAP_MAX`
/// 0) and the heap's free top is kept up to 2 GB (`M_TRIM_THRESHOLD`). Call once, early,
/// before threads start allocating (the `dcl` binary does, first thing). Returns whether the
/// policy was set: true on glibc; elsewhere a no-op returning false (other allocators keep
/// their own policy).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tunables; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy_applies_on_glibc_and_large_blocks_still_allocate() {
        let set = super::keep_freed_memory();
        assert_eq!(set, cfg!(all(target_os = "linux", target_env = "gnu")));
        // a block larger than any mmap threshold, from the heap now, twice (freed, reused)
        for _ in 0..2 {
            let v = vec![1.0f32; 40 << 20];
            assert_eq!(v[v.len() - 1], 1.0);
        }
    }
}
