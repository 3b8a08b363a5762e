use clap::Parser;

fn main() {
    // A closed stdout (`dcl eval ... | head`) ends dcl quietly, as it does other Unix tools,
    // instead of a panic in `print!` (Rust ignores SIGPIPE by default). Outputs are written
    // atomically, so nothing is left half-written.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Freed buffers stay mapped for the next step (device::cpu::heap): before any thread.
    dcl::device::cpu::heap::keep_freed_memory();
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
