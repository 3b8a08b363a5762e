//! The `dcl` command-line tool: one file per subcommand.
pub mod bench;
pub mod count;
pub mod count_pipeline;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod gpu;
pub mod outputs;
pub mod plot;
pub mod train;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "dcl",
    version,
    about = "Cell counting by Decoupling Counting and Localization (MICCAI 2024): train, evaluate and count",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the counter, the localizer (on a frozen counter), or both.
    Train(train::TrainArgs),
    /// Count cells in image files or folders.
    Count(count::CountArgs),
    /// Evaluate checkpoints on an annotated folder.
    Eval(eval::EvalArgs),
    /// Generate synthetic data, train both networks, evaluate and count: the quick tour.
    Demo(demo::DemoArgs),
    /// Plot a run's training curves as PNG.
    Plot(plot::PlotArgs),
    /// Inspect, render and generate data sets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Benchmarks on a device: `dcl bench kernels`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// PyTorch parity tooling: a random-weight checkpoint with non-trivial BatchNorm statistics.
    #[command(hide = true)]
    InitCheckpoint(export::InitCheckpointArgs),
    /// PyTorch parity tooling: deterministic inputs and our eval-mode outputs as safetensors.
    #[command(hide = true)]
    ExportIo(export::ExportIoArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Count(a) => count::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Data(c) => data::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Bench(c) => bench::run(c),
        Command::InitCheckpoint(a) => export::init_checkpoint(a),
        Command::ExportIo(a) => export::export_io(a),
    }
}

/// Parses `--device`.
pub fn parse_device(s: &str) -> anyhow::Result<crate::device::Device> {
    Ok(crate::device::Device::parse(s)?)
}

/// Quotes a CSV field when it holds a comma, quote or newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
