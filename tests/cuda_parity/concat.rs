//! Channel concatenation.
use super::*;

#[test]
pub(crate) fn concat_forward_backward() {
    let Some((_g, d, _dev)) = gpu("concat") else {
        return;
    };
    let mut r = Rng(10);
    for (n, h, w, chans) in [(3, 5, 7, vec![2, 1, 4]), (1, 16, 9, vec![3, 1])] {
        let xs: Vec<Tensor> = chans
            .iter()
            .map(|&c| r.tensor(&[n, c, h, w], 1.0, 0.0))
            .collect();
        let xg: Vec<Tensor> = xs.iter().map(|x| on(x, &d)).collect();
        let y = concat_channels_forward(&xs.iter().collect::<Vec<_>>()).unwrap();
        let yg = concat_channels_forward(&xg.iter().collect::<Vec<_>>()).unwrap();
        close("concat y", &yg, &y, 0.0);
        let dy = r.tensor(y.dims(), 1.0, 0.0);
        let gc = concat_channels_backward(&dy, &chans).unwrap();
        let gg = concat_channels_backward(&on(&dy, &d), &chans).unwrap();
        for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
            close(&format!("concat d{i}"), a, b, 0.0);
        }
    }
}
