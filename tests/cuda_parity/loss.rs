//! The count and MSE losses and the window count loss.
use super::*;

#[test]
pub(crate) fn count_l1_and_mse_losses() {
    let Some((_g, d, _dev)) = gpu("losses") else {
        return;
    };
    let mut r = Rng(11);
    for dims in [[3, 1, 7, 9], [1, 2, 33, 17]] {
        let z = r.tensor(&dims, 1.0, 0.0);
        let zg = on(&z, &d);
        let sums = per_image_counts(&z).unwrap();
        close_vals(
            "per-image counts",
            &per_image_counts(&zg).unwrap(),
            &sums,
            REDUCTION,
        );
        // counts well away from the sums, so sign(Σ|z| − y) is the same on both devices
        let counts: Vec<f32> = sums
            .iter()
            .enumerate()
            .map(|(i, s)| if i % 2 == 0 { s + 5.0 } else { s - 5.0 })
            .collect();
        let l = count_l1_loss_forward(&z, &counts).unwrap();
        let lg = count_l1_loss_forward(&zg, &counts).unwrap();
        close_vals("count l1 loss", &[lg], &[l], REDUCTION);
        close(
            "count l1 dz",
            &count_l1_loss_backward(&zg, &counts, 0.7).unwrap(),
            &count_l1_loss_backward(&z, &counts, 0.7).unwrap(),
            ELEMENTWISE,
        );
        let t = r.tensor(&dims, 1.0, 0.3);
        let tg = on(&t, &d);
        close_vals(
            "mse loss",
            &[mse_loss_forward(&zg, &tg).unwrap()],
            &[mse_loss_forward(&z, &t).unwrap()],
            REDUCTION,
        );
        close(
            "mse dpred",
            &mse_loss_backward(&zg, &tg, 1.3).unwrap(),
            &mse_loss_backward(&z, &t, 1.3).unwrap(),
            ELEMENTWISE,
        );
        // the taped losses keep their value and read their gradient on the device (a
        // training step reads nothing back): a loss gradient of 0.9 through both
        let taped = |z: &Tensor, t: &Tensor| {
            let tape = dcl::autograd::Tape::new();
            let zv = tape.leaf(z.clone());
            let l = dcl::ops::loss::count_l1_loss(&tape, &zv, &counts).unwrap();
            let m = dcl::ops::loss::mse_loss(&tape, &zv, t).unwrap();
            let both = dcl::ops::elementwise::add(&tape, &l, &m).unwrap();
            let seed = dcl::ops::elementwise::scale(&tape, &both, 0.9).unwrap();
            assert_eq!(
                seed.value().device(),
                z.device(),
                "the loss stays on its device"
            );
            let mut grads = tape.backward(&seed).unwrap();
            (seed.value().item().unwrap(), grads.take(&zv).unwrap())
        };
        let (lc, gc) = taped(&z, &t);
        let (lg, gg) = taped(&zg, &tg);
        close_vals("taped losses", &[lg], &[lc], REDUCTION);
        close("taped losses' dz", &gg, &gc, ELEMENTWISE);
    }
}

/// The window count loss is composed of taped ops (abs, an all-ones conv, add, sum, scale), its
/// targets are window sums of a density map: both on the GPU against the CPU, targets well away
/// from the window sums; and its scalar adds to the count loss's on the same device.
#[test]
pub(crate) fn window_count_loss_and_gradient() {
    let Some((_g, d, _dev)) = gpu("window loss") else {
        return;
    };
    let mut r = Rng(13);
    let z = r.tensor(&[3, 1, 32, 32], 1.0, 0.0);
    let density = r.tensor(&[3, 1, 256, 256], 0.01, 0.02);
    let y = window_sums(&density, 4).unwrap();
    close(
        "window sums",
        &window_sums(&on(&density, &d), 4).unwrap(),
        &y,
        REDUCTION,
    );
    let y: Vec<f32> = y
        .to_vec()
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 2 == 0 { v + 50.0 } else { v - 50.0 })
        .collect();
    let y = Tensor::from_vec(y, &[3, 1, 4, 4]).unwrap();
    let counts = per_image_counts(&z).unwrap();
    let counts: Vec<f32> = counts.iter().map(|c| c + 5.0).collect();
    let run = |z: &Tensor| {
        let tape = Tape::new();
        let zv = tape.leaf(z.clone());
        let win = window_count_l1_loss(&tape, &zv, 4, &y).unwrap();
        let l = add(&tape, &count_l1_loss(&tape, &zv, &counts).unwrap(), &win).unwrap();
        let lv = l.value().item().unwrap();
        let g = tape.backward(&l).unwrap().get(&zv).unwrap().clone();
        (lv, g)
    };
    let (l, g) = run(&z);
    let (lg, gg) = run(&on(&z, &d));
    close_vals("count + window loss", &[lg], &[l], REDUCTION);
    close("count + window loss dz", &gg, &g, ELEMENTWISE);
}
