use super::*;
use crate::ops::gradcheck::{check_gradients_with, random_input, GradcheckOptions};
use crate::rng::Rng;

/// Per channel (mean, biased variance) computed directly in f64.
fn moments(t: &Tensor) -> Vec<(f64, f64)> {
    let d = t.dims();
    let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
    let v = t.to_vec();
    (0..c)
        .map(|ch| {
            let xs: Vec<f64> = (0..n)
                .flat_map(|i| v[(i * c + ch) * hw..][..hw].iter().map(|&x| x as f64))
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            (mean, var)
        })
        .collect()
}

fn shifted(dims: &[usize], offset: f32, scale: f32, seed: u64) -> Tensor {
    let v = random_input(dims, seed)
        .to_vec()
        .iter()
        .map(|&x| offset + scale * x)
        .collect();
    Tensor::from_vec(v, dims).unwrap()
}

fn t(v: &[f32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

#[test]
fn normalized_output_has_zero_mean_unit_variance() {
    // The offset of 1000 with a spread of 0.1 would defeat a one-pass E[x²] − E[x]² in f32.
    for (offset, scale) in [(5.0, 3.0), (1000.0, 0.1)] {
        let x = shifted(&[4, 3, 6, 5], offset, scale, 9);
        let (y, _, _) = batch_norm2d_train_forward(&x, &t(&[1.0; 3]), &t(&[0.0; 3]), 1e-5).unwrap();
        // x − mean is exact only up to the f32 spacing at `offset`, relative to the spread.
        let mean_tol = 1e-5 + 2.0 * (f32::EPSILON * offset / scale) as f64;
        for (mean, var) in moments(&y) {
            assert!(mean.abs() < mean_tol, "mean {mean} (offset {offset})");
            assert!((var - 1.0).abs() < 2e-3, "var {var} (offset {offset})");
        }
        // gamma scales the spread, beta moves the mean.
        let (y, _, _) =
            batch_norm2d_train_forward(&x, &t(&[2.0, 1.0, 0.5]), &t(&[1.0, -1.0, 0.0]), 1e-5)
                .unwrap();
        let m = moments(&y);
        for (ch, (mean, var)) in [(1.0, 4.0), (-1.0, 1.0), (0.0, 0.25)].iter().enumerate() {
            assert!((m[ch].0 - mean).abs() < 2.0 * mean_tol, "{:?}", m[ch]);
            assert!((m[ch].1 - var).abs() < 2e-3 * var, "{:?}", m[ch]);
        }
    }
}

#[test]
fn running_stats_after_one_update() {
    // x [2, 2, 1, 2]: channel 0 holds 1, 2 (image 0) and 3, 6 (image 1): mean 3, biased
    // variance (4 + 1 + 0 + 9)/4 = 3.5, unbiased 14/3. Channel 1 holds 0, 0, 0, 4: mean 1,
    // biased variance (1 + 1 + 1 + 9)/4 = 3, unbiased 4.
    let x = Tensor::from_vec(vec![1., 2., 0., 0., 3., 6., 0., 4.], &[2, 2, 1, 2]).unwrap();
    let (y, saved, stats) =
        batch_norm2d_train_forward(&x, &t(&[1., 1.]), &t(&[0., 0.]), 0.0).unwrap();
    assert_eq!(stats.mean.to_vec(), vec![3.0, 1.0]);
    let vu = stats.var_unbiased.to_vec();
    assert!(
        (vu[0] - 14.0 / 3.0).abs() < 1e-6 && (vu[1] - 4.0).abs() < 1e-6,
        "{vu:?}"
    );
    let is = saved.invstd.to_vec();
    assert!((is[0] - 1.0 / 3.5f32.sqrt()).abs() < 1e-6, "{is:?}");
    // Normalising uses the biased variance: the first element is (1 − 3)/√3.5.
    assert!((y.to_vec()[0] + 2.0 / 3.5f32.sqrt()).abs() < 1e-6);

    let mut rm = t(&[0.5, 0.0]);
    let mut rv = t(&[2.0, 1.0]);
    update_running_stats(&mut rm, &mut rv, &stats, 0.1).unwrap();
    let (rm, rv) = (rm.to_vec(), rv.to_vec());
    let want_m = [0.9 * 0.5 + 0.1 * 3.0, 0.9 * 0.0 + 0.1 * 1.0];
    let want_v = [0.9 * 2.0 + 0.1 * 14.0 / 3.0, 0.9 * 1.0 + 0.1 * 4.0];
    for ch in 0..2 {
        assert!((rm[ch] - want_m[ch]).abs() < 1e-6, "{rm:?}");
        assert!((rv[ch] - want_v[ch]).abs() < 1e-6, "{rv:?}");
    }
}

#[test]
fn eval_forward_uses_running_stats() {
    let x = random_input(&[2, 2, 3, 3], 4);
    let (g, b) = (t(&[1.5, -0.5]), t(&[0.25, 2.0]));
    let (rm, rv) = (t(&[0.3, -1.0]), t(&[4.0, 0.5]));
    let y = batch_norm2d_eval_forward(&x, &g, &b, &rm, &rv, 1e-5).unwrap();
    let (xs, ys) = (x.to_vec(), y.to_vec());
    for (i, (&xv, &yv)) in xs.iter().zip(&ys).enumerate() {
        let ch = (i / 9) % 2;
        let (m, v) = (rm.to_vec()[ch], rv.to_vec()[ch]);
        let want = (xv - m) / (v + 1e-5).sqrt() * g.to_vec()[ch] + b.to_vec()[ch];
        assert!((yv - want).abs() < 1e-5, "{i}: {yv} vs {want}");
    }
}

/// Tight enough that dropping the mean/variance terms of the training gradient fails (see
/// `gradcheck_rejects_eval_gradient_in_training`).
fn bn_opts() -> GradcheckOptions {
    GradcheckOptions {
        eps: 1e-3,
        rtol: 1e-2,
        atol: 1e-3,
        max_probes: 64,
    }
}

#[test]
fn gradcheck_batch_norm2d() {
    let mut rng = Rng::new(3);
    let x = shifted(&[2, 3, 4, 5], 2.0, 1.5, 21);
    let gamma = Tensor::uniform(&[3], 0.5, 1.5, &mut rng);
    let beta = random_input(&[3], 22);
    check_gradients_with(
        "batch_norm2d train",
        &bn_opts(),
        vec![x.clone(), gamma.clone(), beta.clone()],
        |t, v| batch_norm2d_train(t, &v[0], &v[1], &v[2], 1e-5).map(|(y, _)| y),
    )
    .unwrap();
    let rm = t(&[1.5, 2.5, 2.0]);
    let rv = t(&[2.0, 1.0, 3.0]);
    check_gradients_with(
        "batch_norm2d eval",
        &bn_opts(),
        vec![x, gamma, beta],
        |t, v| batch_norm2d_eval(t, &v[0], &v[1], &v[2], &rm, &rv, 1e-5),
    )
    .unwrap();
}

/// The checker with `bn_opts` can fail: the eval-mode dx (which ignores that the batch
/// statistics depend on x) applied to the training forward is rejected.
#[test]
fn gradcheck_rejects_eval_gradient_in_training() {
    struct WrongTrain(Arc<Tensor>, Arc<Tensor>, BatchNormSaved);
    impl Backward for WrongTrain {
        fn backward(&self, dy: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
            let g = batch_norm2d_backward(
                &self.0,
                &self.1,
                &self.2,
                dy,
                BatchNormMode::Eval,
                BatchNormNeeds::ALL,
            )?;
            Ok(vec![g.dx, g.dgamma, g.dbeta])
        }
        fn name(&self) -> &'static str {
            "wrong"
        }
    }
    let x = shifted(&[2, 3, 4, 5], 2.0, 1.5, 21);
    let gamma = t(&[1.0, 0.8, 1.2]);
    let beta = t(&[0.0, 0.1, -0.1]);
    let r = check_gradients_with("wrong", &bn_opts(), vec![x, gamma, beta], |tape, v| {
        let (y, saved, _) =
            batch_norm2d_train_forward(v[0].value(), v[1].value(), v[2].value(), 1e-5)?;
        let bw = WrongTrain(v[0].value_arc(), v[1].value_arc(), saved);
        Ok(tape.record(y, &[&v[0], &v[1], &v[2]], bw))
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("input 0"), "{e}");
}

#[test]
fn backward_honours_needs() {
    let x = random_input(&[2, 2, 3, 3], 1);
    let (_, saved, _) = batch_norm2d_train_forward(&x, &t(&[1., 1.]), &t(&[0., 0.]), 1e-5).unwrap();
    let dy = random_input(&[2, 2, 3, 3], 2);
    let train = |needs| {
        batch_norm2d_backward(&x, &t(&[1., 1.]), &saved, &dy, BatchNormMode::Train, needs).unwrap()
    };
    let g = train(BatchNormNeeds::of([true, false, false]));
    assert!(g.dx.is_some() && g.dgamma.is_none() && g.dbeta.is_none());
    let g = train(BatchNormNeeds::of([false, true, true]));
    assert!(g.dx.is_none() && g.dgamma.is_some() && g.dbeta.is_some());
    // dbeta is Σ dy per channel.
    let d = dy.to_vec();
    let want: f32 = (0..2).flat_map(|n| d[(n * 2) * 9..][..9].to_vec()).sum();
    assert!((g.dbeta.unwrap().to_vec()[0] - want).abs() < 1e-5);
}

#[test]
fn shape_errors_name_batch_norm2d() {
    let x = random_input(&[2, 3, 4, 4], 1);
    let (g3, g2) = (t(&[1.; 3]), t(&[1.; 2]));
    let e = batch_norm2d_train_forward(&x, &g2, &g3, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_norm2d") && e.contains("gamma"), "{e}");
    let e = batch_norm2d_train_forward(&random_input(&[3, 4, 4], 1), &g3, &g3, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_norm2d") && e.contains("rank 4"), "{e}");
    let e = batch_norm2d_train_forward(&random_input(&[1, 3, 1, 1], 1), &g3, &g3, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch_norm2d") && e.contains("more than one"),
        "{e}"
    );
    let e = batch_norm2d_eval_forward(&x, &g3, &g3, &g3, &g2, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch_norm2d") && e.contains("running_var"),
        "{e}"
    );
    let (_, _, stats) = batch_norm2d_train_forward(&x, &g3, &g3, 1e-5).unwrap();
    let (mut rm, mut rv) = (t(&[0.; 2]), t(&[1.; 3]));
    let e = update_running_stats(&mut rm, &mut rv, &stats, 0.1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch_norm2d") && e.contains("running_mean"),
        "{e}"
    );
}

#[test]
fn geometry_checks_rank_emptiness_and_u32() {
    let g = BatchNorm2dGeometry::new(&[3, 5, 7, 4]).unwrap();
    assert_eq!((g.n, g.c, g.hw), (3, 5, 28));
    assert_eq!((g.numel(), g.per_channel()), (3 * 5 * 28, 3 * 28));
    // An empty batch is a shape (eval of nothing); empty channels or planes are not.
    assert!(BatchNorm2dGeometry::new(&[0, 2, 3, 3]).is_ok());
    for dims in [[2, 0, 3, 3], [2, 2, 0, 3], [2, 2, 3, 0]] {
        let e = BatchNorm2dGeometry::new(&dims).unwrap_err().to_string();
        assert!(e.contains("batch_norm2d") && e.contains("empty"), "{e}");
    }
    let e = BatchNorm2dGeometry::new(&[2, 3, 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 4"), "{e}");
    assert!(BatchNorm2dGeometry::new(&[1 << 32, 1, 1, 1]).is_err());
    assert!(BatchNorm2dGeometry::new(&[1, usize::MAX, 2, 2]).is_err());
}

#[test]
fn only_the_training_dx_needs_the_sums() {
    let needs = |dx, dgamma, dbeta| BatchNormNeeds { dx, dgamma, dbeta };
    assert!(needs(true, false, false).sums(BatchNormMode::Train));
    assert!(!needs(true, false, false).sums(BatchNormMode::Eval));
    for mode in [BatchNormMode::Train, BatchNormMode::Eval] {
        assert!(needs(false, true, false).sums(mode) && needs(false, false, true).sums(mode));
        assert!(!needs(false, false, false).sums(mode));
    }
}

/// The CPU fast path (each instruction set this CPU has, AVX2 forced on an AVX-512 machine)
/// against the reference loops, at odd sizes and with a large common offset: statistics,
/// normalising with and without the fused ReLU, and the backward in both modes, masked by the
/// ReLU or not.
#[test]
fn fast_path_matches_reference_loops() {
    let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    };
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            continue;
        }
        for (dims, offset) in [
            ([3, 5, 7, 3], 0.0),
            ([2, 3, 17, 19], 1000.0),
            ([1, 2, 1, 2], 0.5),
        ] {
            let x = shifted(&dims, offset, 1.5, 41);
            let (xs, geo) = (x.to_vec(), BatchNorm2dGeometry::new(&dims).unwrap());
            let c = dims[1];
            let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.3).collect();
            let beta: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.1).collect();
            let what = format!("{isa:?} {dims:?}");
            let r = cpu::batch_stats(&xs, &geo, 1e-5);
            let f = cpu_fast::batch_stats(&xs, &geo, 1e-5, isa);
            close(&f.mean, &r.mean, 1e-6, &format!("{what} mean"));
            close(&f.invstd, &r.invstd, 1e-5, &format!("{what} invstd"));
            close(
                &f.var_unbiased,
                &r.var_unbiased,
                1e-5,
                &format!("{what} var"),
            );
            let (m, is) = (&r.mean, &r.invstd);
            let y = cpu::normalize(&xs, m, is, &gamma, &beta, &geo);
            assert_eq!(
                cpu_fast::normalize(&xs, m, is, &gamma, &beta, &geo, false, isa),
                y
            );
            let y_relu: Vec<f32> = y.iter().map(|&v| v.max(0.0)).collect();
            let yr = cpu_fast::normalize(&xs, m, is, &gamma, &beta, &geo, true, isa);
            assert_eq!(yr, y_relu, "{what}: fused ReLU");
            let dy = random_input(&dims, 43).to_vec();
            let dy_masked: Vec<f32> = dy
                .iter()
                .zip(&y_relu)
                .map(|(&d, &v)| if v > 0.0 { d } else { 0.0 })
                .collect();
            for mode in [BatchNormMode::Train, BatchNormMode::Eval] {
                for (relu_y, dyr) in [(None, &dy), (Some(&y_relu[..]), &dy_masked)] {
                    let want =
                        cpu::backward(&xs, dyr, &gamma, m, is, &geo, mode, BatchNormNeeds::ALL);
                    let got = cpu_fast::backward(
                        &xs,
                        &dy,
                        relu_y,
                        &gamma,
                        m,
                        is,
                        &geo,
                        mode,
                        BatchNormNeeds::ALL,
                        isa,
                    );
                    let w = format!("{what} {mode:?} relu {}", relu_y.is_some());
                    close(
                        got.dx.as_ref().unwrap(),
                        want.dx.as_ref().unwrap(),
                        1e-4,
                        &w,
                    );
                    close(
                        got.dgamma.as_ref().unwrap(),
                        want.dgamma.as_ref().unwrap(),
                        1e-5,
                        &w,
                    );
                    close(
                        got.dbeta.as_ref().unwrap(),
                        want.dbeta.as_ref().unwrap(),
                        1e-5,
                        &w,
                    );
                }
            }
        }
    }
}

/// The fused BatchNorm+ReLU op by finite differences (betas of both signs, so the ReLU both
/// passes and cuts).
#[test]
fn gradcheck_batch_norm2d_relu() {
    let mut rng = Rng::new(5);
    let x = shifted(&[2, 3, 4, 5], 2.0, 1.5, 23);
    let gamma = Tensor::uniform(&[3], 0.5, 1.5, &mut rng);
    let beta = t(&[0.6, -0.4, 0.2]);
    check_gradients_with(
        "batch_norm2d_relu train",
        &bn_opts(),
        vec![x, gamma, beta],
        |t, v| batch_norm2d_train_relu(t, &v[0], &v[1], &v[2], 1e-5).map(|(y, _)| y),
    )
    .unwrap();
}

/// The fused op's values and gradients are batch norm's followed by ReLU's, on the tape.
#[test]
fn fused_relu_is_batch_norm_then_relu() {
    let x = shifted(&[2, 3, 5, 4], 0.3, 1.0, 51);
    let (g, b) = (t(&[1.0, 0.5, 2.0]), t(&[0.1, -0.2, 0.0]));
    let run = |fused: bool| {
        let tape = Tape::new();
        let (xv, gv, bv) = (
            tape.leaf(x.clone()),
            tape.leaf(g.clone()),
            tape.leaf(b.clone()),
        );
        let y = if fused {
            batch_norm2d_train_relu(&tape, &xv, &gv, &bv, 1e-5)
                .unwrap()
                .0
        } else {
            let (y, _) = batch_norm2d_train(&tape, &xv, &gv, &bv, 1e-5).unwrap();
            crate::ops::relu::relu(&tape, &y).unwrap()
        };
        let loss = crate::ops::elementwise::sum(&tape, &y).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let get = |v: &Var| grads.get(v).unwrap().to_vec();
        (y.value().to_vec(), get(&xv), get(&gv), get(&bv))
    };
    let (a, b2) = (run(true), run(false));
    assert_eq!(a.0, b2.0);
    for (u, v) in [(&a.1, &b2.1), (&a.2, &b2.2), (&a.3, &b2.3)] {
        for (p, q) in u.iter().zip(v.iter()) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
