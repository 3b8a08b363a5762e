//! Whole training steps, allocation after warm-up, and the kernel bench on the GPU.
use super::*;

fn small_config(model: ModelKind) -> ModelConfig {
    ModelConfig {
        model,
        width_mult: 0.125,
        ..ModelConfig::default()
    }
}

/// Loss and every parameter's gradient (by name) of one counter step, without the update.
fn counter_grads(net: &Counter, images: &Tensor, counts: &[f32]) -> (f32, Vec<(String, Tensor)>) {
    let tape = Tape::new();
    let bound = net.store.bind(&tape, true);
    let f = Forward::new(&tape, &bound, &net.store, true);
    let z = net.forward(&f, &Var::constant(images.clone())).unwrap();
    let loss = count_l1_loss(&tape, &z, counts).unwrap();
    let l = loss.value().item().unwrap();
    let mut g = tape.backward(&loss).unwrap();
    let grads = bound.take_grads(&mut g);
    let named = net
        .store
        .iter()
        .zip(grads)
        .filter_map(|((_, p), g)| g.map(|g| (p.name.clone(), g)))
        .collect();
    (l, named)
}

type StepGrads = (f32, Vec<(String, Tensor)>);

/// `t` with every value scaled by 1 ± `rel` (alternating): a perturbation of the size of the
/// devices' rounding differences.
fn perturbed(t: &Tensor, rel: f32) -> Tensor {
    let v = t
        .to_vec()
        .iter()
        .enumerate()
        .map(|(i, &x)| x * if i % 2 == 0 { 1.0 + rel } else { 1.0 - rel })
        .collect();
    Tensor::from_vec(v, t.dims()).unwrap()
}

/// Per gradient tensor, the normwise difference of `b` from `a`, with a floor of 1e-3 of the
/// step's largest gradient (a conv bias before BatchNorm has a true gradient of exactly 0 and
/// only rounding noise to compare); sorted, largest first.
fn gradient_errors(what: &str, a: &StepGrads, b: &StepGrads) -> Vec<(f64, String)> {
    assert_eq!(a.1.len(), b.1.len(), "{what}: gradients");
    assert!(!a.1.is_empty());
    let host: Vec<(&str, Vec<f32>, Vec<f32>)> =
        a.1.iter()
            .zip(&b.1)
            .map(|((n, x), (nb, y))| {
                assert_eq!(n, nb);
                assert_eq!(x.dims(), y.dims(), "{what} d{n}: shape");
                (n.as_str(), x.to_vec(), y.to_vec())
            })
            .collect();
    let largest = host
        .iter()
        .flat_map(|(_, x, _)| x.iter())
        .fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let mut errors: Vec<(f64, String)> = host
        .iter()
        .map(|(n, x, y)| {
            let scale = x
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs() as f64))
                .max(1e-3 * largest);
            let worst = x
                .iter()
                .zip(y)
                .map(|(p, q)| {
                    assert!(q.is_finite() || !p.is_finite(), "{what} d{n}: {q} vs {p}");
                    (*p as f64 - *q as f64).abs()
                })
                .fold(0.0f64, f64::max);
            (worst / scale, n.to_string())
        })
        .collect();
    errors.sort_by(|x, y| y.0.total_cmp(&x.0));
    errors
}

