//! Adam.
use super::*;

#[test]
pub(crate) fn adam_steps_match_the_cpu() {
    let Some((_g, d, _dev)) = gpu("adam") else {
        return;
    };
    let mut r = Rng(12);
    let dims = [3, 5, 7, 11];
    let mut p = r.tensor(&dims, 1.0, 0.0);
    let (mut m, mut v) = (
        Tensor::zeros(&dims, &Device::Cpu),
        Tensor::zeros(&dims, &Device::Cpu),
    );
    let (mut pg, mut mg, mut vg) = (on(&p, &d), on(&m, &d), on(&v, &d));
    for t in 1..=3u64 {
        let g = r.tensor(&dims, 0.1, 0.0);
        let h = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            bias_correction1: (1.0 - 0.9f64.powf(t as f64)) as f32,
            bias_correction2: (1.0 - 0.999f64.powf(t as f64)) as f32,
        };
        update_tensor(&mut p, &g, &mut m, &mut v, &h).unwrap();
        update_tensor(&mut pg, &on(&g, &d), &mut mg, &mut vg, &h).unwrap();
    }
    close("adam p", &pg, &p, ELEMENTWISE);
    close("adam m", &mg, &m, ELEMENTWISE);
    close("adam v", &vg, &v, ELEMENTWISE);
}
