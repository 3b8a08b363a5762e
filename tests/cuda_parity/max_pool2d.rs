//! Max pooling.
use super::*;

#[test]
pub(crate) fn max_pool_forward_backward() {
    let Some((_g, d, _dev)) = gpu("max_pool2d") else {
        return;
    };
    let mut r = Rng(4);
    for dims in [[3, 4, 7, 10], [1, 2, 6, 5], [3, 3, 33, 17]] {
        let x = r.tensor(&dims, 1.0, 0.0);
        let xg = on(&x, &d);
        let (y, idx) = max_pool2d_forward(&x).unwrap();
        let (yg, idxg) = max_pool2d_forward(&xg).unwrap();
        close(&format!("max_pool y {dims:?}"), &yg, &y, 0.0);
        assert_eq!(
            idxg.to_vec().unwrap(),
            idx.to_vec().unwrap(),
            "argmax {dims:?}"
        );
        let dy = r.tensor(&idx.out_dims(), 1.0, 0.0);
        close(
            &format!("max_pool dx {dims:?}"),
            &max_pool2d_backward(&on(&dy, &d), &idxg, &dims).unwrap(),
            &max_pool2d_backward(&dy, &idx, &dims).unwrap(),
            0.0,
        );
    }
    // ties (first maximum) and NaNs (the last NaN wins), as the CPU
    let x = Tensor::from_vec(
        vec![
            3.,
            3.,
            1.,
            f32::NAN, //
            3.,
            3.,
            f32::NAN,
            2., //
        ],
        &[1, 1, 2, 4],
    )
    .unwrap();
    let (y, idx) = max_pool2d_forward(&x).unwrap();
    let (yg, idxg) = max_pool2d_forward(&on(&x, &d)).unwrap();
    assert_eq!(idxg.to_vec().unwrap(), idx.to_vec().unwrap());
    close("max_pool ties and NaN", &yg, &y, 0.0);
}
