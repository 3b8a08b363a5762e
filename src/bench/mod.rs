//! Benchmarks run by the `dcl bench` command: `kernels` (every op against the device's
//! ceilings), `step` and `peaks` (whole training steps and inference passes, the Rust side of
//! `scripts/torch_cpu_bench.py`). Criterion benches of CPU kernels live in `benches/`.
pub mod kernels;
pub mod step;
