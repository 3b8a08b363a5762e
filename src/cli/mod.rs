//! The `dcl` command line (clap). Each group of subcommands lives in its own module.
pub mod data;
