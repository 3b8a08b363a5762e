//! A streamed image's memory does not grow with its size: counting (with the localizer, the
//! density map handed on row by row) an image four times as tall peaks at about the same
//! allocation, while holding it whole would take its pixels and its full-resolution maps.
//! Measured with a counting global allocator (this test binary only).
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use dcl::checkpoint::load_localizer;
use dcl::data::stream;
use dcl::infer::stream::{predict_stream_with, Readout, Sinks};
use dcl::infer::InferOptions;
use dcl::tensor::Tensor;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A counter whose coarse map is each 8x8 block's mean green (no network: its own memory is
/// nothing).
fn local_map(images: Tensor) -> dcl::Result<Vec<f32>> {
    let d = images.dims().to_vec();
    let (n, h, w) = (d[0], d[2], d[3]);
    let v = images.to_vec();
    let mut out = Vec::with_capacity(n * (h / 8) * (w / 8));
    for k in 0..n {
        let g = &v[(k * 3 + 1) * h * w..(k * 3 + 2) * h * w];
        for by in 0..h / 8 {
            for bx in 0..w / 8 {
                let s: f32 = (by * 8..by * 8 + 8)
                    .flat_map(|y| (bx * 8..bx * 8 + 8).map(move |x| g[y * w + x]))
                    .sum();
                out.push(s / 64.0 * 0.01);
            }
        }
    }
    Ok(out)
}

/// Peak bytes allocated above the level before, counting `path` with the localizer.
fn peak_of(path: &Path, loc: &dcl::nn::Localizer) -> (usize, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let mut rows = 0usize;
    let mut density_row = |r: &[f32]| -> dcl::Result<()> {
        rows += r.len();
        Ok(())
    };
    let open = || stream::open(path).map_err(|e| dcl::Error::file(path, e));
    let s = predict_stream_with(
        local_map,
        1.0,
        Some((
            loc,
            Readout {
                threshold: 0.01,
                min_distance: 2.0,
            },
        )),
        &open,
        &InferOptions::default(),
        Sinks {
            density_row: &mut density_row,
            image_rows: &mut |_, _, _| {},
            progress: &|_| {},
        },
    )
    .unwrap();
    drop(s);
    (PEAK.load(Ordering::SeqCst) - before, rows)
}

#[test]
fn streamed_memory_does_not_grow_with_the_image() {
    let d = tempfile::tempdir().unwrap();
    let (loc, _) = load_localizer(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/vgg-cells/localizer.safetensors"),
    )
    .unwrap();
    let w = 1024u32;
    let mut peaks = Vec::new();
    for h in [1024u32, 4096] {
        let p = d.path().join(format!("{h}.png"));
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 3 % 256) as u8,
                ((x ^ y) % 256) as u8,
                (y * 5 % 256) as u8,
            ])
        })
        .save(&p)
        .unwrap();
        // warm-up (thread pools, the localizer's first allocations), then measured
        peak_of(&p, &loc);
        let (peak, values) = peak_of(&p, &loc);
        assert_eq!(values, (w * h) as usize);
        eprintln!("{w}x{h}: peak +{:.1} MB", peak as f64 / 1e6);
        peaks.push(peak);
    }
    // Held whole, the taller image would take 12.6 MB of pixels plus 16.8 MB of density map
    // (twice, padded and cropped); streamed, its peak grows by its larger coarse map (192 KB)
    // and little else.
    let grown = peaks[1] as f64 - peaks[0] as f64;
    assert!(
        grown < 3e6,
        "peaks {peaks:?}: +{grown} bytes for a 4x taller image"
    );
}
