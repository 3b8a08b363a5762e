use clap::Parser;

fn main() {
    let cli = dcl::cli::Cli::parse();
    if let Err(e) = dcl::cli::run(cli) {
        // One line naming the problem; the chain of causes joined, no backtrace.
        let interrupted = matches!(
            e.downcast_ref::<dcl::Error>(),
            Some(dcl::Error::Interrupted(_))
        );
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}
