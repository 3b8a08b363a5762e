//! The device layer: copies, GEMM operand order, TF32, mixed devices.
use super::*;

#[test]
pub(crate) fn copies_round_trip_and_mixed_devices_are_refused() {
    let Some((_g, d, _dev)) = gpu("copies") else {
        return;
    };
    let mut r = Rng(1);
    let x = r.tensor(&[3, 5, 7, 9], 1.0, 0.0);
    let xg = on(&x, &d);
    assert_eq!(xg.device(), d);
    assert_eq!(xg.to_vec(), x.to_vec());
    assert_eq!(xg.clone().to_vec(), x.to_vec(), "clone is a device copy");
    assert_eq!(on(&xg, &Device::Cpu).to_vec(), x.to_vec());
    assert_eq!(xg.clone().into_device(&d).unwrap().to_vec(), x.to_vec());
    let e = xg.as_cpu().unwrap_err().to_string();
    assert!(e.contains(&d.name()) && e.contains("to_vec"), "{e}");
    let z = Tensor::try_full(&[2, 257], 0.0, &d).unwrap();
    assert!(z.to_vec().iter().all(|&v| v == 0.0));
    assert_eq!(Tensor::full(&[3], 2.5, &d).to_vec(), vec![2.5; 3]);
    let e = add_tensors(&x, &xg).unwrap_err().to_string();
    assert!(e.contains("different devices"), "{e}");
    let w = r.tensor(&[2, 5, 3, 3], 1.0, 0.0);
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    assert!(matches!(
        conv2d_forward(&xg, &w, None, args),
        Err(dcl::Error::DeviceMismatch { .. })
    ));
    let (_, idx) = max_pool2d_forward(&x).unwrap();
    let dy = on(&r.tensor(&idx.out_dims(), 1.0, 0.0), &d);
    assert!(matches!(
        max_pool2d_backward(&dy, &idx, x.dims()),
        Err(dcl::Error::DeviceMismatch { .. })
    ));
}

#[test]
pub(crate) fn sgemm_3x5_times_5x7_and_tf32_switch() {
    let Some((_g, _d, dev)) = gpu("sgemm") else {
        return;
    };
    let mut r = Rng(2);
    for (m, k, n, tf32) in [(3, 5, 7, false), (64, 96, 80, false), (64, 96, 80, true)] {
        let a = r.vec(m * k, 1.0, 0.0);
        let b = r.vec(k * n, 1.0, 0.0);
        let want: Vec<f32> = (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|l| a[(ij / n) * k + l] as f64 * b[l * n + ij % n] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let (ad, bd) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
        let mut cd = dev.alloc::<f32>(m * n).unwrap();
        dev.set_tf32(tf32).unwrap();
        assert_eq!(dev.tf32(), tf32);
        sgemm(
            &dev,
            &RowMajorGemm::packed(m, n, k, false, false),
            &ad,
            &bd,
            &mut cd,
        )
        .unwrap();
        let tol = if tf32 { TF32 } else { REDUCTION };
        close_vals(
            &format!("C = A·B ({m}x{k}·{k}x{n}, tf32 {tf32})"),
            &dev.dtoh(&cd).unwrap(),
            &want,
            tol,
        );
    }
    dev.set_tf32(false).unwrap();
}

/// A block reduction traps on a block that is not whole warps (the shim's lanes that do not
/// exist would otherwise enter the sum): the launch fails with the trap, not a wrong sum.
#[test]
pub(crate) fn block_sum_traps_on_a_partial_warp() {
    let Some((_g, _d, dev)) = gpu("block_sum guard") else {
        return;
    };
    if !dev.is_emulated() {
        // On a GPU a trap poisons the context for every later test of this process.
        eprintln!("block_sum guard: only run on the host emulation");
        return;
    }
    let k = dcl::device::cuda::Kernel::new("elementwise.cu", "sum_partial_f32");
    let x = dev.htod(&[1.0f32; 300]).unwrap();
    let mut partial = dev.alloc::<f32>(1).unwrap();
    let n = 300u64;
    let cfg = cudarc::driver::LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (100, 1, 1),
        shared_mem_bytes: 0,
    };
    let e = dev
        .launch(k)
        .buf(&x)
        .out(&mut partial)
        .arg(&n)
        .run(Some(cfg))
        .unwrap_err()
        .to_string();
    assert!(e.contains("__trap") && e.contains("sum_partial_f32"), "{e}");
}
