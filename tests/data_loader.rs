//! Loader, augmentation through batches, splits and the bounded cache.
use std::path::Path;
use std::sync::Arc;

use dcl::data::{DataOptions, Dataset, Loader, SplitSpec, IMAGENET_MEAN, IMAGENET_STD};
use image::{ImageBuffer, Rgb};

fn small_synthetic(n: usize) -> Arc<Dataset> {
    Arc::new(Dataset::synthetic(n, 5, 64, 2.0).unwrap())
}

#[test]
fn batches_have_the_promised_shapes_and_values() {
    let ds = small_synthetic(5);
    let loader = Loader::new(ds.clone(), (0..5).collect(), 2, false, false, 0).with_workers(0);
    assert_eq!(loader.batches_per_epoch(), 3);
    let batches: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].images.dims(), [2, 3, 64, 64]);
    assert_eq!(batches[0].density.dims(), [2, 1, 64, 64]);
    assert_eq!(
        batches[2].images.dims(),
        [1, 3, 64, 64],
        "last partial batch kept"
    );
    // No shuffle, no augmentation: the samples in order, ImageNet-normalised.
    let b = &batches[0];
    let s = ds.sample(1);
    assert_eq!(b.names[1], s.name);
    assert_eq!(b.counts[1], s.count());
    let img = b.images.as_cpu().unwrap();
    let plane = 64 * 64;
    for c in 0..3 {
        let i = 3 * plane + c * plane + 100;
        let want = (s.image[c * plane + 100] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!((img[i] - want).abs() < 1e-6);
    }
    let dens = b.density.as_cpu().unwrap();
    let sum: f64 = dens[plane..].iter().map(|&v| v as f64).sum();
    assert!((sum - s.count() as f64).abs() < 1e-3);
}

#[test]
fn epochs_are_pure_functions_of_seed_and_epoch_whatever_the_threads() {
    let ds = small_synthetic(7);
    let idx: Vec<usize> = (0..7).collect();
    let collect =
        |workers: usize, seed: u64, epoch: usize| -> Vec<(Vec<String>, Vec<f32>, Vec<f32>)> {
            Loader::new(ds.clone(), idx.clone(), 3, true, true, seed)
                .with_workers(workers)
                .with_prefetch(1)
                .epoch(epoch)
                .map(|b| {
                    let b = b.unwrap();
                    (b.names, b.images.to_vec(), b.density.to_vec())
                })
                .collect()
        };
    let a = collect(0, 11, 2);
    assert_eq!(a, collect(3, 11, 2), "threads must not change the batches");
    assert_eq!(a, collect(1, 11, 2));
    assert_ne!(
        a,
        collect(0, 11, 3),
        "another epoch, another order / augmentation"
    );
    assert_ne!(a, collect(0, 12, 2), "another seed");
    // Every sample appears once per epoch.
    let mut names: Vec<String> = a.iter().flat_map(|b| b.0.clone()).collect();
    names.sort();
    let mut want: Vec<String> = (0..7).map(|i| ds.sample(i).name.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    // A batch can be rebuilt alone (resume).
    let l = Loader::new(ds.clone(), idx.clone(), 3, true, true, 11);
    let b1 = l.batch(2, 1).unwrap();
    assert_eq!(b1.images.to_vec(), a[1].1);
    assert!(l.batch(2, 3).is_err());
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let ds = small_synthetic(8);
    let l = Loader::new(ds, (0..8).collect(), 1, true, true, 0)
        .with_workers(2)
        .with_prefetch(1);
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it); // joins the workers; a hang here would fail the test by timeout
}

