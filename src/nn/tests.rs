use super::*;
use crate::autograd::{Tape, Var};
use crate::ops::gradcheck::random_input;
use crate::tensor::Tensor;

fn cfg(backbone: Backbone, width_mult: f32) -> ModelConfig {
    ModelConfig {
        backbone,
        width_mult,
        ..ModelConfig::default()
    }
}

fn shape_of(store: &ParamStore, name: &str) -> Vec<usize> {
    let id = store
        .find(name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    store.value(id).dims().to_vec()
}

/// torchvision's vgg19.features indices: convs at 0,2,5,7,10,..,34, pools at 4,9,18,27,(36).
#[test]
fn counter_parameter_names_follow_torchvision() {
    let c = Counter::new(&cfg(Backbone::Vgg19, 1.0), 0).unwrap();
    let convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34];
    for i in convs {
        assert!(
            c.store
                .find(&format!("counter.features.{i}.weight"))
                .is_some(),
            "{i}"
        );
    }
    assert_eq!(
        shape_of(&c.store, "counter.features.0.weight"),
        [64, 3, 3, 3]
    );
    assert_eq!(
        shape_of(&c.store, "counter.features.34.weight"),
        [512, 512, 3, 3]
    );
    assert_eq!(
        shape_of(&c.store, "counter.gmp.offset.weight"),
        [16, 512, 1, 1]
    );
    assert_eq!(shape_of(&c.store, "counter.head.weight"), [1, 512, 1, 1]);
    // VGG-19 features hold 20,024,384 parameters; GMP 512*16+16; head 513.
    assert_eq!(c.store.trainable_count(), 20_024_384 + 8_208 + 513);

    let c = Counter::new(&cfg(Backbone::Vgg19Bn, 1.0), 0).unwrap();
    let convs = [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49];
    for i in convs {
        assert!(
            c.store
                .find(&format!("counter.features.{i}.weight"))
                .is_some(),
            "{i}"
        );
        let bn = format!("counter.features.{}.running_var", i + 1);
        assert!(c.store.find(&bn).is_some(), "{bn}");
    }
    assert!(c.store.find("counter.features.52.weight").is_none());
    // + BatchNorm weight and bias for 5504 channels
    assert_eq!(c.store.trainable_count(), 20_024_384 + 11_008 + 8_208 + 513);
}

