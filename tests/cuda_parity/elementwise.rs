//! Elementwise ops, ReLU and the sum.
use super::*;

#[test]
pub(crate) fn elementwise_relu_and_sum() {
    let Some((_g, d, _dev)) = gpu("elementwise") else {
        return;
    };
    let mut r = Rng(3);
    for dims in [vec![1, 3, 5, 7], vec![3, 2, 37, 29], vec![1]] {
        let a = r.tensor(&dims, 1.0, 0.0);
        let b = r.tensor(&dims, 2.0, 0.1);
        let dy = r.tensor(&dims, 1.0, 0.0);
        let (ag, bg, dyg) = (on(&a, &d), on(&b, &d), on(&dy, &d));
        let tag = format!("{dims:?}");
        close(
            &format!("add {tag}"),
            &add_tensors(&ag, &bg).unwrap(),
            &add_tensors(&a, &b).unwrap(),
            ELEMENTWISE,
        );
        let (mut acc, mut accg) = (a.clone(), ag.clone());
        acc.add_assign(&b).unwrap();
        accg.add_assign(&bg).unwrap();
        close(&format!("add_assign {tag}"), &accg, &acc, ELEMENTWISE);
        close(
            &format!("scale {tag}"),
            &scale_tensor(&ag, -1.7).unwrap(),
            &scale_tensor(&a, -1.7).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("abs {tag}"),
            &abs_tensor(&ag).unwrap(),
            &abs_tensor(&a).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("abs backward {tag}"),
            &abs_backward(&ag, &dyg).unwrap(),
            &abs_backward(&a, &dy).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("sum {tag}"),
            &sum_tensor(&ag).unwrap(),
            &sum_tensor(&a).unwrap(),
            REDUCTION,
        );
        let (y, yg) = (relu_forward(&a).unwrap(), relu_forward(&ag).unwrap());
        close(&format!("relu {tag}"), &yg, &y, ELEMENTWISE);
        close(
            &format!("relu backward {tag}"),
            &relu_backward(&yg, &dyg).unwrap(),
            &relu_backward(&y, &dy).unwrap(),
            ELEMENTWISE,
        );
    }
    // The tape's scalar-sum backward broadcasts a device scalar.
    let a = r.tensor(&[3, 4, 5], 1.0, 0.0);
    let ag = on(&a, &d);
    for (x, dev) in [(a, Device::Cpu), (ag, d.clone())] {
        let tape = Tape::new();
        let v = tape.leaf(x);
        let s = dcl::ops::elementwise::sum(&tape, &v).unwrap();
        let g = tape.backward(&s).unwrap();
        let gv = g.get(&v).unwrap();
        assert_eq!(gv.device(), dev);
        assert_eq!(gv.to_vec(), vec![1.0; 60]);
    }
}
