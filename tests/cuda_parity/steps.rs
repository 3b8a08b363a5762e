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

fn compare_steps(
    what: &str,
    (l, g): (f32, Vec<(String, Tensor)>),
    (lg, gg): (f32, Vec<(String, Tensor)>),
) {
    close_vals(&format!("{what} loss"), &[lg], &[l], REDUCTION);
    assert_eq!(g.len(), gg.len(), "{what}: gradients");
    assert!(!g.is_empty());
    for ((n, a), (ng, b)) in g.iter().zip(&gg) {
        assert_eq!(n, ng);
        let tol = if n.contains("gmp.offset") {
            STEP_TOL_GMP_OFFSETS
        } else {
            STEP_TOL
        };
        let e = close(&format!("{what} d{n}"), b, a, tol);
        eprintln!("{what} d{n}: normwise error {e:.2e}");
    }
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
    compare_steps("counter", cpu, gpu);
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
    let run = |net: &Localizer, dev: &Device| {
        let tape = Tape::new();
        let bound = net.store.bind(&tape, true);
        let f = Forward::new(&tape, &bound, &net.store, true);
        let pred = net
            .forward(
                &f,
                &Var::constant(on(&images, dev)),
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
    let cpu = run(&cpu_net, &Device::Cpu);
    let gpu = run(&gpu_net, &d);
    compare_steps("localizer", cpu, gpu);
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
    for v in GmpKernel::ALL {
        let op = format!("gmp_sample {}", v.name());
        assert!(rep.rows.iter().any(|r| r.op == op), "{op} missing");
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
