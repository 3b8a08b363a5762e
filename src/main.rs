use clap::{Parser, Subcommand};

/// dcl: cell counting by decoupling counting and localization (MICCAI 2024).
#[derive(Parser)]
#[command(name = "dcl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Data sets: statistics, density maps, the synthetic set.
    #[command(subcommand)]
    Data(dcl::cli::data::DataCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Data(cmd) => dcl::cli::data::run(cmd),
    }
}
