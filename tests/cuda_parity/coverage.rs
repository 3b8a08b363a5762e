//! Every kernel entry point of the crate is launched by the op parity tests.
use super::*;

#[test]
fn every_entry_point_runs_in_the_op_tests() {
    let Some((guard, _d, dev)) = gpu("coverage") else {
        return;
    };
    // The op tests take the GPU lock themselves.
    drop(guard);
    crate::device::copies_round_trip_and_mixed_devices_are_refused();
    crate::device::sgemm_3x5_times_5x7_and_tf32_switch();
    crate::elementwise::elementwise_relu_and_sum();
    crate::max_pool2d::max_pool_forward_backward();
    crate::conv2d::conv2d_every_version_and_route_matches_the_cpu();
    crate::batch_norm2d::batch_norm_train_eval_running_and_backward();
    crate::upsample_bilinear::upsample_bilinear_both_modes_forward_backward();
    crate::gmp::gmp_every_version_matches_the_cpu();
    crate::gmp::gmp_non_finite_offsets_follow_the_cpu();
    crate::concat::concat_forward_backward();
    crate::loss::count_l1_and_mse_losses();
    crate::loss::window_count_loss_and_gradient();
    crate::optim::adam_steps_match_the_cpu();
    let launched = dev.launched_kernels();
    let missing: Vec<String> = dcl::kernels::all()
        .iter()
        .flat_map(|f| f.kernels.iter())
        .filter(|k| !launched.contains(k))
        .map(|k| format!("{}::{}", k.file, k.name))
        .collect();
    let total: usize = dcl::kernels::all().iter().map(|f| f.kernels.len()).sum();
    eprintln!("{} of {total} entry points launched", total - missing.len());
    assert!(missing.is_empty(), "never launched: {missing:?}");
}
