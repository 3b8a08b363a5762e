//! Benchmarks run by the `dcl bench` command (criterion benches of CPU kernels live in
//! `benches/`).
pub mod kernels;
