use clap::Parser;

fn main() {
    let cli = dcl::cli::Cli::parse();
    if let Err(e) = dcl::cli::run(cli) {
        // One line naming the problem; the chain of causes joined, no backtrace.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
