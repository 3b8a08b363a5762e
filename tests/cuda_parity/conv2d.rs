//! Convolution.
use super::*;

#[test]
pub(crate) fn conv2d_forward_backward_all_paths() {
    let Some((_g, d, dev)) = gpu("conv2d") else {
        return;
    };
    let mut r = Rng(5);
    // (x dims, out channels, kernel, stride, padding, bias)
    let cases = [
        ([3, 2, 9, 7], 5, 3, 1, 1, true),
        ([1, 3, 6, 11], 4, 3, 2, 1, true),
        ([3, 4, 5, 6], 7, 1, 1, 0, true), // pointwise: x is its own column matrix
        ([2, 1, 8, 8], 3, 2, 3, 0, false),
        ([1, 17, 13, 19], 33, 3, 1, 1, false),
    ];
    for (xd, o, k, stride, padding, bias) in cases {
        let args = Conv2dArgs { stride, padding };
        let x = r.tensor(&xd, 1.0, 0.0);
        let w = r.tensor(&[o, xd[1], k, k], 0.5, 0.0);
        let b = bias.then(|| r.tensor(&[o], 0.5, 0.0));
        let (xg, wg, bg) = (on(&x, &d), on(&w, &d), b.as_ref().map(|b| on(b, &d)));
        let tag = format!("x {xd:?} w {:?} s{stride} p{padding}", w.dims());
        let y = conv2d_forward(&x, &w, b.as_ref(), args).unwrap();
        let yg = conv2d_forward(&xg, &wg, bg.as_ref(), args).unwrap();
        close(&format!("conv y {tag}"), &yg, &y, REDUCTION);
        let dy = r.tensor(y.dims(), 1.0, 0.0);
        let gc = conv2d_backward(&x, &w, &dy, args, true, true, bias).unwrap();
        let gg = conv2d_backward(&xg, &wg, &on(&dy, &d), args, true, true, bias).unwrap();
        close(
            &format!("conv dx {tag}"),
            gg.dx.as_ref().unwrap(),
            gc.dx.as_ref().unwrap(),
            REDUCTION,
        );
        close(
            &format!("conv dw {tag}"),
            gg.dw.as_ref().unwrap(),
            gc.dw.as_ref().unwrap(),
            REDUCTION,
        );
        if bias {
            close(
                &format!("conv db {tag}"),
                gg.db.as_ref().unwrap(),
                gc.db.as_ref().unwrap(),
                REDUCTION,
            );
        }
        // only what is asked for
        let only_dw = conv2d_backward(&xg, &wg, &on(&dy, &d), args, false, true, false).unwrap();
        assert!(only_dw.dx.is_none() && only_dw.db.is_none());
        close(
            &format!("conv dw alone {tag}"),
            only_dw.dw.as_ref().unwrap(),
            gc.dw.as_ref().unwrap(),
            REDUCTION,
        );
        // a column workspace of one image: the tiled path gives the same result
        let geo = dcl::ops::conv2d::Conv2dGeometry::new(&x, &w, args).unwrap();
        let one = geo.col_image();
        let yt = conv_cuda::forward_ws(
            &dev,
            xg.gpu_buffer().unwrap(),
            wg.gpu_buffer().unwrap(),
            bg.as_ref().map(|b| b.gpu_buffer().unwrap()),
            &geo,
            one,
        )
        .unwrap();
        close_vals(
            &format!("conv y, 1-image tiles {tag}"),
            &dev.dtoh(&yt).unwrap(),
            &y.to_vec(),
            REDUCTION,
        );
    }
    // TF32 on the largest case
    let (xd, o) = ([1, 17, 13, 19], 33);
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    let x = r.tensor(&xd, 1.0, 0.0);
    let w = r.tensor(&[o, xd[1], 3, 3], 0.5, 0.0);
    let y = conv2d_forward(&x, &w, None, args).unwrap();
    dev.set_tf32(true).unwrap();
    let yg = conv2d_forward(&on(&x, &d), &on(&w, &d), None, args).unwrap();
    dev.set_tf32(false).unwrap();
    close("conv y (tf32)", &yg, &y, TF32);
}
