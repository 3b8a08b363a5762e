//! The `dcl` command-line tool: one file per subcommand.
pub mod bench;
pub mod count;
pub mod count_pipeline;
pub mod count_scale;
pub mod data;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod gpu;
pub mod merge;
pub mod models;
pub mod outputs;
pub mod plot;
pub mod report;
pub mod shard;
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
    /// Join the output folders of `dcl count --shard K/N` into one counts.csv.
    Merge(merge::MergeArgs),
    /// Evaluate checkpoints on an annotated folder.
    Eval(eval::EvalArgs),
    /// The models shipped with dcl (`count --model NAME` uses them): list, show a model card,
    /// or export the checkpoints.
    Models(models::ModelsArgs),
    /// Generate synthetic data, train both networks, evaluate and count: the quick tour.
    Demo(demo::DemoArgs),
    /// Train and score a grid of configurations x data sets x seeds by k-fold
    /// cross-validation (resumable): the paper's claims, measured here.
    Experiment(experiment::ExperimentArgs),
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
        Command::Merge(a) => merge::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Models(a) => models::run(a),
        Command::Data(c) => data::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Bench(c) => bench::run(c),
        Command::InitCheckpoint(a) => export::init_checkpoint(a),
        Command::ExportIo(a) => export::export_io(a),
    }
}

/// Parses `--device`.
pub fn parse_device(s: &str) -> anyhow::Result<crate::device::Device> {
    Ok(crate::device::Device::parse(s)?)
}

/// A CSV field as RFC 4180 writes it: quoted (with quotes doubled) when it holds a comma, a
/// quote, a line feed or a carriage return, as is otherwise.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Parses RFC 4180 CSV (as `csv_field` writes it; LF or CRLF line ends) into records of
/// fields. `complete` is false when the text stops inside a record (no final line end), which
/// is then left out. The error names the line.
pub fn parse_csv(text: &str) -> Result<(Vec<Vec<String>>, bool), String> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut line, mut quoted, mut was_quoted) = (1usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                was_quoted = false;
                line += 1;
            }
            c if was_quoted || c == '"' || c == '\r' => {
                return Err(format!(
                    "line {line}: malformed field (stray quote or character after a quoted field)"
                ));
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {line}: unterminated quoted field"));
    }
    let complete = field.is_empty() && record.is_empty() && !was_quoted;
    Ok((records, complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_round_trip_rfc4180() {
        let names = [
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "cr\rhere",
            "",
            "é ü",
        ];
        let line: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
        assert_eq!(csv_field("cr\rhere"), "\"cr\rhere\"");
        let text = format!("{}\n{}\r\n", line.join(","), line.join(","));
        let (recs, complete) = parse_csv(&text).unwrap();
        assert!(complete);
        assert_eq!(recs.len(), 2);
        for r in recs {
            assert_eq!(r, names);
        }
        let (recs, complete) = parse_csv("a,b\nc,d").unwrap();
        assert_eq!((recs.len(), complete), (1, false));
        assert!(parse_csv("\"open\n").is_err());
        assert!(parse_csv("\"x\"y,1\n").is_err());
    }
}