#[test]
fn dots_and_density_move_with_the_pixels_under_augmentation() {
    // One image whose pixels mark its dots: bright red at each dot, black elsewhere.
    let d = tempfile::tempdir().unwrap();
    let dots = [(3u32, 5u32), (30, 2), (17, 28), (0, 31), (31, 0)];
    let mark = |x: u32, y: u32| {
        if dots.contains(&(x, y)) {
            [255u8, 0, 0]
        } else {
            [0, 0, 0]
        }
    };
    ImageBuffer::from_fn(32, 32, |x, y| Rgb(mark(x, y)))
        .save(d.path().join("001cell.png"))
        .unwrap();
    ImageBuffer::from_fn(32, 32, |x, y| Rgb(mark(x, y)))
        .save(d.path().join("001dots.png"))
        .unwrap();
    let ds = Arc::new(
        Dataset::open(
            d.path(),
            &DataOptions {
                sigma: 1.0,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let plain = ds.sample(0).density.clone();
    let mut seen = std::collections::HashSet::new();
    for seed in 0..40 {
        let b = Loader::new(ds.clone(), vec![0], 1, false, true, seed)
            .batch(0, 0)
            .unwrap();
        let img = b.images.to_vec();
        let dens = b.density.to_vec();
        let red_hi = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        assert_eq!(b.points[0].len(), dots.len());
        for &(x, y) in &b.points[0] {
            let (c, r) = (x.floor() as usize, y.floor() as usize);
            assert!(
                (img[r * 32 + c] - red_hi).abs() < 1e-5,
                "seed {seed}: dot ({x},{y}) not on a marked pixel"
            );
        }
        let marked = img[..32 * 32]
            .iter()
            .filter(|&&v| (v - red_hi).abs() < 1e-5)
            .count();
        assert_eq!(marked, dots.len());
        // The transformed map equals the map of the transformed dots.
        let want = dcl::data::density_map(32, 32, &b.points[0], 1.0);
        for (a, w) in dens.iter().zip(&want) {
            assert!((a - w).abs() < 1e-6);
        }
        seen.insert(dens.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        let sum: f64 = dens.iter().map(|&v| v as f64).sum();
        assert!((sum - dots.len() as f64).abs() < 1e-3);
    }
    // The dots are asymmetric, so the 8 symmetries of the square give 8 distinct maps.
    assert_eq!(seen.len(), 8);
    assert!(seen.contains(&plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()));
}

#[test]
fn split_is_seeded_10_9_1_and_keeps_groups_together() {
    let ds = Dataset::synthetic(40, 1, 32, 1.0).unwrap();
    let spec = SplitSpec {
        seed: 3,
        ..Default::default()
    };
    let s = ds.split(&spec).unwrap();
    assert_eq!((s.train.len(), s.test.len(), s.val.len()), (20, 18, 2));
    assert_eq!(s, ds.split(&spec).unwrap());
    assert_ne!(
        s,
        ds.split(&SplitSpec {
            seed: 4,
            ..Default::default()
        })
        .unwrap()
    );
    let mut all: Vec<usize> = s
        .train
        .iter()
        .chain(&s.test)
        .chain(&s.val)
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    // Group key: stems 001cell..040cell grouped by their tens digit ("00", "01", ...): four
    // groups of ten (the first of nine, the last of one) never straddle parts.
    let spec = SplitSpec {
        seed: 3,
        group: Some(r"^(\d\d)".into()),
        ..Default::default()
    };
    let s = ds.split(&spec).unwrap();
    let key = |i: usize| ds.image_of(i).stem[..2].to_string();
    for (a, b) in [(&s.train, &s.test), (&s.train, &s.val), (&s.test, &s.val)] {
        for i in a {
            assert!(
                b.iter().all(|&j| key(j) != key(*i)),
                "group {} straddles",
                key(*i)
            );
        }
    }
    assert!(ds
        .split(&SplitSpec {
            group: Some("(".into()),
            ..Default::default()
        })
        .is_err());
}

#[test]
fn folds_partition_the_samples_evenly_and_keep_groups_together() {
    let ds = Dataset::synthetic(41, 1, 32, 1.0).unwrap();
    let folds = ds.folds(5, 7, None).unwrap();
    assert_eq!(folds, ds.folds(5, 7, None).unwrap(), "seeded");
    assert_ne!(folds, ds.folds(5, 8, None).unwrap());
    let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&n| n == 8 || n == 9), "{sizes:?}");
    let mut all: Vec<usize> = folds.concat();
    all.sort();
    assert_eq!(
        all,
        (0..41).collect::<Vec<_>>(),
        "every sample in exactly one fold"
    );
    // groups by tens digit (9, 10, 10, 10, 2 images): whole groups per fold
    let folds = ds.folds(3, 7, Some(r"^(\d\d)")).unwrap();
    let key = |i: usize| ds.image_of(i).stem[..2].to_string();
    for (a, fa) in folds.iter().enumerate() {
        for (b, fb) in folds.iter().enumerate() {
            if a != b {
                assert!(fa.iter().all(|i| fb.iter().all(|j| key(*i) != key(*j))));
            }
        }
    }
    // more folds than groups is refused, with the numbers
    let e = ds.folds(6, 7, Some(r"^(\d\d)")).unwrap_err().to_string();
    assert!(e.contains("6-fold") && e.contains("5 group"), "{e}");
    assert!(ds.folds(1, 0, None).is_err());
}

#[test]
fn mbm_default_group_is_the_slide() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mbm");
    let ds = Dataset::open(&fx, &DataOptions::default()).unwrap();
    assert_eq!(ds.group_keys(None).unwrap(), ["BM_GRAZ_HE_0001_01"]);
    // Four patches of one crop: always in one part.
    let s = ds.split(&SplitSpec::default()).unwrap();
    assert!([s.train.len(), s.test.len(), s.val.len()].contains(&4));
}

#[test]
fn cache_budget_bounds_memory_and_decodes_the_same_samples() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mbm");
    let full = Dataset::open(&fx, &DataOptions::default()).unwrap();
    let one_mib = 1 << 20;
    let bounded = Dataset::open(
        &fx,
        &DataOptions {
            cache_bytes: 2 * one_mib,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(full.cached_bytes() > 4 * one_mib - 4096);
    assert!(bounded.cached_bytes() <= 2 * one_mib);
    for i in 0..4 {
        assert_eq!(*full.sample(i), *bounded.sample(i));
    }
    let none = Dataset::open(
        &fx,
        &DataOptions {
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(none.cached_bytes(), 0);
    assert_eq!(
        none.image_samples(0).unwrap(),
        full.image_samples(0).unwrap()
    );
    // Batches from the uncached set equal those of the cached one.
    let a = Loader::new(Arc::new(full), (0..4).collect(), 4, true, true, 9)
        .batch(0, 0)
        .unwrap();
    let b = Loader::new(Arc::new(none), (0..4).collect(), 4, true, true, 9)
        .batch(0, 0)
        .unwrap();
    assert_eq!(a.images.to_vec(), b.images.to_vec());
}

#[test]
fn mixed_sizes_in_a_batch_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    for (stem, n) in [("001", 16u32), ("002", 20)] {
        ImageBuffer::from_fn(n, n, |_, _| Rgb([1u8, 2, 3]))
            .save(d.path().join(format!("{stem}cell.png")))
            .unwrap();
        ImageBuffer::from_fn(n, n, |x, y| {
            Rgb(if x == y { [255u8, 0, 0] } else { [0, 0, 0] })
        })
        .save(d.path().join(format!("{stem}dots.png")))
        .unwrap();
    }
    let ds = Arc::new(Dataset::open(d.path(), &DataOptions::default()).unwrap());
    let err = Loader::new(ds.clone(), vec![0, 1], 2, false, false, 0)
        .batch(0, 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("mixes sample sizes"), "{err}");
    // The epoch iterator ends after the error.
    let l = Loader::new(ds, vec![0, 1], 2, false, false, 0).with_workers(1);
    let v: Vec<_> = l.epoch(0).collect();
    assert_eq!(v.len(), 1);
    assert!(v[0].is_err());
}

#[test]
fn mosaic_crops_keep_dots_on_their_density_and_count_the_window() {
    let ds = small_synthetic(6);
    let idx: Vec<usize> = (0..ds.len()).collect();
    let loader = Loader::new(ds.clone(), idx.clone(), 3, true, true, 9).with_mosaic(1.0);
    let b = loader.batch(0, 1).unwrap();
    let (h, w) = (b.images.dims()[2], b.images.dims()[3]);
    let den = b.density.to_vec();
    for (k, name) in b.names.iter().enumerate() {
        assert!(name.ends_with("+mosaic"), "{name}");
        let plane = &den[k * h * w..(k + 1) * h * w];
        let sum: f64 = plane.iter().map(|&v| v as f64).sum();
        assert!(
            (sum - b.counts[k] as f64).abs() < 1e-3,
            "count target is the window's density"
        );
        for &(x, y) in &b.points[k] {
            assert!(x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32);
            assert!(
                plane[y as usize * w + x as usize] > 0.0,
                "dot off its density blob"
            );
        }
    }
    // deterministic, and different from the plain batch
    let again = Loader::new(ds.clone(), idx.clone(), 3, true, true, 9).with_mosaic(1.0);
    assert_eq!(
        again.batch(0, 1).unwrap().images.to_vec(),
        b.images.to_vec()
    );
    let plain = Loader::new(ds, idx, 3, true, true, 9).batch(0, 1).unwrap();
    assert!(plain.names.iter().all(|n| !n.ends_with("+mosaic")));
    assert_ne!(plain.images.to_vec(), b.images.to_vec());
}

#[test]
fn stain_jitter_changes_colours_only_and_is_seeded() {
    let ds = small_synthetic(6);
    let idx: Vec<usize> = (0..6).collect();
    let plain = Loader::new(ds.clone(), idx.clone(), 3, true, true, 4)
        .with_mosaic(0.5)
        .with_workers(0);
    let none = Loader::new(ds.clone(), idx.clone(), 3, true, true, 4)
        .with_mosaic(0.5)
        .with_stain_jitter(0.0)
        .with_workers(0);
    let jit = |seed| {
        Loader::new(ds.clone(), idx.clone(), 3, true, true, seed)
            .with_mosaic(0.5)
            .with_stain_jitter(0.1)
            .with_workers(0)
    };
    for b in 0..2 {
        let (p, n) = (plain.batch(1, b).unwrap(), none.batch(1, b).unwrap());
        assert_eq!(p.images.to_vec(), n.images.to_vec(), "σ 0 is no jitter");
        let j = jit(4).batch(1, b).unwrap();
        // same samples, flips and mosaics: same counts, density and dots; other colours
        assert_eq!(p.names, j.names);
        assert_eq!(p.counts, j.counts);
        assert_eq!(p.points, j.points);
        assert_eq!(p.density.to_vec(), j.density.to_vec());
        let (pi, ji) = (p.images.to_vec(), j.images.to_vec());
        let moved = pi
            .iter()
            .zip(&ji)
            .filter(|(a, b)| (*a - *b).abs() > 1e-3)
            .count();
        assert!(
            moved > pi.len() / 10,
            "only {moved} of {} values jittered",
            pi.len()
        );
        assert_eq!(ji, jit(4).batch(1, b).unwrap().images.to_vec(), "seeded");
    }
    // unaugmented loaders (validation, evaluation) never jitter
    let eval = Loader::new(ds.clone(), idx.clone(), 3, false, false, 4).with_workers(0);
    let eval_j = Loader::new(ds, idx, 3, false, false, 4)
        .with_stain_jitter(0.1)
        .with_workers(0);
    assert_eq!(
        eval.batch(0, 0).unwrap().images.to_vec(),
        eval_j.batch(0, 0).unwrap().images.to_vec()
    );
}

#[test]
fn scale_jitter_zooms_mosaic_windows_with_their_dots_and_density() {
    let ds = small_synthetic(6);
    let idx: Vec<usize> = (0..6).collect();
    let loader = |a: f32| {
        Loader::new(ds.clone(), idx.clone(), 3, true, true, 4)
            .with_mosaic(1.0)
            .with_scale_jitter(a)
            .with_workers(0)
    };
    let (plain, one) = (loader(1.0), loader(1.0).with_scale_jitter(1.0));
    let (tiny, zoomed) = (loader(1.0001), loader(2.0));
    let (mut smallest, mut largest) = (f32::INFINITY, 0f32);
    let mean_count = (0..6).map(|i| ds.count(i)).sum::<f32>() / 6.0;
    for epoch in 0..6 {
        for b in 0..2 {
            let p = plain.batch(epoch, b).unwrap();
            assert_eq!(
                p.images.to_vec(),
                one.batch(epoch, b).unwrap().images.to_vec()
            );
            // a zoom that rounds to the patch size is the unzoomed window, pixel for pixel and
            // dot for dot (the same draws of tiles, flips and offsets)
            let t = tiny.batch(epoch, b).unwrap();
            assert_eq!(
                p.images.to_vec(),
                t.images.to_vec(),
                "epoch {epoch} batch {b}"
            );
            assert_eq!(p.points, t.points);
            let z = zoomed.batch(epoch, b).unwrap();
            assert_eq!(
                z.images.to_vec(),
                loader(2.0).batch(epoch, b).unwrap().images.to_vec(),
                "seeded"
            );
            let (h, w) = (z.images.dims()[2], z.images.dims()[3]);
            assert_eq!((h, w), (64, 64), "the patch size is kept");
            let (den, img) = (z.density.to_vec(), z.images.to_vec());
            for k in 0..z.counts.len() {
                let plane = &den[k * h * w..(k + 1) * h * w];
                let sum: f64 = plane.iter().map(|&v| v as f64).sum();
                assert!((sum - z.counts[k] as f64).abs() < 1e-3, "count = density");
                assert!(plane.iter().all(|&v| v >= 0.0));
                smallest = smallest.min(z.counts[k]);
                largest = largest.max(z.counts[k]);
                // dots stay on their cells: the synthetic cells are blue, so the image is
                // bluer at the dots than a few pixels away from them
                let blue = &img[(3 * k + 2) * h * w..(3 * k + 3) * h * w];
                let at = |x: f32, y: f32| {
                    let (c, r) = (x as isize, y as isize);
                    (c >= 0 && r >= 0 && c < w as isize && r < h as isize)
                        .then(|| blue[r as usize * w + c as usize])
                };
                let (mut on, mut off, mut n_on, mut n_off) = (0.0, 0.0, 0, 0);
                for &(x, y) in &z.points[k] {
                    assert!(x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32);
                    assert!(
                        plane[y as usize * w + x as usize] > 0.0,
                        "dot off its density"
                    );
                    on += at(x, y).unwrap();
                    n_on += 1;
                    if let Some(v) = at(x + 6.0, y + 5.0) {
                        off += v;
                        n_off += 1;
                    }
                }
                if n_on >= 3 && n_off >= 3 {
                    assert!(
                        on / n_on as f32 > off / n_off as f32 + 0.2,
                        "dots not on bright cells: {} vs {}",
                        on / n_on as f32,
                        off / n_off as f32
                    );
                }
            }
        }
    }
    // windows from a quarter to four times a patch's area: counts well below and above a
    // patch's
    assert!(
        smallest < 0.6 * mean_count && largest > 1.7 * mean_count,
        "counts {smallest}..{largest}, a patch's {mean_count}"
    );
}
