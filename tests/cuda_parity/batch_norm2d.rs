//! Batch norm.
use super::*;

#[test]
pub(crate) fn batch_norm_train_eval_running_and_backward() {
    let Some((_g, d, _dev)) = gpu("batch_norm2d") else {
        return;
    };
    let mut r = Rng(6);
    for dims in [[3, 5, 7, 9], [1, 3, 17, 2], [3, 2, 33, 31]] {
        let c = dims[1];
        // a large common offset: the two-pass statistics must not lose it
        let x = r.tensor(&dims, 2.0, 30.0);
        let gamma = r.tensor(&[c], 1.0, 0.0);
        let beta = r.tensor(&[c], 1.0, 0.0);
        let dy = r.tensor(&dims, 1.0, 0.0);
        let (xg, gg, bg, dyg) = (on(&x, &d), on(&gamma, &d), on(&beta, &d), on(&dy, &d));
        let tag = format!("{dims:?}");
        let (y, saved, stats) = batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5).unwrap();
        let (yg, savedg, statsg) = batch_norm2d_train_forward(&xg, &gg, &bg, 1e-5).unwrap();
        close(&format!("bn y {tag}"), &yg, &y, REDUCTION);
        close(
            &format!("bn mean {tag}"),
            &savedg.mean,
            &saved.mean,
            REDUCTION,
        );
        close(
            &format!("bn invstd {tag}"),
            &savedg.invstd,
            &saved.invstd,
            REDUCTION,
        );
        close(
            &format!("bn unbiased var {tag}"),
            &statsg.var_unbiased,
            &stats.var_unbiased,
            REDUCTION,
        );
        // running statistics
        let (mut rm, mut rv) = (r.tensor(&[c], 1.0, 0.0), r.tensor(&[c], 0.5, 1.0));
        let (mut rmg, mut rvg) = (on(&rm, &d), on(&rv, &d));
        update_running_stats(&mut rm, &mut rv, &stats, 0.1).unwrap();
        update_running_stats(&mut rmg, &mut rvg, &statsg, 0.1).unwrap();
        close(&format!("running mean {tag}"), &rmg, &rm, REDUCTION);
        close(&format!("running var {tag}"), &rvg, &rv, REDUCTION);
        // eval mode
        let ye = batch_norm2d_eval_forward(&x, &gamma, &beta, &rm, &rv, 1e-5).unwrap();
        let yeg = batch_norm2d_eval_forward(&xg, &gg, &bg, &rmg, &rvg, 1e-5).unwrap();
        close(&format!("bn eval y {tag}"), &yeg, &ye, REDUCTION);
        let se = BatchNormSaved::from_running(&rm, &rv, 1e-5).unwrap();
        let seg = BatchNormSaved::from_running(&rmg, &rvg, 1e-5).unwrap();
        // Both backwards, for all three gradients and for one at a time (the GPU then skips the
        // reduction or the dx kernel, and what is asked for must not change).
        for (mode, s, sg) in [
            (BatchNormMode::Train, &saved, &savedg),
            (BatchNormMode::Eval, &se, &seg),
        ] {
            for [nx, ng, nb] in [
                [true, true, true],
                [true, false, false],
                [false, true, false],
                [false, false, true],
            ] {
                let needs = BatchNormNeeds::of([nx, ng, nb]);
                let gc = batch_norm2d_backward(&x, &gamma, s, &dy, mode, needs).unwrap();
                let gp = batch_norm2d_backward(&xg, &gg, sg, &dyg, mode, needs).unwrap();
                for (what, asked, a, b) in [
                    ("dx", nx, &gp.dx, &gc.dx),
                    ("dgamma", ng, &gp.dgamma, &gc.dgamma),
                    ("dbeta", nb, &gp.dbeta, &gc.dbeta),
                ] {
                    let tag = format!("bn {mode:?} {what} needs {:?} {tag}", [nx, ng, nb]);
                    assert!(
                        a.is_some() == asked && b.is_some() == asked,
                        "{tag}: presence"
                    );
                    if let (Some(a), Some(b)) = (a, b) {
                        close(&tag, a, b, REDUCTION);
                    }
                }
            }
        }
    }
}