#[test]
fn localizer_parameter_names_follow_milesial_unet() {
    let l = Localizer::new(
        &ModelConfig {
            model: ModelKind::Localizer,
            ..ModelConfig::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(
        shape_of(&l.store, "localizer.inc.double_conv.0.weight"),
        [64, 4, 3, 3]
    );
    assert_eq!(
        shape_of(&l.store, "localizer.inc.double_conv.4.running_mean"),
        [64]
    );
    assert_eq!(
        shape_of(
            &l.store,
            "localizer.down4.maxpool_conv.1.double_conv.3.weight"
        ),
        [512, 512, 3, 3]
    );
    assert_eq!(
        shape_of(&l.store, "localizer.up1.conv.double_conv.0.weight"),
        [512, 1024, 3, 3]
    );
    assert_eq!(
        shape_of(&l.store, "localizer.up1.conv.double_conv.3.weight"),
        [256, 512, 3, 3]
    );
    assert_eq!(
        shape_of(&l.store, "localizer.up4.conv.double_conv.0.weight"),
        [64, 128, 3, 3]
    );
    assert_eq!(
        shape_of(&l.store, "localizer.outc.conv.weight"),
        [1, 64, 1, 1]
    );
    assert_eq!(shape_of(&l.store, "localizer.outc.conv.bias"), [1]);
    // Worked by hand, DoubleConv(in, out, mid) = 9·in·mid + 2·mid + 9·mid·out + 2·out:
    // inc 38,848 (3 input channels) | down 221,696 + 885,760 + 3,540,992 + 4,720,640 |
    // up 5,899,776 + 1,475,328 + 369,024 + 110,848 | outc 65: 17,262,977 for milesial's
    // UNet(3, 1, bilinear=True); our 4th input channel adds 9·64 weights.
    assert_eq!(l.store.trainable_count(), 17_262_977 + 576);
}

#[test]
fn width_multiplier_scales_channels() {
    let c = Counter::new(&cfg(Backbone::Vgg19Bn, 0.125), 0).unwrap();
    assert_eq!(
        shape_of(&c.store, "counter.features.0.weight"),
        [8, 3, 3, 3]
    );
    assert_eq!(
        shape_of(&c.store, "counter.features.49.weight"),
        [64, 64, 3, 3]
    );
    let l = Localizer::new(
        &ModelConfig {
            model: ModelKind::Localizer,
            width_mult: 0.25,
            unet_width: 32,
            ..ModelConfig::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(
        shape_of(&l.store, "localizer.inc.double_conv.0.weight"),
        [8, 4, 3, 3]
    );
}

#[test]
fn forward_shapes_and_bn_updates() {
    let c = Counter::new(&cfg(Backbone::Vgg19Bn, 1.0 / 16.0), 1).unwrap();
    let x = Var::constant(random_input(&[2, 3, 48, 32], 3));
    let tape = Tape::new();
    let bound = c.store.bind(&tape, true);
    let f = Forward::new(&tape, &bound, &c.store, true);
    let z = c.forward(&f, &x).unwrap();
    assert_eq!(z.dims(), [2, 1, 6, 4]);
    assert_eq!(f.take_bn_updates().len(), 16);

    let l = Localizer::new(
        &ModelConfig {
            model: ModelKind::Localizer,
            width_mult: 1.0 / 16.0,
            ..ModelConfig::default()
        },
        1,
    )
    .unwrap();
    let tape = Tape::inference();
    let bound = l.store.bind(&tape, false);
    let f = Forward::new(&tape, &bound, &l.store, false);
    let d = l.forward(&f, &x, &z).unwrap();
    assert_eq!(d.dims(), [2, 1, 48, 32]);
    assert!(f.take_bn_updates().is_empty());
    assert!(tape.is_empty(), "inference records nothing");

    let bad = Var::constant(random_input(&[1, 3, 40, 32], 3));
    let tape = Tape::inference();
    let bound = c.store.bind(&tape, false);
    let f = Forward::new(&tape, &bound, &c.store, false);
    let e = c.forward(&f, &bad).unwrap_err().to_string();
    assert!(e.contains("multiples of 16"), "{e}");
}

/// The localizer's extra input channel is |z| resized and rescaled: its sum is the count
/// times density_scale.
#[test]
fn localizer_input_map_preserves_the_count() {
    let l = Localizer::new(
        &ModelConfig {
            model: ModelKind::Localizer,
            width_mult: 1.0 / 16.0,
            ..ModelConfig::default()
        },
        1,
    )
    .unwrap();
    let x = Var::constant(random_input(&[1, 3, 64, 64], 5));
    let z = Var::constant(random_input(&[1, 1, 8, 8], 6));
    let tape = Tape::inference();
    let bound = l.store.bind(&tape, false);
    let f = Forward::new(&tape, &bound, &l.store, false);
    let inp = l.input(&f, &x, &z).unwrap();
    assert_eq!(inp.dims(), [1, 4, 64, 64]);
    let v = inp.value().to_vec();
    let map_sum: f64 = v[3 * 64 * 64..].iter().map(|&a| a as f64).sum();
    let count: f64 = z.value().to_vec().iter().map(|a| a.abs() as f64).sum();
    assert!(
        (map_sum - 100.0 * count).abs() < 1e-3 * map_sum.abs().max(1.0),
        "{map_sum} vs {count}"
    );
}

/// One training step of each network: the loss and every parameter's gradient.
fn step_grads(kind: ModelKind, x: &Tensor, z: &Tensor) -> (f32, Vec<Option<Tensor>>) {
    use crate::ops::loss::{count_l1_loss, mse_loss};
    let c = ModelConfig {
        model: kind,
        width_mult: 1.0 / 16.0,
        ..ModelConfig::default()
    };
    let tape = Tape::new();
    let x = Var::constant(x.clone());
    let (loss, bound) = match kind {
        ModelKind::Counter => {
            let m = Counter::new(&c, 1).unwrap();
            let bound = m.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &m.store, true);
            let z = m.forward(&f, &x).unwrap();
            (count_l1_loss(&tape, &z, &[3.0, 40.0]).unwrap(), bound)
        }
        ModelKind::Localizer => {
            let m = Localizer::new(&c, 2).unwrap();
            let bound = m.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &m.store, true);
            let d = m.forward(&f, &x, &Var::constant(z.clone())).unwrap();
            let target = random_input(d.dims(), 9);
            (mse_loss(&tape, &d, &target).unwrap(), bound)
        }
        ModelKind::Coupled => {
            let m = crate::nn::Coupled::new(&c, 3).unwrap();
            let bound = m.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &m.store, true);
            let d = m.forward(&f, &x).unwrap();
            let target = random_input(d.dims(), 9);
            (mse_loss(&tape, &d, &target).unwrap(), bound)
        }
    };
    let v = loss.value().item().unwrap();
    let mut g = tape.backward(&loss).unwrap();
    (v, bound.take_grads(&mut g))
}

/// A whole training step of the counter (VGG-19-BN: the convolutions' fast path, the fused
/// BatchNorm+ReLU, max pooling, GMP) and of the localizer (UNet: also bilinear up-sampling and
/// concat) under every instruction set this CPU has, against the same step on the reference
/// loops (`Isa::Scalar`): the loss and every gradient agree to f32 rounding of reordered sums.
/// Odd map sizes (48x32 pooled down to 3x2) and channel counts below a register tile.
#[test]
fn training_step_matches_the_reference_loops_under_every_instruction_set() {
    use crate::device::cpu::simd::{with_forced_isa, Isa};
    let x = random_input(&[2, 3, 48, 32], 3);
    let z = random_input(&[2, 1, 6, 4], 4);
    for kind in [ModelKind::Counter, ModelKind::Localizer, ModelKind::Coupled] {
        let (l0, g0) = with_forced_isa(Isa::Scalar, || step_grads(kind, &x, &z));
        let mut ran = 0;
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !isa.available() {
                eprintln!("{isa:?} not on this CPU: its fast paths are not tested here");
                continue;
            }
            let (l, g) = with_forced_isa(isa, || step_grads(kind, &x, &z));
            assert!(
                (l - l0).abs() <= 1e-4 * l0.abs().max(1.0),
                "{kind:?} {isa:?}: loss {l} vs reference {l0}"
            );
            assert_eq!(g.len(), g0.len());
            // The largest gradient of the network: the biases of the convolutions ahead of a
            // BatchNorm have an exact gradient of zero, so theirs are rounding noise on the
            // scale of the others, not of their own.
            let vecs: Vec<Option<(Vec<f32>, Vec<f32>)>> = g
                .iter()
                .zip(&g0)
                .enumerate()
                .map(|(i, ab)| match ab {
                    (Some(a), Some(b)) => Some((a.to_vec(), b.to_vec())),
                    (None, None) => None,
                    _ => panic!("{kind:?} {isa:?}: parameter {i} has a gradient on one path only"),
                })
                .collect();
            let max_abs = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let global = vecs
                .iter()
                .flatten()
                .fold(0.0f32, |m, (_, b)| m.max(max_abs(b)));
            for (i, (a, b)) in vecs
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i, v.as_ref()?)))
            {
                let scale = max_abs(b);
                let worst = a
                    .iter()
                    .zip(b)
                    .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    worst <= 1e-4 * scale + 2e-6 * global,
                    "{kind:?} {isa:?}: parameter {i} gradient off by {worst} (largest {scale}, \
                     network's {global})"
                );
            }
            ran += 1;
        }
        if ran == 0 {
            eprintln!("no SIMD fast path on this CPU: nothing to compare");
        }
    }
}