/// The device's gradients against the CPU's, calibrated by the CPU's own sensitivity: a
/// value within rounding of a ReLU kink (or a max-pool tie) takes the other branch on one
/// device, which moves a BatchNorm's dbeta by one element's dy and from there every gradient
/// upstream; how far is a property of the network at these inputs, measured by running the
/// CPU again with the inputs perturbed by 1e-6 relative (`cpu_perturbed`). The device must
/// stay within `STEP_TOL` (median over tensors) / `STEP_TOL_ANY` (every tensor), or within 3x
/// what the perturbation does, whichever is larger.
fn compare_steps(what: &str, cpu: StepGrads, gpu: StepGrads, cpu_perturbed: StepGrads) {
    close_vals(&format!("{what} loss"), &[gpu.0], &[cpu.0], REDUCTION);
    for (_, t) in &gpu.1 {
        assert!(t.device().is_cuda(), "{what}: a gradient is not on the GPU");
    }
    let dev = gradient_errors(what, &cpu, &gpu);
    let pert = gradient_errors(what, &cpu, &cpu_perturbed);
    for (e, n) in &dev {
        eprintln!("{what} d{n}: normwise error {e:.2e}");
    }
    let median = |v: &[(f64, String)]| v[v.len() / 2].0;
    let (dev_med, pert_med) = (median(&dev), median(&pert));
    eprintln!(
        "{what}: device median {dev_med:.2e} max {:.2e} ({}); CPU under a 1e-6 input perturbation: \
         median {pert_med:.2e} max {:.2e}",
        dev[0].0, dev[0].1, pert[0].0
    );
    let med_bound = STEP_TOL.max(3.0 * pert_med);
    assert!(
        dev_med <= med_bound,
        "{what}: median gradient error {dev_med:.2e} > {med_bound:.1e}"
    );
    let any_bound = STEP_TOL_ANY.max(3.0 * pert[0].0);
    assert!(
        dev[0].0 <= any_bound,
        "{what} d{}: normwise error {:.2e} > {any_bound:.1e}",
        dev[0].1,
        dev[0].0
    );
}

#[test]
fn counter_training_step_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("counter step") else {
        return;
    };
    let mut r = Rng(13);
    let cfg = small_config(ModelKind::Counter);
    let cpu_net = Counter::new(&cfg, 5).unwrap();
    let mut gpu_net = Counter::new(&cfg, 5).unwrap();
    gpu_net.store.to_device(&d).unwrap();
    let images = r.tensor(&[2, 3, 64, 64], 1.0, 0.0);
    // counts far above the predicted Σ|z| of a fresh net: the loss's sign is unambiguous
    let counts = [500.0, 800.0];
    let cpu = counter_grads(&cpu_net, &images, &counts);
    let gpu = counter_grads(&gpu_net, &on(&images, &d), &counts);
    let pert = counter_grads(&cpu_net, &perturbed(&images, 1e-6), &counts);
    compare_steps("counter", cpu, gpu, pert);
}

#[test]
fn localizer_training_step_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("localizer step") else {
        return;
    };
    let mut r = Rng(14);
    let cfg = small_config(ModelKind::Localizer);
    let cpu_net = Localizer::new(&cfg, 6).unwrap();
    let mut gpu_net = Localizer::new(&cfg, 6).unwrap();
    gpu_net.store.to_device(&d).unwrap();
    let images = r.tensor(&[2, 3, 64, 64], 1.0, 0.0);
    // the frozen counter's map (a constant input of the localizer)
    let z = r.tensor(&[2, 1, 8, 8], 0.5, 0.0);
    let target = r.tensor(&[2, 1, 64, 64], 1.0, 1.0);
    let run = |net: &Localizer, images: &Tensor, dev: &Device| {
        let tape = Tape::new();
        let bound = net.store.bind(&tape, true);
        let f = Forward::new(&tape, &bound, &net.store, true);
        let pred = net
            .forward(
                &f,
                &Var::constant(on(images, dev)),
                &Var::constant(on(&z, dev)),
            )
            .unwrap();
        let loss = mse_loss(&tape, &pred, &on(&target, dev)).unwrap();
        let l = loss.value().item().unwrap();
        let mut g = tape.backward(&loss).unwrap();
        let grads = bound.take_grads(&mut g);
        let named: Vec<(String, Tensor)> = net
            .store
            .iter()
            .zip(grads)
            .filter_map(|((_, p), g)| g.map(|g| (p.name.clone(), g)))
            .collect();
        (l, named)
    };
    let cpu = run(&cpu_net, &images, &Device::Cpu);
    let gpu = run(&gpu_net, &images, &d);
    let pert = run(&cpu_net, &perturbed(&images, 1e-6), &Device::Cpu);
    compare_steps("localizer", cpu, gpu, pert);
}

