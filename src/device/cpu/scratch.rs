//! Reusable scratch buffers for the CPU fast paths' temporaries (padded copies, transposed
//! copies): a small process-wide pool, so a training step does not map, fault in and zero
//! fresh pages for the same large temporaries every call. On the machines this project runs
//! on, touching freshly mapped memory runs at ~1.3 GB/s against ~7–15 GB/s for memory already
//! mapped, and a 256x256 batch of 8 needs temporaries of over 100 MB per convolution.
//!
//! A [`Scratch`] holds `len` floats of unspecified (stale) values: its user writes every float
//! it reads. Dropping it returns the buffer to the pool, which keeps at most [`KEEP`] buffers
//! (the largest ones; others are freed).
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers the pool keeps.
pub const KEEP: usize = 6;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// `len` floats of scratch (values unspecified).
pub struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

/// A buffer of at least `len` floats from the pool (the smallest that fits), or a new one.
pub fn take(len: usize) -> Scratch {
    let reused = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    };
    let buf = reused.unwrap_or_else(|| vec![0.0f32; len]);
    Scratch { buf, len }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(buf);
        if pool.len() > KEEP {
            // free the smallest
            let i = pool
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i)
                .expect("non-empty");
            pool.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let mut a = take(1000);
        assert_eq!(a.len(), 1000);
        a[999] = 7.0;
        let p = a.as_ptr();
        drop(a);
        let b = take(900);
        assert_eq!(b.len(), 900);
        // the same allocation came back unless another test took it meanwhile
        let _ = p == b.as_ptr();
    }
}
