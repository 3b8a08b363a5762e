//! End to end on the CPU: small networks trained on a handful of small synthetic images must
//! learn (the counter at least halves its count MAE from initialisation, the localizer its
//! MSE), and checkpoints reproduce the same counts.
use std::sync::Arc;

use dcl::checkpoint::{load_counter, load_localizer};
use dcl::data::Dataset;
use dcl::infer::dataset::{localizer_mse, predict_counts};
use dcl::metrics::count_metrics;
use dcl::nn::{Counter, Localizer, ModelKind};
use dcl::train::{open_data, train_counter, train_localizer, TrainOptions};

fn options(out: &std::path::Path) -> TrainOptions {
    TrainOptions {
        data: "synthetic".into(),
        synthetic_n: 6,
        synthetic_size: 64,
        out: out.to_path_buf(),
        epochs: 1000,
        max_steps: Some(240),
        batch_size: 3,
        lr: 2e-3,
        sgdr_t0: 1000.0,
        sgdr_t_mult: 1.0,
        width_mult: 1.0 / 16.0,
        unet_width: 64,
        gmp_points: 4,
        // the paper's augmentation; mosaic crops are covered by tests/count_tiling.rs
        mosaic: 0.0,
        seed: 3,
        quiet: true,
        ..TrainOptions::default()
    }
}

fn train_mae(counter: &Counter, ds: &Arc<Dataset>) -> f64 {
    let idx: Vec<usize> = (0..ds.len()).collect();
    let c = predict_counts(counter, ds, &idx, 4).unwrap();
    count_metrics(&c.iter().map(|c| (c.predicted, c.truth)).collect::<Vec<_>>()).mae
}

#[test]
fn counter_then_localizer_learn_and_checkpoints_reproduce_counts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let ds = Arc::new(Dataset::synthetic(6, 3, 64, 3.0).unwrap());

    let init = Counter::new(&opts.model_config(ModelKind::Counter), opts.seed).unwrap();
    let mae0 = train_mae(&init, &ds);
    let data = open_data(&opts).unwrap();
    let summary = train_counter(&opts, &data, false).unwrap();
    let (trained, _) = load_counter(&summary.checkpoint).unwrap();
    let mae1 = train_mae(&trained, &ds);
    eprintln!("counter MAE {mae0:.2} -> {mae1:.2}");
    assert!(mae1 <= 0.5 * mae0, "counter MAE {mae0} -> {mae1}");

    // reloading gives the same counts, bit for bit
    let (again, _) = load_counter(&summary.checkpoint).unwrap();
    let idx: Vec<usize> = (0..ds.len()).collect();
    let a = predict_counts(&trained, &ds, &idx, 4).unwrap();
    let b = predict_counts(&again, &ds, &idx, 4).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.predicted.to_bits(), y.predicted.to_bits());
    }

    let lopts = TrainOptions {
        lr: 1e-3,
        ..opts.clone()
    };
    let init_loc = Localizer::new(
        &lopts.model_config(ModelKind::Localizer),
        lopts.seed ^ 0x10CA,
    )
    .unwrap();
    let mse0 = localizer_mse(&trained, &init_loc, &ds, &idx, 4).unwrap();
    let s = train_localizer(&lopts, &summary.checkpoint, &data, false).unwrap();
    let (loc, _) = load_localizer(&s.checkpoint).unwrap();
    let mse1 = localizer_mse(&trained, &loc, &ds, &idx, 4).unwrap();
    eprintln!("localizer MSE {mse0:.4} -> {mse1:.4}");
    assert!(mse1 <= 0.5 * mse0, "localizer MSE {mse0} -> {mse1}");

    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 2);
    assert!(
        metrics.contains("\"model\":\"counter\"") && metrics.contains("\"model\":\"localizer\"")
    );
}

/// The coupled baseline (one UNet, MSE on the density map, count = its sum) learns to count
/// too, reloads as what `--counter` takes, and counts an image as its density map's sum.
#[test]
fn coupled_baseline_learns_to_count_and_counts_as_its_maps_sum() {
    use dcl::checkpoint::load_count_net;
    use dcl::infer::{predict, InferOptions};
    use dcl::nn::{CountNet, Coupled};
    use dcl::train::train_coupled;
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        lr: 1e-3,
        max_steps: Some(160),
        ..options(dir.path())
    };
    let ds = Arc::new(Dataset::synthetic(6, 3, 64, 3.0).unwrap());
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mae = |net: &Coupled| {
        let c = predict_counts(net, &ds, &idx, 4).unwrap();
        count_metrics(&c.iter().map(|c| (c.predicted, c.truth)).collect::<Vec<_>>()).mae
    };
    let init = Coupled::new(&opts.model_config(ModelKind::Coupled), opts.seed ^ 0xC0DE).unwrap();
    let mae0 = mae(&init);
    let data = open_data(&opts).unwrap();
    let summary = train_coupled(&opts, &data, false).unwrap();
    assert!(summary.checkpoint.ends_with("coupled.safetensors"));
    let CountNet::Coupled(trained) = load_count_net(&summary.checkpoint).unwrap() else {
        panic!("a coupled checkpoint loads as a coupled model");
    };
    let mae1 = mae(&trained);
    eprintln!("coupled MAE {mae0:.2} -> {mae1:.2}");
    assert!(mae1 <= 0.5 * mae0, "coupled MAE {mae0} -> {mae1}");

    // one 64x48 image (not a multiple of the tile): the count is the density map's sum
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    }));
    let net = CountNet::Coupled(trained);
    let p = predict(&net, None, &img, &InferOptions::default()).unwrap();
    let d = p
        .density
        .as_ref()
        .expect("a coupled model maps its own density");
    assert_eq!((d.width, d.height), (64, 48));
    assert!((p.count - p.coarse.sum()).abs() < 1e-6 * p.count.abs().max(1.0));
    assert!(
        (p.count - d.sum()).abs() <= 1e-3 * p.count.abs().max(1.0),
        "{} vs {}",
        p.count,
        d.sum()
    );
    assert!(p.points(0.0, 2.0).is_some());
}