/// After warm-up, a full counter training step (forward, loss, backward, Adam, BN running
/// statistics) requests the same allocations every step, all served from the memory pool: the
/// pool's reserved size does not grow.
#[test]
fn no_new_device_memory_after_warm_up() {
    let Some((_g, d, dev)) = gpu("allocations") else {
        return;
    };
    let mut r = Rng(15);
    let mut net = Counter::new(&small_config(ModelKind::Counter), 7).unwrap();
    net.store.to_device(&d).unwrap();
    let mut adam = Adam::new(AdamConfig::default(), &net.store).unwrap();
    let images = on(&r.tensor(&[2, 3, 64, 64], 1.0, 0.0), &d);
    let counts = [30.0, 40.0];
    let mut step = || {
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = net.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &net.store, true);
            let z = net.forward(&f, &Var::constant(images.clone())).unwrap();
            let loss = count_l1_loss(&tape, &z, &counts).unwrap();
            assert!(loss.value().item().unwrap().is_finite());
            let mut g = tape.backward(&loss).unwrap();
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        adam.update(&mut net.store, &grads, 1e-4).unwrap();
        apply_bn_updates(&mut net.store, updates).unwrap();
        drop(grads);
        dev.synchronize().unwrap();
    };
    for _ in 0..3 {
        step();
    }
    let (calls0, bytes0) = (dev.alloc_count(), dev.alloc_bytes());
    let reserved0 = dev.pool_reserved_bytes().unwrap();
    step();
    let (per_step, bytes_per_step) = (dev.alloc_count() - calls0, dev.alloc_bytes() - bytes0);
    assert!(per_step > 0);
    for _ in 0..5 {
        step();
    }
    assert_eq!(
        dev.alloc_count() - calls0,
        6 * per_step,
        "a step's allocations are fixed"
    );
    assert_eq!(dev.alloc_bytes() - bytes0, 6 * bytes_per_step);
    let reserved = dev.pool_reserved_bytes().unwrap();
    eprintln!(
        "allocations per step {per_step} ({bytes_per_step} bytes), pool reserved {reserved0:?} -> {reserved:?}"
    );
    if dev.info().stream_ordered_pool {
        assert_eq!(reserved, reserved0, "the memory pool grew after warm-up");
    } else {
        eprintln!("no stream-ordered pool on this device: only the request counts are checked");
    }
}

// bench on the GPU, small

#[test]
fn bench_kernels_runs_on_the_gpu() {
    let Some((_g, d, _dev)) = gpu("bench kernels") else {
        return;
    };
    let rep = run_kernel_bench(&KernelBenchOptions {
        device: d,
        batch: 2,
        size: 32,
        width_mult: 0.125,
        reps: 2,
        warmup: 1,
        gmp_points: 8,
        notes: vec![],
    })
    .unwrap();
    // Every GMP version, the sampling op and the layer's op, each pass against the floor; the
    // layer's fwd+bwd row compares the version with every other.
    for v in GmpKernel::ALL {
        for op in [
            format!("gmp_sample {}", v.name()),
            format!("gmp {}", v.name()),
        ] {
            for pass in ["fwd", "bwd", "fwd+bwd"] {
                let row = rep.rows.iter().find(|r| r.op == op && r.pass == pass);
                let row = row.unwrap_or_else(|| panic!("{op} {pass} missing"));
                assert!(row.bytes.is_some_and(|b| b > 0.0), "{op} {pass}: no floor");
                assert!(
                    row.pct_of_ceiling.is_some_and(f64::is_finite),
                    "{op} {pass}"
                );
            }
        }
        let both = format!("gmp {}", v.name());
        let row = rep
            .rows
            .iter()
            .find(|r| r.op == both && r.pass == "fwd+bwd");
        let note = &row.expect("checked above").note;
        for u in GmpKernel::ALL.into_iter().filter(|&u| u != v) {
            assert!(
                note.contains(&format!("x vs {} (", u.name())),
                "{both}: {note}"
            );
        }
    }
    for row in &rep.rows {
        assert!(
            row.median_ms.is_finite() && row.median_ms > 0.0,
            "{} {}: {}",
            row.op,
            row.pass,
            row.median_ms
        );
    }
    assert!(rep.ceilings.copy_gb_per_s > 0.0 && rep.ceilings.gemm_tflop_per_s > 0.0);
}
